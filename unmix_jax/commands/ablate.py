"""Ablation of a recipe: the recipe and one run per lever switched, the same steps each.

  unmix ablate --config=unet:cpu10 --epochs=3 [--results_dir=DIR]
  unmix ablate --config=unet:smoke --levers=flips,ema

Writes <results_dir>/report.md (default results/ablation-<model>-<preset>): per lever the test
(unseen) PSNR gain with and without it, the paired difference with its 95% interval, val (seen)
PSNR and train seconds. Finished runs are scored again, not retrained.
"""

from absl import flags, logging

from unmix_jax import cli, host_memory

_CONFIG = cli.define_config("unet:cpu10")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs of every run (default: the recipe's).",
                               lower_bound=1)
_RESULTS = flags.DEFINE_string("results_dir", None,
                               "Default: results/ablation-<model>-<preset>.")
_LEVERS = flags.DEFINE_list("levers", None, "Levers to switch (default: all that apply).")


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # before JAX starts its CPU threads (host_memory.py)
  logging.set_verbosity(logging.ERROR)
  from unmix_jax import ablation, config_checks

  recipe = _CONFIG.value
  if _EPOCHS.value:
    recipe.train.epochs = _EPOCHS.value
  results_dir = _RESULTS.value or f"results/ablation-{recipe.model.name}-{recipe.preset}"
  with cli.one_line_errors():
    unknown = sorted(set(_LEVERS.value or ()) - set(ablation.LEVERS))
    if unknown:
      raise config_checks.ConfigError(
          f"--levers={','.join(_LEVERS.value)}: no lever {', '.join(unknown)}; choose from "
          f"{', '.join(ablation.LEVERS)}.")
    config_checks.validate(recipe)
    rows = ablation.run_all(recipe, results_dir, _LEVERS.value or tuple(ablation.LEVERS))
  print(ablation.table(rows))
  print(f"wrote {results_dir}/report.md")


def run():
  cli.run(main)
