"""Separating pictures from outside the dataset with a trained run (`experiments.separate`).

Any image file becomes a network input the same way: converted to RGB (grayscale replicated,
an alpha channel dropped), centre-cropped to a square and resized to 32x32 (bicubic), values in
[0, 1]. Two such images are mixed as the data pipeline mixes them, m = (x1 + x2) / 2; a mixture
made elsewhere is taken as it is.
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from unmix_jax import data, metrics, plotting, runs, steps
from unmix_jax.workdir import replaced

SIZE = 32
HOW = "converted to RGB, centre-cropped to a square and resized to 32x32 (bicubic)"


class ImageError(ValueError):
  """A file that cannot be used as an image; the message names it."""


def load_image(path: str) -> np.ndarray:
  """float32 [32, 32, 3] in [0, 1] from any image file PIL reads (`HOW`)."""
  from PIL import Image, UnidentifiedImageError

  if not os.path.isfile(path):
    raise ImageError(f"{path}: no such file.")
  try:
    with Image.open(path) as image:
      image = image.convert("RGB")
  except (UnidentifiedImageError, OSError) as e:
    raise ImageError(f"{path} is not an image PIL can read ({type(e).__name__}).") from None
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  image = image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE),
                                                                  Image.Resampling.BICUBIC)
  return np.asarray(image, np.float32) / 255.0


def save_image(path: str, x) -> None:
  """Writes x [32, 32, 3] (clipped to [0, 1]) as an 8-bit PNG."""
  from PIL import Image

  with replaced(path) as temporary:
    Image.fromarray(np.round(np.clip(np.asarray(x), 0, 1) * 255).astype(np.uint8)).save(temporary)


@dataclasses.dataclass
class Separation:
  """The mixtures [N, 32, 32, 3], the outputs (in the better assignment where the originals are
  known), the originals or None, and per-image PSNR [N, 2] or None."""

  mixture: np.ndarray
  out1: np.ndarray
  out2: np.ndarray
  x1: np.ndarray | None = None
  x2: np.ndarray | None = None
  psnr: np.ndarray | None = None


def separate(workdir: str, *, images: tuple[str, str] | None = None, mixture: str | None = None,
             num_pairs: int = 4, seed: int = 0) -> tuple[Separation, int]:
  """Runs the best checkpoint of `workdir` on two image files (mixed here), on one mixture file,
  or (neither) on `num_pairs` random pairs of the run's unseen test pairs. Returns the separation
  and the checkpoint's step."""
  x1 = x2 = None
  if mixture is not None:  # the files first: a bad one is named before anything else runs
    m = load_image(mixture)[None]
  elif images is not None:
    x1, x2 = (load_image(p)[None] for p in images)
    m = (x1 + x2) / 2
  config, graphdef, state, step = runs.restore(workdir, "best")
  if mixture is None and images is None:
    pair_data = data.load(config)
    rng = np.random.default_rng(seed)
    idx = pair_data.test_pairs[rng.choice(len(pair_data.test_pairs), num_pairs, replace=False)]
    m, x1, x2 = (np.asarray(a) for a in data.mix_batch(jnp.asarray(pair_data.test_images),
                                                       jnp.asarray(idx)))
  out1, out2 = steps.make_predict(graphdef, config)(state, jnp.asarray(m))
  out1, out2 = jnp.clip(out1, 0, 1), jnp.clip(out2, 0, 1)
  result = Separation(np.asarray(m), np.asarray(out1), np.asarray(out2))
  if x1 is not None:
    out1, out2 = metrics.best_assignment(out1, out2, jnp.asarray(x1), jnp.asarray(x2))
    psnr = [metrics.psnr(jnp.mean((o - x) ** 2, axis=(1, 2, 3)))
            for o, x in ((out1, x1), (out2, x2))]
    result = Separation(result.mixture, np.asarray(out1), np.asarray(out2), np.asarray(x1),
                        np.asarray(x2), np.stack([np.asarray(p) for p in psnr], axis=1))
  return result, step


def write(result: Separation, out_dir: str, name: str, title: str) -> list[str]:
  """`<name>.png` (the panel) and `<name>_mixture.png`, `<name>_out1.png`, `<name>_out2.png`
  (pair k > 0 adds `_<k>`) in `out_dir`; returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  panel = os.path.join(out_dir, f"{name}.png")
  plotting.separation_panel(panel, result, title=title)
  paths = [panel]
  for k in range(len(result.mixture)):
    suffix = f"_{k}" if k else ""
    for part, image in (("mixture", result.mixture[k]), ("out1", result.out1[k]),
                        ("out2", result.out2[k])):
      paths.append(os.path.join(out_dir, f"{name}_{part}{suffix}.png"))
      save_image(paths[-1], image)
  return paths
