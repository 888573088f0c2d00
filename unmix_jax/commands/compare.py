"""Train (or reuse) and compare U-Net, AE and VAE, each with PIT and fixed-order loss.

  unmix compare --preset=cpu [--results_dir=results/cpu]

Writes <results_dir>/report.md, reconstructions.png and loss_curves.png; each run lives in
<results_dir>/<model>-<loss>/ and is only re-evaluated when already finished.
"""


from absl import flags, logging

from unmix_jax import cli, host_memory
from unmix_jax.configs import common

_PRESET = flags.DEFINE_enum("preset", "cpu", list(common.PRESETS), "Config preset.")
_RESULTS = flags.DEFINE_string("results_dir", None, "Default: results/<preset>.")
_MODELS = flags.DEFINE_list("models", "unet,ae,vae", "Architectures to compare.")
_LOSSES = flags.DEFINE_list("losses", "pit,fixed", "Losses to compare.")


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # before JAX starts its CPU threads (host_memory.py)
  logging.set_verbosity(logging.ERROR)
  from unmix_jax import compare

  results_dir = _RESULTS.value or f"results/{_PRESET.value}"
  with cli.one_line_errors():
    rows = compare.run_all(_PRESET.value, results_dir, _MODELS.value, _LOSSES.value)
  print(compare.report_table(rows))
  print(f"wrote {results_dir}/report.md, reconstructions.png, loss_curves.png")


def run():
  cli.run(main)
