"""U-Net. Default ~10.9M parameters (the reference study's had 10,809,638)."""

from unmix_jax.configs import common


def get_config(preset=None):
  c = common.get_base_config(preset)
  c.model.name = "unet"
  c.model.features = (38, 76, 152, 304, 608)  # channels per resolution, 32x32 down
  c.model.block = "double_conv"  # the reference; "residual": group norm + SiLU residual blocks
  c.model.blocks_per_level = 1  # residual blocks per level ("residual" only)
  c.model.norm = "group"  # "group" (group norm, SiLU) or "batch" (BatchNorm, ReLU); "residual"
  c.model.norm_groups = 8  # group norm groups ("residual" only)
  c.model.attention_levels = 0  # self-attention at this many lowest resolutions ("residual")
  if c.preset == "cpu":
    c.model.features = (16, 32, 64, 128)
    c.train.epochs = 5
  elif c.preset in common.RECIPES:
    c.model.block = "residual"
    c.model.norm = "batch"  # better than group norm per step here, and faster on a CPU
    c.model.features = (16, 32, 64, 128)
    c.model.attention_levels = 1
    c.train.epochs = {"cpu10": 9, "cpu60": 60, "gpu": 60}[c.preset]
    if c.preset == "gpu":
      c.model.features = (64, 128, 256, 512)
      c.model.blocks_per_level = 2
      c.model.attention_levels = 2
  elif c.preset == "smoke":
    c.model.features = (4, 8)
  return c
