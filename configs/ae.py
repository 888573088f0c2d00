"""Autoencoder with two decoders. Default ~165k parameters (the reference study's had 161,190)."""

from unmix_jax.configs import common


def get_config(preset=None):
  c = common.get_base_config(preset)
  c.model.name = "ae"
  c.model.encoder_widths = (32, 64, 64)  # channels of each stride-2 conv
  c.model.decoder_widths = (56, 32, 16)  # channels of each stride-2 transposed conv
  # Its short step gains from fewer dispatches (docs/performance.md): steps per call, a divisor
  # of an epoch's steps and of log_every (703 steps an epoch in the reference study: one).
  c.train.steps_per_call = {"default": 1, "cpu": 5, "cpu10": 25, "cpu60": 25, "gpu": 10,
                            "smoke": 2}[c.preset]
  if c.preset == "cpu":
    c.train.epochs = 4
  elif c.preset in common.RECIPES:
    c.train.epochs = {"cpu10": 25, "cpu60": 150, "gpu": 60}[c.preset]
  elif c.preset == "smoke":
    c.model.encoder_widths = (4, 8)
    c.model.decoder_widths = (8, 4)
  return c
