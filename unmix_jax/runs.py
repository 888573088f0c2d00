"""Opening a finished or running workdir: its config and a restored train state; the shipped
model, and exporting a run's best checkpoint into that form.

An exported run (`export`) is a workdir of its own: `config.json`, `eval.json` (its scores),
`export.json` (where it came from) and one checkpoint holding `steps.weights_only`: the
evaluation weights and normalisation statistics. `restore` opens it like any run. The package
ships one, `pretrained_dir()`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil

import jax

from unmix_jax import checkpoint, configs, logs, steps

PRETRAINED = "unet-cpu60"  # the shipped model: unmix_jax/pretrained/<PRETRAINED>/
EXPORT_FILE = "export.json"


class RunError(RuntimeError):
  """The workdir holds no usable run; the message says what is missing."""


def load_config(workdir: str):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise RunError(f"--workdir={workdir} holds no run (no config.json); train one first with "
                   "unmix train --workdir=...")
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
  # Shapes and dtypes only: the checkpoint supplies every value (running the initialisers
  # would compile each of them, seconds for nothing).
  graphdef, state = jax.eval_shape(lambda: steps.create_train_state(config, tx))
  if is_export(workdir):
    state = steps.weights_only(state)
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


def is_export(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, EXPORT_FILE))


def pretrained_dir(name: str = PRETRAINED) -> str:
  """The shipped model's directory inside the installed package (read it with `restore`)."""
  return str(importlib.resources.files("unmix_jax") / "pretrained" / name)


def describe(workdir: str) -> str:
  """Which model a workdir holds, for a panel's title and a printed line: e.g. "the shipped
  unet (:cpu60, step 37500, test gain +2.48 dB)", or the workdir itself."""
  if not is_export(workdir):
    return workdir
  with open(os.path.join(workdir, EXPORT_FILE)) as f:
    info = json.load(f)
  shipped = os.path.realpath(workdir) == os.path.realpath(pretrained_dir())
  return (f"{'the shipped' if shipped else 'the exported'} {info['model']} (:{info['preset']}, "
          f"step {info['step']}, test gain {info['test_psnr_gain']:+.2f} dB)")


def export(workdir: str, out_dir: str) -> dict:
  """Writes the best checkpoint of the run in `workdir` to `out_dir` as weights only, with its
  config and its scores (`evaluation.evaluate_run`, which also writes `workdir/eval.json`);
  returns export.json's content. `out_dir` is replaced."""
  from unmix_jax import evaluation

  scores = evaluation.evaluate_run(workdir, "best")
  config, _, state, step = restore(workdir, "best")
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.makedirs(out_dir)
  shutil.copy(os.path.join(workdir, "config.json"), os.path.join(out_dir, "config.json"))
  trained_by = (f"unmix train --config={config.model.name}:"
                f"{config.preset}")
  ckpts = checkpoint.Checkpoints(out_dir, keep=1)
  try:
    meta = dict(step=step, model=json.loads(config.model.to_json()), trained_by=trained_by)
    ckpts.save(step, steps.weights_only(state), meta, select_loss=None)
  finally:
    ckpts.close()
  # The files name no path of the machine that exported them (Orbax's commit markers do, and
  # only matter on object stores).
  for directory, _, names in os.walk(out_dir):
    if "commit_success.txt" in names:
      os.remove(os.path.join(directory, "commit_success.txt"))
  logs.write_json(os.path.join(out_dir, "eval.json"),
                  dict(scores, workdir=os.path.basename(os.path.normpath(out_dir))))
  info = dict(model=config.model.name, preset=config.preset, step=step, trained_by=trained_by,
              params=scores["params"], test_psnr_gain=scores["test"]["psnr_gain"]["mean"],
              holds="evaluation weights (the moving average where the run keeps one) and "
                    "normalisation statistics; no optimizer state")
  logs.write_json(os.path.join(out_dir, EXPORT_FILE), info)
  return info
