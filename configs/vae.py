"""VAE with one encoder and two decoders. Default ~166k parameters (reference: 161,190).

`beta` weighs the KL term against the reconstruction loss, which is a per-pixel mean (summed
over the two images). A Gaussian decoder with pixel noise sigma corresponds to
beta = 2 * sigma**2 / 3072; the default 1e-4 is sigma ~= 0.39.
"""

from unmix_jax.configs import common


def get_config(preset=None):
  c = common.get_base_config(preset)
  c.model.name = "vae"
  c.model.mixture_consistent = False  # decoders must make whole images, so samples are images
  c.model.encoder_widths = (32, 32, 32)  # channels of each stride-2 conv
  c.model.decoder_widths = (32, 32, 16)  # channels of each stride-2 transposed conv
  c.model.latent_dim = 48  # size of z
  c.model.beta = 1e-4  # weight of the KL term (module docstring)
  c.model.kl_warmup_steps = 2000  # beta ramps up from 0 over these steps
  if c.preset == "cpu":
    c.train.epochs = 5
    c.model.kl_warmup_steps = 1000
  elif c.preset in common.RECIPES:
    c.train.epochs = {"cpu10": 30, "cpu60": 180, "gpu": 60}[c.preset]
  elif c.preset == "smoke":
    c.model.encoder_widths = (4, 8)
    c.model.decoder_widths = (8, 4)
    c.model.latent_dim = 4
    c.model.kl_warmup_steps = 4
  return c
