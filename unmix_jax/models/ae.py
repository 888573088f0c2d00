"""Autoencoder with one encoder and two decoders, one per output image.

m [B, 32, 32, 3] -> Encoder -> bottleneck [B, 32/2**L, 32/2**L, encoder_widths[-1]] -> two
Decoders -> (x1_hat, x2_hat). BatchNorm after every conv, as in the reference study.
"""

from __future__ import annotations

import jax
from flax import nnx

from unmix_jax.models import conv_stacks, outputs


def validate(model_cfg) -> None:
  outputs.check_common(model_cfg)
  conv_stacks.check_widths(model_cfg, "encoder_widths", "decoder_widths")


class Model(nnx.Module):
  """m [B, 32, 32, 3] in [0, 1] -> (x1_hat, x2_hat) [B, 32, 32, 3], aux = {}."""

  def __init__(self, model_cfg, *, layers, rngs: nnx.Rngs):
    enc, dec = [int(w) for w in model_cfg.encoder_widths], [int(w) for w in model_cfg.decoder_widths]
    self.mixture_consistent = bool(model_cfg.mixture_consistent)
    self.bounded = bool(model_cfg.bounded)
    kw = dict(batch_norm=True, layers=layers, rngs=rngs)
    self.encoder = conv_stacks.Encoder(enc, **kw)
    self.decoder1 = conv_stacks.Decoder(enc[-1], dec, 3, **kw)
    self.decoder2 = conv_stacks.Decoder(enc[-1], dec, 3, **kw)

  def __call__(self, m: jax.Array, *, train: bool = False, key: jax.Array | None = None):
    del key  # Deterministic.
    h = self.encoder(m, train)
    x1_hat, x2_hat = outputs.from_two(self.decoder1(h, train), self.decoder2(h, train), m,
                                      self.mixture_consistent,
                                      self.bounded)
    return x1_hat, x2_hat, {}
