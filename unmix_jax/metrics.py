"""Evaluation metrics per pair, on outputs clipped to [0, 1] (images are [B, 32, 32, 3]).

Conventions, used everywhere the project reports numbers:
  * `mse`: mean squared error over all pixels of both images, under the better assignment.
  * `psnr`: PSNR of each image (peak 1.0) under that assignment, averaged over the two images and
    then over pairs, i.e. the mean of per-image PSNRs, not the PSNR of the mean MSE.
  * `ssim`: SSIM of each image under that assignment (dm-pix: 11x11 Gaussian window, sigma 1.5,
    k1 0.01, k2 0.03, peak 1.0; the mean of the SSIM map), averaged like PSNR.
  * `baseline_*`: the same for the mixture baseline, which returns m for both images.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp

from unmix_jax import losses


def psnr(mse: jax.Array) -> jax.Array:
  """PSNR in dB for images in [0, 1]; MSE floored at 1e-10 so identical images stay finite."""
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def best_assignment(x1_hat, x2_hat, x1, x2) -> tuple[jax.Array, jax.Array]:
  """Reorders each pair's outputs [B, H, W, C] so the first is the one matched to x1 under the
  assignment with the smaller summed MSE (ties keep the given order)."""
  straight, swapped = losses.assignment_errors(x1_hat, x2_hat, x1, x2)
  keep = (straight <= swapped)[:, None, None, None]
  return jnp.where(keep, x1_hat, x2_hat), jnp.where(keep, x2_hat, x1_hat)


def _scores(x1_hat, x2_hat, x1, x2) -> dict[str, jax.Array]:
  for_x1, for_x2 = best_assignment(x1_hat, x2_hat, x1, x2)
  first = losses.mse_per_example(for_x1, x1)
  second = losses.mse_per_example(for_x2, x2)
  return {
      "mse": (first + second) / 2,
      "psnr": (psnr(first) + psnr(second)) / 2,
      "ssim": (dm_pix.ssim(for_x1, x1, max_val=1.0) + dm_pix.ssim(for_x2, x2, max_val=1.0)) / 2,
  }


def pair_metrics(x1_hat, x2_hat, m, x1, x2) -> dict[str, jax.Array]:
  """Per-pair metrics of a model and of the mixture baseline, each [B]."""
  clip = lambda x: jnp.clip(x, 0.0, 1.0)
  model = _scores(clip(x1_hat), clip(x2_hat), x1, x2)
  baseline = _scores(m, m, x1, x2)
  return {**model, **{f"baseline_{k}": v for k, v in baseline.items()}}
