"""Separating pictures from outside the dataset with a trained run (`unmix separate`).

Any image file becomes a network input the same way: turned upright by its EXIF orientation,
converted to RGB (grayscale replicated, an alpha channel dropped, 16-bit and float pixels scaled
to [0, 1]), centre-cropped to a square and resized to 32x32 (bicubic). Two such images are mixed
as the data pipeline mixes them, m = (x1 + x2) / 2; a mixture made elsewhere is taken as it is.
Outputs are 32x32, the size the networks separate at.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import warnings

import jax.numpy as jnp
import numpy as np

from unmix_jax import data, metrics, plotting, runs, steps
from unmix_jax import workdir

SIZE = 32
# Pictures larger than this are refused before they are decoded (PIL's decompression-bomb
# limit, Image.MAX_IMAGE_PIXELS: ~89 megapixels, a 3-byte RGB image of ~268 MB).
MAX_PIXELS = 89_478_485


class ImageError(ValueError):
  """A file that cannot be used as an image; the message names it."""


def _pixels(image) -> np.ndarray:
  """[H, W, 3] from a PIL image of any mode: uint8 for 8-bit pictures, float32 in [0, 1] for
  16-bit (scaled by 65535) and float ones (as they are where within [0, 1], else by their
  maximum)."""
  if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
    return np.asarray(image.convert("RGB"))
  x = np.asarray(image, np.float64)  # one channel
  top = max(1.0, x.max(initial=0)) if image.mode == "F" else (
      65535.0 if x.max(initial=0) <= 65535 else 2.0 ** 32 - 1)
  return np.repeat(np.clip(x / top, 0, 1)[..., None], 3, axis=2).astype(np.float32)


def _square_32(x: np.ndarray) -> np.ndarray:
  """[H, W, 3] (`_pixels`) -> its centre square resized to float32 [32, 32, 3] in [0, 1]
  (bicubic; wide pixels channel by channel)."""
  from PIL import Image

  h, w, _ = x.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  square = x[top:top + side, left:left + side]
  if x.dtype == np.uint8:
    square = Image.fromarray(square).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(square, np.float32) / 255.0
  channels = [Image.fromarray(np.ascontiguousarray(square[..., c]), "F").resize(
      (SIZE, SIZE), Image.Resampling.BICUBIC) for c in range(3)]
  return np.clip(np.stack([np.asarray(c) for c in channels], axis=2), 0, 1).astype(np.float32)


def load_image(path: str) -> tuple[np.ndarray, str]:
  """float32 [32, 32, 3] in [0, 1] from any image file PIL reads (see the module's docstring),
  and a line saying what was done to it, e.g. "a.jpg (4032x3024) centre-cropped to 3024x3024,
  resized to 32x32"."""
  from PIL import Image, ImageOps, UnidentifiedImageError

  if os.path.isdir(path):
    raise ImageError(f"{path} is a directory, not an image file; give the path of a picture.")
  if not os.path.isfile(path):
    raise ImageError(f"{path}: no such file.")
  too_big = (f"{path} has more than {MAX_PIXELS / 1e6:.0f} megapixels, the largest picture "
             "read (a guard against decompression bombs); scale it down first.")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        if image.size[0] * image.size[1] > MAX_PIXELS:
          raise ImageError(too_big)
        x = _pixels(ImageOps.exif_transpose(image))
  except Image.DecompressionBombError:
    raise ImageError(too_big) from None
  except (UnidentifiedImageError, OSError, ValueError) as e:
    if isinstance(e, ImageError):
      raise
    raise ImageError(f"{path} is not an image PIL can read ({type(e).__name__}).") from None
  h, w, _ = x.shape
  side = min(h, w)
  note = f"{os.path.basename(path)} ({w}x{h})" + (
      f" centre-cropped to {side}x{side}," if h != w else "") + f" resized to {SIZE}x{SIZE}"
  return _square_32(x), note


def save_image(path: str, x) -> None:
  """Writes x [32, 32, 3] (clipped to [0, 1]) as an 8-bit PNG."""
  import io

  from PIL import Image

  png = io.BytesIO()
  Image.fromarray(np.round(np.clip(np.asarray(x), 0, 1) * 255).astype(np.uint8)).save(png, "PNG")
  workdir.write_bytes(path, png.getvalue())


@dataclasses.dataclass
class Separation:
  """The mixtures [N, 32, 32, 3], the outputs (in the better assignment where the originals are
  known), the originals or None, per-image PSNR [N, 2] or None, what was done to each input
  file, and whether the two outputs share one error (mixture-consistent outputs m + d and
  m - d err by -e and +e, so their PSNRs differ only where clipping to [0, 1] cut one)."""

  mixture: np.ndarray
  out1: np.ndarray
  out2: np.ndarray
  x1: np.ndarray | None = None
  x2: np.ndarray | None = None
  psnr: np.ndarray | None = None
  notes: tuple[str, ...] = ()
  shared_error: bool = False


def separate(workdir: str, *, images: tuple[str, str] | None = None, mixture: str | None = None,
             num_pairs: int = 4, seed: int = 0) -> tuple[Separation, int]:
  """Runs the best checkpoint of `workdir` on two image files (mixed here), on one mixture file,
  or (neither) on `num_pairs` random pairs of the run's unseen test pairs. Returns the separation
  and the checkpoint's step."""
  x1 = x2 = None
  notes = ()
  if mixture is not None:  # the files first: a bad one is named before anything else runs
    m, note = load_image(mixture)
    m, notes = m[None], (note,)
  elif images is not None:
    (x1, note1), (x2, note2) = (load_image(p) for p in images)
    x1, x2, notes = x1[None], x2[None], (note1, note2)
    m = (x1 + x2) / 2
  config, graphdef, state, step = runs.restore(workdir, "best")
  if mixture is None and images is None:
    pair_data = data.load(config, test_only=True)
    rng = np.random.default_rng(seed)
    idx = pair_data.test_pairs[rng.choice(len(pair_data.test_pairs), num_pairs, replace=False)]
    m, x1, x2 = (np.asarray(a) for a in data.mix_batch(jnp.asarray(pair_data.test_images),
                                                       jnp.asarray(idx)))
  out1, out2 = steps.make_predict(graphdef, config)(state, jnp.asarray(m))
  out1, out2 = jnp.clip(out1, 0, 1), jnp.clip(out2, 0, 1)
  psnr = None
  if x1 is not None:
    out1, out2 = metrics.best_assignment(out1, out2, jnp.asarray(x1), jnp.asarray(x2))
    psnr = np.stack([np.asarray(metrics.psnr(jnp.mean((o - x) ** 2, axis=(1, 2, 3))))
                     for o, x in ((out1, x1), (out2, x2))], axis=1)
  return Separation(np.asarray(m), np.asarray(out1), np.asarray(out2), x1, x2, psnr, notes,
                    bool(config.model.mixture_consistent)), step


def output_paths(out_dir: str, name: str, count: int, inputs=()) -> list[str]:
  """The panel `<name>_panel.png` and `<name>_{mixture,out1,out2}[_k].png` for `count` pairs,
  under the first of `name`, `name-1`, `name-2`, ... whose files neither exist nor are one of
  the `inputs`: nothing a user has is overwritten."""
  taken = {os.path.realpath(p) for p in inputs}
  for k in itertools.count():
    stem = str(workdir.path(out_dir) / (name if k == 0 else f"{name}-{k}"))
    paths = [f"{stem}_panel.png"] + [f"{stem}_{part}{f'_{i}' if i else ''}.png"
                                     for i in range(count) for part in ("mixture", "out1", "out2")]
    if not any(workdir.path(p).exists() or os.path.realpath(p) in taken for p in paths):
      return paths


def write(result: Separation, out_dir: str, name: str, title: str, inputs=()) -> list[str]:
  """The panel and each pair's mixture and outputs as PNGs in `out_dir` (`output_paths`: new
  names, never an existing file); returns the paths written."""
  workdir.path(out_dir).mkdir(parents=True, exist_ok=True)
  paths = output_paths(out_dir, name, len(result.mixture), inputs)
  plotting.separation_panel(paths[0], result, title=title)
  images = [image for k in range(len(result.mixture))
            for image in (result.mixture[k], result.out1[k], result.out2[k])]
  for path, image in zip(paths[1:], images):
    save_image(path, image)
  return paths
