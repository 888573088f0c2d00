"""Separate any picture with the shipped model, or with a trained run's best checkpoint.

  python -m experiments.separate a.png b.png                             # mixes two files
  python -m experiments.separate --mixture=m.png
  python -m experiments.separate --workdir=runs/unet-cpu10               # random unseen test pairs

Without --workdir the model shipped with the package separates (`runs.pretrained_dir`). Each
file is converted to RGB, centre-cropped and resized to 32x32. Writes a panel (mixture,
outputs, originals and PSNR where known) and each output as a PNG, by default under
<workdir>/separations/ (./separations/ for the shipped model), and prints where. Only reads the
run: it may run beside its training.
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
  with cli.one_line_errors():
    try:
      result, step = separation.separate(workdir, images=tuple(files) or None,
                                         mixture=_MIXTURE.value, num_pairs=_NUM.value,
                                         seed=_SEED.value)
    except separation.ImageError as e:
      cli.fail(str(e))
    if files:
      name = "_".join(os.path.splitext(os.path.basename(f))[0] for f in files)
      what = f"{files[0]} and {files[1]}, mixed here"
    elif _MIXTURE.value:
      name = os.path.splitext(os.path.basename(_MIXTURE.value))[0]
      what = f"the mixture {_MIXTURE.value}"
    else:
      name, what = "test_pairs", f"{_NUM.value} unseen test pairs"
    out_dir = _OUT.value or os.path.join(_WORKDIR.value or ".", "separations")
    model = runs.describe(workdir)
    paths = separation.write(result, out_dir, name,
                             f"{what}; {model}" + ("" if runs.is_export(workdir)
                                                   else f", checkpoint step {step}"))
  print(f"model: {model}")
  if files or _MIXTURE.value:
    print(f"inputs {separation.HOW}.")
  if result.psnr is not None:
    for k, (a, b) in enumerate(result.psnr):
      print(f"pair {k}: PSNR {a:.2f} and {b:.2f} dB against the originals "
            f"(the mixture itself: {_baseline(result, k):.2f} dB)")
  print(f"wrote {paths[0]} (panel) and {len(paths) - 1} images beside it")


def _baseline(result, k):
  import numpy as np

  mse = [np.mean((result.mixture[k] - x[k]) ** 2) for x in (result.x1, result.x2)]
  return float(np.mean([-10 * np.log10(max(e, 1e-10)) for e in mse]))


if __name__ == "__main__":
  cli.run(main)
