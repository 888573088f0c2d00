"""Residual U-Net: the U-Net's levels and skips built from pre-activation residual blocks, and
optional self-attention at the lowest resolutions (config.model.block="residual"; see unet.py
for the reference U-Net and the shared fields). `norm` picks each block's normalisation and
activation: "group" (group norm, SiLU) or "batch" (BatchNorm, ReLU).

  stem     3x3 conv, 3 -> f0 channels                                      [B, 32, 32, f0]
  level i  `blocks_per_level` ResBlocks at f_i channels (+ attention), then a 2x2 max-pool,
           down to [B, 32 / 2**L, 32 / 2**L, fL] at the bottleneck
  up i     2x2 stride-2 transposed conv, concatenation with level i's output, ResBlocks
  head     group norm, SiLU, 1x1 conv to the output channels (see `outputs.to_pair`)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unmix_jax.models import outputs


def groups(channels: int, wanted: int) -> int:
  """The largest group count <= `wanted` that divides `channels`."""
  return next(g for g in range(min(wanted, channels), 0, -1) if channels % g == 0)


class GroupNormSiLU(nnx.Module):
  """silu(group_norm(x)): [B, H, W, C] -> [B, H, W, C]."""

  def __init__(self, c: int, *, norm_groups: int, layers, rngs: nnx.Rngs):
    self.norm = layers.group_norm(c, num_groups=groups(c, norm_groups), rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # no statistics
    return nnx.silu(self.norm(x))


def norm_act(kind: str, c: int, *, norm_groups: int, layers, rngs: nnx.Rngs) -> nnx.Module:
  """The normalisation and activation of `kind`, called as f(x, train=...)."""
  if kind == "batch":
    return layers.batch_norm_relu(c, momentum=0.9, rngs=rngs)
  return GroupNormSiLU(c, norm_groups=norm_groups, layers=layers, rngs=rngs)


class ResBlock(nnx.Module):
  """x + conv(act(norm(conv(act(norm(x)))))), 3x3 convs; a 1x1 conv on the skip path when the
  width changes: [B, H, W, c_in] -> [B, H, W, c_out]."""

  def __init__(self, c_in: int, c_out: int, *, norm: str, norm_groups: int, layers,
               rngs: nnx.Rngs):
    kw = dict(norm_groups=norm_groups, layers=layers, rngs=rngs)
    self.norm1 = norm_act(norm, c_in, **kw)
    self.conv1 = layers.conv(c_in, c_out, (3, 3), rngs=rngs)
    self.norm2 = norm_act(norm, c_out, **kw)
    self.conv2 = layers.conv(c_out, c_out, (3, 3), rngs=rngs)
    self.skip = layers.conv(c_in, c_out, (1, 1), rngs=rngs) if c_in != c_out else None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = self.conv1(self.norm1(x, train=train))
    h = self.conv2(self.norm2(h, train=train))
    return h + (x if self.skip is None else self.skip(x))


class SelfAttention(nnx.Module):
  """One-head self-attention over the H * W positions, added to the input: global context where
  the map is small. [B, H, W, C] -> [B, H, W, C]."""

  def __init__(self, c: int, *, norm_groups: int, layers, rngs: nnx.Rngs):
    self.norm = layers.group_norm(c, num_groups=groups(c, norm_groups), rngs=rngs)
    self.qkv = layers.linear(c, 3 * c, rngs=rngs)
    self.out = layers.linear(c, c, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, h * w, 3 * c), 3, axis=-1)
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(c), axis=-1)
    return x + self.out(jnp.einsum("bqk,bkc->bqc", weights, v)).reshape(b, h, w, c)


class Level(nnx.Module):
  """`depth` ResBlocks from c_in to c_out channels, then self-attention if `attention`."""

  def __init__(self, c_in: int, c_out: int, *, depth: int, attention: bool, norm: str,
               norm_groups: int, layers, rngs: nnx.Rngs):
    kw = dict(norm_groups=norm_groups, layers=layers, rngs=rngs)
    self.blocks = nnx.List([ResBlock(c_in if i == 0 else c_out, c_out, norm=norm, **kw)
                            for i in range(depth)])
    self.attention = SelfAttention(c_out, **kw) if attention else None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for block in self.blocks:
      x = block(x, train)
    return x if self.attention is None else self.attention(x)


class Model(nnx.Module):
  """m [B, 32, 32, 3] in [0, 1] -> (x1_hat, x2_hat) [B, 32, 32, 3], aux = {}."""

  def __init__(self, model_cfg, *, layers, rngs: nnx.Rngs):
    f = [int(w) for w in model_cfg.features]
    self.mixture_consistent = bool(model_cfg.mixture_consistent)
    self.bounded = bool(model_cfg.bounded)
    n = len(f)
    # Attention at the `attention_levels` lowest resolutions, the bottleneck first.
    attend = [i >= n - int(model_cfg.attention_levels) for i in range(n)]
    kw = dict(depth=int(model_cfg.blocks_per_level), norm=model_cfg.norm,
              norm_groups=int(model_cfg.norm_groups), layers=layers, rngs=rngs)
    self.stem = layers.conv(3, f[0], (3, 3), rngs=rngs)
    self.down = nnx.List([Level(f[max(i - 1, 0)], f[i], attention=attend[i], **kw)
                          for i in range(n)])
    self.up_samples = nnx.List([
        layers.conv_transpose(f[i], f[i - 1], (2, 2), strides=(2, 2), rngs=rngs)
        for i in range(n - 1, 0, -1)])
    self.up = nnx.List([Level(2 * f[i - 1], f[i - 1], attention=attend[i - 1], **kw)
                        for i in range(n - 1, 0, -1)])
    self.head_norm = norm_act(model_cfg.norm, f[0], norm_groups=kw["norm_groups"],
                              layers=layers, rngs=rngs)
    self.head = layers.conv(f[0], outputs.out_channels(self.mixture_consistent), (1, 1),
                            rngs=rngs)
    # Zero at first: training starts from the mixture baseline (or zeros) instead of noise.
    self.head.kernel[...] = jnp.zeros_like(self.head.kernel[...])
    self.max_pool = layers.max_pool

  def __call__(self, m: jax.Array, *, train: bool = False, key: jax.Array | None = None):
    del key  # Deterministic.
    x, skips = self.stem(m), []
    for i, level in enumerate(self.down):
      if i:
        x = self.max_pool(x)
      x = level(x, train)
      skips.append(x)
    for up, level, skip in zip(self.up_samples, self.up, reversed(skips[:-1])):
      x = level(jnp.concatenate([up(x), skip], axis=-1), train)
    y = self.head(self.head_norm(x, train=train))
    x1_hat, x2_hat = outputs.to_pair(y, m, self.mixture_consistent, self.bounded)
    return x1_hat, x2_hat, {}
