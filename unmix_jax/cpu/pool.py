"""2x2 max-pool whose gradient is one pass: the CPU layers' `max_pool`.

Autodiff of `max` counts each window's maxima and divides the gradient among them (three passes
on XLA:CPU); this gradient goes in one pass to every input equal to its window's maximum. The
two differ only at ties, where every tied input here receives the whole gradient: ReLU zeros
(whose gradient the ReLU then zeroes) and flat image regions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _windows(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H/2, W/2, C], the maximum of each 2x2 window."""
  return _windows(x).max(axis=(2, 4))


def _pool_fwd(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _pool_bwd(residuals, dy):
  x, y = residuals
  up = lambda a: a[:, :, None, :, None, :]
  return (jnp.where(_windows(x) == up(y), up(dy), 0.0).reshape(x.shape),)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)
