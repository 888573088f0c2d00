"""Score a run's best checkpoint on the fixed test (unseen) and val (seen) pairs.

  python -m experiments.evaluate --workdir=runs/unet-cpu

Writes <workdir>/eval.json (means and 95% bootstrap intervals of MSE, PSNR, SSIM, for the model
and the mixture baseline on the same pairs) and prints a table.
"""


from absl import flags, logging

from unmix_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_WHICH = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to score.")


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  from unmix_jax import evaluation

  with cli.one_line_errors():
    result = evaluation.evaluate_run(_WORKDIR.value, _WHICH.value)
  print(evaluation.table(result))
  print(f"wrote {_WORKDIR.value}/eval.json")


if __name__ == "__main__":
  cli.run(main)
