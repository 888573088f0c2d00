"""Score a run's best checkpoint on the fixed test (unseen) and val (seen) pairs.

  unmix evaluate --workdir=runs/unet-cpu
  unmix evaluate --pretrained     # the shipped model, on the test pairs

Writes <workdir>/eval.json (means and 95% bootstrap intervals of MSE, PSNR, SSIM, for the model
and the mixture baseline on the same pairs) and prints a table. The shipped model is scored on
the test pairs alone, and nothing is written.
"""


from absl import flags, logging

from unmix_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_PRETRAINED = flags.DEFINE_bool("pretrained", False, "Score the shipped model instead.")
_WHICH = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to score.")


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  if bool(_WORKDIR.value) == _PRETRAINED.value:
    cli.fail("give --workdir=DIR (a trained run) or --pretrained (the shipped model).")
  from unmix_jax import evaluation, runs

  with cli.one_line_errors():
    if _PRETRAINED.value:
      result = evaluation.score_run(runs.pretrained_dir(), test_only=True)
    else:
      result = evaluation.evaluate_run(_WORKDIR.value, _WHICH.value)
  print(evaluation.table(result))
  if _PRETRAINED.value:
    print(f"model: {runs.describe(runs.pretrained_dir())}")
  else:
    print(f"wrote {_WORKDIR.value}/eval.json")


def run():
  cli.run(main)
