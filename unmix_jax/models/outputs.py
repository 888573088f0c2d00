"""How a network's last layer becomes the two output images."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def out_channels(mixture_consistent: bool) -> int:
  """Channels the network's head must produce: a difference image, or both images."""
  return 3 if mixture_consistent else 6


def _split(d: jax.Array, m: jax.Array, bounded: bool) -> tuple[jax.Array, jax.Array]:
  """(m + d, m - d); `bounded` first maps d to tanh(d) * min(m, 1 - m), so both images stay in
  [0, 1]: where the mixture is near black or white, both images must be too."""
  if bounded:
    d = jnp.tanh(d) * jnp.minimum(m, 1.0 - m)
  return m + d, m - d


def to_pair(y: jax.Array, m: jax.Array, mixture_consistent: bool,
            bounded: bool = False) -> tuple[jax.Array, jax.Array]:
  """[B, H, W, 3 or 6] head output and mixture m [B, H, W, 3] -> (x1_hat, x2_hat) [B, H, W, 3].

  Mixture-consistent: the head predicts d and we return (m + d, m - d), whose average is m
  exactly, so the network only has to decide how the mixture splits, not reproduce it.
  """
  y = y.astype(m.dtype)  # float32 outputs and loss under a bfloat16 compute dtype
  if mixture_consistent:
    return _split(y, m, bounded)
  return y[..., :3], y[..., 3:]


def from_two(y1: jax.Array, y2: jax.Array, m: jax.Array, mixture_consistent: bool,
             bounded: bool = False):
  """Two decoders' outputs [B, H, W, 3] -> (x1_hat, x2_hat).

  Mixture-consistent: both outputs are shifted by the same residual so they average to m, i.e.
  (m + d, m - d) with d = (y1 - y2) / 2.
  """
  y1, y2 = y1.astype(m.dtype), y2.astype(m.dtype)
  if mixture_consistent:
    return _split((y1 - y2) / 2, m, bounded)
  return y1, y2


def check_common(model_cfg) -> None:
  for field in ("mixture_consistent", "bounded"):
    if not isinstance(model_cfg[field], bool):
      raise ValueError(f"config.model.{field}={model_cfg[field]!r} must be True or False.")
  if model_cfg.bounded and not model_cfg.mixture_consistent:
    raise ValueError("config.model.bounded=True bounds a mixture-consistent output; set "
                     "config.model.mixture_consistent=True too.")
