"""Train one un-mixing model.

  unmix train --config=unet:cpu [--workdir=runs/unet-cpu]
  unmix train --config=unet --config.train.lr=3e-4

Running the same command again with the same workdir resumes from the latest checkpoint.
"""

import os

from absl import flags, logging

from unmix_jax import cli, host_memory

_CONFIG = cli.define_config("unet:cpu")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<config file>-<preset>.")


def default_workdir(config_arg: str) -> str:
  path, _, preset = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", f"{name}-{preset or 'default'}")


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # before JAX starts its CPU threads (host_memory.py)
  logging.set_verbosity(logging.ERROR)  # Orbax and tfds log every file operation at INFO.
  from unmix_jax import parallel, train  # After flag parsing: keeps --help fast.
  from unmix_jax import workdir as workdir_lib

  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  with cli.one_line_errors():
    parallel.initialize()
    summary = train.train_and_evaluate(config, workdir)
  if not parallel.is_main_process():
    return
  t = summary["test"]
  print(f"test (unseen images, {config.data.num_test_pairs} pairs): mse {t['mse']:.5f} "
        f"psnr {t['psnr']:.2f} dB | mixture baseline mse {t['baseline_mse']:.5f} "
        f"psnr {t['baseline_psnr']:.2f} dB | gain {t['psnr_gain']:+.2f} dB")
  print(f"wall time {summary['wall_seconds']:.0f} s; files in {workdir_lib.path(workdir)}: "
        "metrics.jsonl, tb/, checkpoints/, reconstructions.png, loss_curves.png, summary.json")


def run():
  cli.run(main)
