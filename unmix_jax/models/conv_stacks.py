"""Strided conv encoder and transposed-conv decoder shared by the autoencoder and the VAE.

Each stage halves (encoder) or doubles (decoder) the resolution with a 3x3 stride-2 conv,
optionally followed by BatchNorm, then ReLU.
"""

from __future__ import annotations

import jax
from flax import nnx


class Stage(nnx.Module):
  """3x3 stride-2 conv (transposed when `up`), optional BatchNorm, ReLU:
  [B, H, W, c_in] -> [B, H / 2, W / 2, c_out], or [B, 2H, 2W, c_out] when `up`."""

  def __init__(self, c_in: int, c_out: int, *, up: bool, batch_norm: bool, layers,
               rngs: nnx.Rngs):
    conv = layers.conv_transpose if up else layers.conv
    self.conv = conv(c_in, c_out, (3, 3), strides=(2, 2), rngs=rngs)
    self.norm = layers.batch_norm_relu(c_out, momentum=0.9, rngs=rngs) if batch_norm else None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.conv(x)
    return nnx.relu(x) if self.norm is None else self.norm(x, train=train)


class Encoder(nnx.Module):
  """[B, 32, 32, 3] -> [B, 32 / 2**L, 32 / 2**L, widths[-1]] with L = len(widths)."""

  def __init__(self, widths, *, batch_norm: bool, layers, rngs: nnx.Rngs):
    ins = [3] + list(widths[:-1])
    self.stages = nnx.List([Stage(i, o, up=False, batch_norm=batch_norm, layers=layers, rngs=rngs)
                            for i, o in zip(ins, widths)])

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for stage in self.stages:
      x = stage(x, train)
    return x


class Decoder(nnx.Module):
  """[B, s, s, c_in] -> [B, s * 2**L, s * 2**L, out_channels] with L = len(widths); the last
  layer is a linear 3x3 conv so outputs are not squashed (evaluation clips to [0, 1])."""

  def __init__(self, c_in: int, widths, out_channels: int, *, batch_norm: bool, layers,
               rngs: nnx.Rngs):
    ins = [c_in] + list(widths[:-1])
    self.stages = nnx.List([Stage(i, o, up=True, batch_norm=batch_norm, layers=layers, rngs=rngs)
                            for i, o in zip(ins, widths)])
    self.out = layers.conv(widths[-1], out_channels, (3, 3), rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for stage in self.stages:
      x = stage(x, train)
    return self.out(x)


def check_widths(model_cfg, *fields: str) -> None:
  """Every width positive; the encoder and decoder change the resolution by the same factor."""
  for field in fields:
    widths = tuple(model_cfg[field])
    if not widths or any(int(w) < 1 for w in widths):
      raise ValueError(f"config.model.{field}={widths} needs one or more positive widths.")
  if len(model_cfg.encoder_widths) > 5:
    raise ValueError(f"config.model.encoder_widths={tuple(model_cfg.encoder_widths)} has more "
                     "than 5 stride-2 stages; 32x32 images allow at most 5.")
  if len(model_cfg.encoder_widths) != len(model_cfg.decoder_widths):
    raise ValueError(
        f"config.model.decoder_widths={tuple(model_cfg.decoder_widths)} must have as many stages "
        f"as config.model.encoder_widths={tuple(model_cfg.encoder_widths)}, so outputs are 32x32.")
