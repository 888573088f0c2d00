"""Variational autoencoder with one encoder and two decoders.

q(z | m) = N(mu, diag(exp(logvar))) over a `latent_dim` vector; z feeds two decoders, one per
output image. Training samples z = mu + exp(logvar / 2) * eps (reparameterisation, eps from the
key the train step threads in); evaluation uses z = mu. The loss adds beta * KL(q || N(0, I))
(see losses.total_loss), read from aux = {"mu", "logvar"} [B, latent_dim].

Mixture-consistent outputs are off by default here: the decoders then have to produce the
images themselves, which is what makes `decode(z)` with z ~ N(0, I) generate image pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unmix_jax.models import conv_stacks, outputs


def validate(model_cfg) -> None:
  outputs.check_common(model_cfg)
  conv_stacks.check_widths(model_cfg, "encoder_widths", "decoder_widths")
  if int(model_cfg.latent_dim) < 1:
    raise ValueError(f"config.model.latent_dim={model_cfg.latent_dim} must be >= 1.")
  if not model_cfg.beta >= 0:
    raise ValueError(f"config.model.beta={model_cfg.beta} must be >= 0 (the KL weight).")
  if model_cfg.kl_warmup_steps < 0:
    raise ValueError(f"config.model.kl_warmup_steps={model_cfg.kl_warmup_steps} must be >= 0.")


class LatentDecoder(nnx.Module):
  """z [B, latent_dim] -> image [B, 32, 32, 3] through a dense layer to the bottleneck grid."""

  def __init__(self, latent_dim: int, grid: int, c_in: int, widths, *, layers,
               rngs: nnx.Rngs):
    self.grid, self.c_in = grid, c_in
    self.dense = layers.linear(latent_dim, grid * grid * c_in, rngs=rngs)
    self.conv = conv_stacks.Decoder(c_in, widths, 3, batch_norm=False, layers=layers, rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    h = nnx.relu(self.dense(z)).reshape(z.shape[0], self.grid, self.grid, self.c_in)
    return self.conv(h, train=False)


class Model(nnx.Module):
  """m [B, 32, 32, 3] in [0, 1] -> (x1_hat, x2_hat) [B, 32, 32, 3], aux {"mu", "logvar"}."""

  def __init__(self, model_cfg, *, layers, rngs: nnx.Rngs):
    enc, dec = [int(w) for w in model_cfg.encoder_widths], [int(w) for w in model_cfg.decoder_widths]
    self.latent_dim = int(model_cfg.latent_dim)
    self.mixture_consistent = bool(model_cfg.mixture_consistent)
    self.bounded = bool(model_cfg.bounded)
    grid = 32 // 2 ** len(enc)
    self.encoder = conv_stacks.Encoder(enc, batch_norm=False, layers=layers, rngs=rngs)
    self.posterior = layers.linear(grid * grid * enc[-1], 2 * self.latent_dim, rngs=rngs)
    self.decoder1 = LatentDecoder(self.latent_dim, grid, enc[-1], dec, layers=layers, rngs=rngs)
    self.decoder2 = LatentDecoder(self.latent_dim, grid, enc[-1], dec, layers=layers, rngs=rngs)

  def encode(self, m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """m [B, 32, 32, 3] -> (mu, logvar), each [B, latent_dim]."""
    h = self.encoder(m, train=False).reshape(m.shape[0], -1)
    # The posterior and its KL stay float32 under a bfloat16 compute dtype.
    mu, logvar = jnp.split(self.posterior(h).astype(jnp.float32), 2, axis=-1)
    return mu, logvar

  def decode(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z [B, latent_dim] -> both decoders' raw images [B, 32, 32, 3]."""
    return self.decoder1(z), self.decoder2(z)

  def __call__(self, m: jax.Array, *, train: bool = False, key: jax.Array | None = None):
    mu, logvar = self.encode(m)
    if train:
      if key is None:
        raise ValueError("the VAE needs a PRNG key in training to sample its latent.")
      z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
    else:
      z = mu
    y1, y2 = self.decode(z)
    x1_hat, x2_hat = outputs.from_two(y1, y2, m, self.mixture_consistent,
                                      self.bounded)
    return x1_hat, x2_hat, {"mu": mu, "logvar": logvar}
