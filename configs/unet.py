"""U-Net. Default ~10.9M parameters (the reference study's had 10,809,638)."""

from unmix_jax.configs import common


def get_config(preset=None):
  c = common.get_base_config(preset)
  c.model.name = "unet"
  c.model.features = (38, 76, 152, 304, 608)
  if c.preset == "cpu":
    c.model.features = (16, 32, 64, 128)
    c.train.epochs = 5
  elif c.preset == "smoke":
    c.model.features = (4, 8)
  return c
