"""Training objectives. Every function takes batches [B, 32, 32, 3] and returns a scalar or [B].

Why permutation-invariant (PIT): the input m = (x1 + x2) / 2 is symmetric in x1 and x2, so
nothing tells the network which image belongs in which slot. Under a fixed order the MSE-optimal
output of both slots is E[x1 | m] = E[x2 | m] = m: fixed-order training collapses towards
returning the mixture twice. PIT scores the better of the two assignments, so each slot only
needs to hold one of the images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSSES = ("pit", "fixed")


def mse_per_example(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over H, W, C: [B, H, W, C] x2 -> [B]."""
  return jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))


def assignment_errors(x1_hat, x2_hat, x1, x2) -> tuple[jax.Array, jax.Array]:
  """Summed per-image MSE of the straight and the swapped assignment, each [B]."""
  straight = mse_per_example(x1_hat, x1) + mse_per_example(x2_hat, x2)
  swapped = mse_per_example(x1_hat, x2) + mse_per_example(x2_hat, x1)
  return straight, swapped


def reconstruction_loss(name: str, x1_hat, x2_hat, x1, x2) -> jax.Array:
  """Per-example summed MSE of both outputs, [B]: 'pit' takes the better assignment, 'fixed'
  the given order."""
  straight, swapped = assignment_errors(x1_hat, x2_hat, x1, x2)
  if name == "pit":
    return jnp.minimum(straight, swapped)
  if name == "fixed":
    return straight
  raise ValueError(f"config.loss={name!r} is not a known loss; choose one of {', '.join(LOSSES)}.")


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form, summed over the latent: [B, Z] -> [B]."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=-1)


def kl_weight(beta: float, warmup_steps: int, step: jax.Array) -> jax.Array:
  """beta, ramped linearly from 0 over `warmup_steps` (no ramp when warmup_steps <= 0)."""
  if warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def total_loss(config, outputs, x1, x2, step) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Objective of one batch and its parts.

  `outputs = (x1_hat, x2_hat, aux)`. When `aux` holds a posterior ('mu', 'logvar' [B, Z]) the
  weighted KL term is added; the loss reads `aux` so no step branches on the model's name.
  Returns (scalar loss, {'loss', 'recon', and 'kl', 'kl_weight' for a posterior}).
  """
  x1_hat, x2_hat, aux = outputs
  recon = jnp.mean(reconstruction_loss(config.loss, x1_hat, x2_hat, x1, x2))
  parts = {"recon": recon}
  loss = recon
  if "mu" in aux:
    kl = jnp.mean(gaussian_kl(aux["mu"], aux["logvar"]))
    weight = kl_weight(config.model.beta, config.model.kl_warmup_steps, step)
    loss = recon + weight * kl
    parts.update(kl=kl, kl_weight=weight)
  parts["loss"] = loss
  return loss, parts
