"""Opening a finished or running workdir: its config and a restored train state."""

from __future__ import annotations

import json
import os

from unmix_jax import checkpoint, configs, steps


class RunError(RuntimeError):
  """The workdir holds no usable run; the message says what is missing."""


def load_config(workdir: str):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise RunError(f"--workdir={workdir} holds no run (no config.json); train one first with "
                   "python -m experiments.train --workdir=...")
  with open(path) as f:
    saved = json.load(f)
  # Start from the current defaults of that model and preset, so a run saved before a field
  # existed still opens (the new field takes its default).
  config = configs.get_config(saved["model"]["name"], saved.get("preset"))
  config.update(saved)
  return config


def restore(workdir: str, which: str = "best"):
  """(config, graphdef, state, step) of the run in `workdir`.

  which: "best" (`Checkpoints.best_step`: lowest holdout, else val, loss among kept
  checkpoints) or "latest". Safe beside the training run of that workdir (`Checkpoints.read`).
  """
  config = load_config(workdir)
  tx = steps.make_optimizer(config, steps.steps_per_epoch(config) * config.train.epochs)
  graphdef, state = steps.create_train_state(config, tx)
  ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints)
  try:
    found = ckpts.read(state, which)
  finally:
    ckpts.close()
  if found is None:
    raise RunError(f"--workdir={workdir} has no checkpoint yet; let its training finish an "
                   "epoch first.")
  step, state = found
  return config, graphdef, state, step
