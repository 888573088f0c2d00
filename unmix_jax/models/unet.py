"""U-Net: a convolutional encoder-decoder with skip connections between equal resolutions.

`features = (f0, ..., fL)`: level i runs two 3x3 convs with f_i channels; each level after the
first halves the resolution (2x2 max-pool), so L must satisfy 32 / 2**L >= 1. The decoder mirrors
it with 2x2 stride-2 transposed convs, concatenates the encoder's output of the same resolution
and runs two 3x3 convs. A 1x1 conv makes the head (see `outputs.to_pair`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unmix_jax.models import layers, outputs, up_conv


def _windows(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H/2, W/2, C]. The gradient goes to the maxima of each window in one
  pass (autodiff of `max` counts the ties and divides: three passes, ~1% of the U-Net's CPU
  step). A tie gives every tied input the full gradient; in the U-Net the only ties are ReLU
  zeros, whose gradient the ReLU then zeroes, so the model's gradients are unchanged."""
  return _windows(x).max(axis=(2, 4))


def _pool_fwd(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _pool_bwd(residuals, dy):
  x, y = residuals
  up = lambda a: a[:, :, None, :, None, :]
  return (jnp.where(_windows(x) == up(y), up(dy), 0.0).reshape(x.shape),)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)


class DoubleConv(nnx.Module):
  """Two 3x3 conv + ReLU layers: [B, H, W, c_in] -> [B, H, W, c_out]."""

  def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs, dtype=None, impl: str = "auto"):
    self.conv1 = layers.Conv(c_in, c_out, (3, 3), dtype=dtype, impl=impl, rngs=rngs)
    self.conv2 = layers.Conv(c_out, c_out, (3, 3), dtype=dtype, impl=impl, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.after_conv1(self.conv1(x))

  def after_conv1(self, y: jax.Array) -> jax.Array:
    """The rest of the block from conv1's output (before its ReLU), for `Up`'s composed form."""
    return nnx.relu(self.conv2(nnx.relu(y)))


class Up(nnx.Module):
  """2x up-sampling, skip concatenation, DoubleConv: [B, H, W, c_in] -> [B, 2H, 2W, c_out].
  With conv_impl='onednn', at H >= 8 the up-sampling and the first conv run composed
  (`up_conv.py`): the same function of the same parameters, with less work."""

  def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs, dtype=None, impl: str = "auto"):
    self.up = layers.ConvTranspose(c_in, c_out, (2, 2), strides=(2, 2), dtype=dtype, impl=impl,
                                   rngs=rngs)
    self.conv = DoubleConv(2 * c_out, c_out, rngs=rngs, dtype=dtype, impl=impl)

  def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
    conv1 = self.conv.conv1
    x, up_kernel, up_bias = layers.operands(self.up, x)
    if (self.up.impl == conv1.impl == "onednn"
        and up_conv.used(x.shape, up_kernel.shape, layers.layer_strides(self.up), x.dtype)):
      skip, conv_kernel, conv_bias = layers.operands(conv1, skip)
      up_bias = jnp.broadcast_to(up_bias, up_kernel.shape[-1:])
      y = up_conv.up_concat_conv(x, skip, up_kernel, up_bias, conv_kernel, conv_bias)
      return self.conv.after_conv1(y)
    return self.conv(outputs.concat_skip(self.up(x), skip))


def validate(model_cfg) -> None:
  outputs.check_common(model_cfg)
  features = tuple(model_cfg.features)
  if len(features) < 2 or any(int(f) < 1 for f in features):
    raise ValueError(
        f"config.model.features={features} needs at least two positive widths (one level and a "
        "bottleneck).")
  if 2 ** (len(features) - 1) > 32:
    raise ValueError(
        f"config.model.features={features} has {len(features) - 1} down-samplings; 32x32 images "
        "allow at most 5.")


class Model(nnx.Module):
  """m [B, 32, 32, 3] in [0, 1] -> (x1_hat, x2_hat) [B, 32, 32, 3], aux = {}."""

  def __init__(self, model_cfg, *, rngs: nnx.Rngs, dtype=None, impl: str = "auto"):
    features = [int(f) for f in model_cfg.features]
    self.mixture_consistent = bool(model_cfg.mixture_consistent)
    ins = [3] + features[:-1]
    self.down = nnx.List([DoubleConv(i, o, rngs=rngs, dtype=dtype, impl=impl)
                          for i, o in zip(ins, features)])
    self.up = nnx.List([Up(i, o, rngs=rngs, dtype=dtype, impl=impl)
                        for i, o in zip(features[:0:-1], features[-2::-1])])
    self.head = layers.Conv(features[0], outputs.out_channels(self.mixture_consistent), (1, 1),
                            dtype=dtype, impl=impl, rngs=rngs)

  def __call__(self, m: jax.Array, *, train: bool = False, key: jax.Array | None = None):
    del train, key  # Deterministic, no normalisation statistics.
    x, skips = m, []
    for i, block in enumerate(self.down):
      if i:
        x = max_pool_2x2(x)
      x = block(x)
      skips.append(x)
    for block, skip in zip(self.up, reversed(skips[:-1])):
      x = block(x, skip)
    x1_hat, x2_hat = outputs.to_pair(self.head(x), m, self.mixture_consistent)
    return x1_hat, x2_hat, {}
