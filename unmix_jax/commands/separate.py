"""Separate any picture with the shipped model, or with a trained run's best checkpoint.

  unmix separate a.png b.png                        # mixes two pictures, then separates them
  unmix separate --mixture=m.png                    # a mixture made elsewhere
  unmix separate --workdir=runs/unet-cpu10          # random unseen test pairs, a run's model

Without --workdir the model shipped with the package separates. Each picture is turned upright
(EXIF), converted to RGB, centre-cropped and resized to 32x32, the size the models separate at.
Writes a panel (mixture, outputs, originals and PSNR where known) and each output as a PNG, by
default under <workdir>/separations/ (./separations/ for the shipped model), always under new
names: no file is overwritten. Only reads the run: it may run beside its training.
"""

import os

from absl import flags, logging

from unmix_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None,
                                "Run directory (a trained run); default: the shipped model.")
_MIXTURE = flags.DEFINE_string("mixture", None, "An image that already is a mixture.")
_OUT = flags.DEFINE_string("out", None, "Output directory; default <workdir>/separations.")
_NUM = flags.DEFINE_integer("num", 4, "Random test pairs when no image is given.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random test pairs.")


def main(argv):
  files = argv[1:]
  logging.set_verbosity(logging.ERROR)
  if _MIXTURE.value and files:
    cli.fail("give either two images to mix or --mixture=FILE, not both.")
  if files and len(files) != 2:
    cli.fail(f"give two image files to mix (got {len(files)}), or --mixture=FILE, or none for "
             "random unseen test pairs.")
  from unmix_jax import runs, separation

  workdir = _WORKDIR.value or runs.pretrained_dir()
  inputs = tuple(files) or ((_MIXTURE.value,) if _MIXTURE.value else ())
  with cli.one_line_errors():
    result, step = separation.separate(workdir, images=tuple(files) or None,
                                       mixture=_MIXTURE.value, num_pairs=_NUM.value,
                                       seed=_SEED.value)
    if inputs:
      name = "_".join(os.path.splitext(os.path.basename(f))[0] for f in inputs)
      what = (f"{files[0]} and {files[1]}, mixed here" if files
              else f"the mixture {_MIXTURE.value}")
    else:
      name, what = "test_pairs", f"{_NUM.value} unseen test pairs"
    out_dir = _OUT.value or os.path.join(_WORKDIR.value or ".", "separations")
    model = runs.describe(workdir)
    paths = separation.write(result, out_dir, name,
                             f"{what}; {model}" + ("" if runs.is_export(workdir)
                                                   else f", checkpoint step {step}"), inputs)
  print(f"model: {model}")
  for note in result.notes:
    print(f"input {note}")
  if result.psnr is not None:
    if result.shared_error:
      print("PSNR against the originals: one figure for both outputs, which err by -e and +e "
            "(outputs m + d and m - d average to the mixture m)")
    for k, (a, b) in enumerate(result.psnr):
      both = f"{(a + b) / 2:.2f} dB" if result.shared_error else f"{a:.2f} and {b:.2f} dB"
      print(f"pair {k}: PSNR {both} (the mixture itself: {_baseline(result, k):.2f} dB)")
  print(f"wrote {paths[0]} (panel) and {len(paths) - 1} images beside it")


def _baseline(result, k):
  import numpy as np

  mse = [np.mean((result.mixture[k] - x[k]) ** 2) for x in (result.x1, result.x2)]
  return float(np.mean([-10 * np.log10(max(e, 1e-10)) for e in mse]))


def run():
  cli.run(main, takes_words=True)
