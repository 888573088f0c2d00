"""Export a run's best checkpoint as weights only, the form the package ships.

  unmix export --workdir=runs/unet-cpu60                # replaces the shipped model
  unmix export --workdir=runs/unet-cpu60 --out=exported/unet

Scores the run first (`experiments.evaluate`), then writes <out>/config.json, eval.json,
export.json and one checkpoint of the evaluation weights and normalisation statistics (no
optimizer state). The default --out is the package's unmix_jax/pretrained/unet-cpu60, what
`experiments.separate` and `experiments.evaluate --pretrained` use.
"""

import os

from absl import flags, logging

from unmix_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (a trained run).", required=True)
_OUT = flags.DEFINE_string("out", None, "Where to write; default: the shipped model's place.")


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  from unmix_jax import evaluation, logs, runs

  out = _OUT.value or runs.pretrained_dir()
  with cli.one_line_errors():
    info = runs.export(_WORKDIR.value, out)
  print(evaluation.table(logs.read_eval(out)))
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
  print(f"exported step {info['step']} of {_WORKDIR.value} to {out} ({size / 1e6:.2f} MB)")


def run():
  cli.run(main)
