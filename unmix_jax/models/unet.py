"""U-Net: a convolutional encoder-decoder with skip connections between equal resolutions.

`features = (f0, ..., fL)`: level i runs two 3x3 convs with f_i channels; each level after the
first halves the resolution (2x2 max-pool), so L must satisfy 32 / 2**L >= 1. The decoder mirrors
it with 2x2 stride-2 transposed convs, concatenates the encoder's output of the same resolution
and runs two 3x3 convs. A 1x1 conv makes the head (see `outputs.to_pair`).

`block="double_conv"` is that reference U-Net (`UNet`); `block="residual"` builds the same
levels from residual blocks with group norm (res_unet.py).
"""

from __future__ import annotations

import jax
from flax import nnx

from unmix_jax.models import outputs, res_unet


class DoubleConv(nnx.Module):
  """Two 3x3 conv + ReLU layers: [B, H, W, c_in] -> [B, H, W, c_out]."""

  def __init__(self, c_in: int, c_out: int, *, layers, rngs: nnx.Rngs):
    self.conv1 = layers.conv(c_in, c_out, (3, 3), rngs=rngs)
    self.conv2 = layers.conv(c_out, c_out, (3, 3), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.conv2(nnx.relu(self.conv1(x))))


class Up(nnx.Module):
  """2x up-sampling, skip concatenation, two 3x3 conv + ReLU layers: [B, H, W, c_in] and the skip
  [B, 2H, 2W, c_out] -> [B, 2H, 2W, c_out]."""

  def __init__(self, c_in: int, c_out: int, *, layers, rngs: nnx.Rngs):
    self.up = layers.conv_transpose(c_in, c_out, (2, 2), strides=(2, 2), rngs=rngs)
    self.conv = DoubleConv(2 * c_out, c_out, layers=layers, rngs=rngs)
    self.up_concat_conv = layers.up_concat_conv

  def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
    # conv1(concat([up(x), skip])), which a backend may compute as one layer.
    y = nnx.relu(self.up_concat_conv(self.up, self.conv.conv1, x, skip))
    return nnx.relu(self.conv.conv2(y))


BLOCKS = ("double_conv", "residual")
NORMS = ("group", "batch")


def validate(model_cfg) -> None:
  outputs.check_common(model_cfg)
  if model_cfg.block not in BLOCKS:
    raise ValueError(f"config.model.block={model_cfg.block!r} must be one of {', '.join(BLOCKS)}.")
  if model_cfg.norm not in NORMS:
    raise ValueError(f"config.model.norm={model_cfg.norm!r} must be one of {', '.join(NORMS)}.")
  for field in ("blocks_per_level", "norm_groups"):
    if int(model_cfg[field]) < 1:
      raise ValueError(f"config.model.{field}={model_cfg[field]} must be >= 1.")
  if not 0 <= int(model_cfg.attention_levels) <= len(model_cfg.features):
    raise ValueError(f"config.model.attention_levels={model_cfg.attention_levels} must be "
                     f"between 0 and the {len(model_cfg.features)} levels of config.model.features.")
  features = tuple(model_cfg.features)
  if len(features) < 2 or any(int(f) < 1 for f in features):
    raise ValueError(
        f"config.model.features={features} needs at least two positive widths (one level and a "
        "bottleneck).")
  if 2 ** (len(features) - 1) > 32:
    raise ValueError(
        f"config.model.features={features} has {len(features) - 1} down-samplings; 32x32 images "
        "allow at most 5.")


def Model(model_cfg, *, layers, rngs: nnx.Rngs) -> nnx.Module:
  """The U-Net of `model_cfg.block`."""
  cls = res_unet.Model if model_cfg.block == "residual" else UNet
  return cls(model_cfg, layers=layers, rngs=rngs)


class UNet(nnx.Module):
  """m [B, 32, 32, 3] in [0, 1] -> (x1_hat, x2_hat) [B, 32, 32, 3], aux = {}."""

  def __init__(self, model_cfg, *, layers, rngs: nnx.Rngs):
    features = [int(f) for f in model_cfg.features]
    self.mixture_consistent = bool(model_cfg.mixture_consistent)
    self.bounded = bool(model_cfg.bounded)
    ins = [3] + features[:-1]
    self.down = nnx.List([DoubleConv(i, o, layers=layers, rngs=rngs)
                          for i, o in zip(ins, features)])
    self.up = nnx.List([Up(i, o, layers=layers, rngs=rngs)
                        for i, o in zip(features[:0:-1], features[-2::-1])])
    self.head = layers.conv(features[0], outputs.out_channels(self.mixture_consistent), (1, 1),
                            rngs=rngs)
    self.max_pool = layers.max_pool

  def __call__(self, m: jax.Array, *, train: bool = False, key: jax.Array | None = None):
    del train, key  # Deterministic, no normalisation statistics.
    x, skips = m, []
    for i, block in enumerate(self.down):
      if i:
        x = self.max_pool(x)
      x = block(x)
      skips.append(x)
    for block, skip in zip(self.up, reversed(skips[:-1])):
      x = block(x, skip)
    x1_hat, x2_hat = outputs.to_pair(self.head(x), m, self.mixture_consistent,
                                    self.bounded)
    return x1_hat, x2_hat, {}
