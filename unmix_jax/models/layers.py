"""The layers a model is built from: the one seam between an architecture and a backend.

A model file says which layers it has (`layers.conv(c_in, c_out, (3, 3), rngs=rngs)`), never how
they are computed, as the Flax ImageNet ResNet takes its `conv`. `xla(dtype)` gives Flax's own
layers (right on GPU/TPU); the CPU backend (`unmix_jax.cpu.layers`) gives layers with the same
parameters computed another way, so a checkpoint moves between them. `unmix_jax.backend.layers`
picks one from `config.train.conv_impl`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


class BatchNormReLU(nnx.BatchNorm):
  """relu(BatchNorm(x)) over the last axis: batch statistics in training (updating the running
  averages), the running averages otherwise. [..., C] -> [..., C], >= 0."""

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return nnx.relu(super().__call__(x, use_running_average=not train))


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H/2, W/2, C], the maximum of each 2x2 window."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def up_concat_conv(up: nnx.Module, conv: nnx.Module, x: jax.Array, skip: jax.Array) -> jax.Array:
  """`conv` of the up-sampled input beside the skip: conv(concat([up(x), skip], channels))."""
  return conv(jnp.concatenate([up(x), skip], axis=-1))


@dataclasses.dataclass(frozen=True)
class Layers:
  """Factories with the signatures of Flax's `nnx.Conv`, `nnx.ConvTranspose`, `BatchNormReLU`,
  `nnx.GroupNorm` and `nnx.Linear`, each building a module with that layer's parameters; and two
  functions without parameters: `max_pool` (2x2) and `up_concat_conv`, how a U-Net decoder's
  first conv reads its up-sampled input and skip (a backend may compute the two layers as one)."""

  conv: Callable[..., nnx.Module]
  conv_transpose: Callable[..., nnx.Module]
  batch_norm_relu: Callable[..., nnx.Module]
  group_norm: Callable[..., nnx.Module]
  linear: Callable[..., nnx.Module]
  max_pool: Callable[[jax.Array], jax.Array] = max_pool_2x2
  up_concat_conv: Callable[..., jax.Array] = up_concat_conv


def xla(dtype=None) -> Layers:
  """Flax's layers computing in `dtype` (None: float32); parameters are float32 either way."""
  return Layers(
      conv=functools.partial(nnx.Conv, dtype=dtype),
      conv_transpose=functools.partial(nnx.ConvTranspose, dtype=dtype),
      batch_norm_relu=functools.partial(BatchNormReLU, dtype=dtype),
      group_norm=functools.partial(nnx.GroupNorm, dtype=dtype),
      linear=functools.partial(nnx.Linear, dtype=dtype),
  )
