"""Export a run's best checkpoint as weights only, the form the package ships.

  unmix export --workdir=runs/unet-cpu60                # replaces the shipped model
  unmix export --workdir=runs/unet-cpu60 --out=exported/unet

Scores the run first (`unmix evaluate`), then writes <out>/config.json, eval.json,
export.json and one checkpoint of the evaluation weights and normalisation statistics (no
optimizer state). The default --out is the package's unmix_jax/pretrained/unet-cpu60, what
`unmix separate` and `unmix evaluate --pretrained` use.
"""


from absl import flags, logging

from unmix_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (a trained run).", required=True)
_OUT = flags.DEFINE_string("out", None, "Where to write; default: the shipped model's place.")


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  from unmix_jax import evaluation, logs, runs, workdir

  out = _OUT.value or runs.pretrained_dir()
  with cli.one_line_errors():
    info = runs.export(_WORKDIR.value, out, evaluation.evaluate_run(_WORKDIR.value, "best"))
  print(evaluation.table(logs.read_eval(out)))
  print(f"exported step {info['step']} of {_WORKDIR.value} to {out} "
        f"({_size(workdir.path(out)) / 1e6:.2f} MB)")


def _size(folder) -> int:
  return sum(_size(p) if p.is_dir() else p.stat().length for p in folder.iterdir())


def run():
  cli.run(main)
