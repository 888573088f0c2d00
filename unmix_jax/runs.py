"""Opening a finished or running workdir (a local folder or a bucket): its config and a restored
train state; the shipped model, and exporting a run's best checkpoint into that form.

An exported run (`export`) is a workdir of its own: `config.json`, `eval.json` (its scores),
`export.json` (where it came from) and one checkpoint holding `steps.weights_only`: the
evaluation weights and normalisation statistics. `restore` opens it like any run. The package
ships one, `pretrained_dir()`.
"""

from __future__ import annotations

import importlib.resources
import json
import os

import jax

from unmix_jax import checkpoint, configs, steps
from unmix_jax import workdir as workdir_lib

PRETRAINED = "unet-cpu60"  # the shipped model: unmix_jax/pretrained/<PRETRAINED>/
EXPORT_FILE = "export.json"


class RunError(RuntimeError):
  """The workdir holds no usable run; the message says what is missing."""


def load_config(workdir):
  saved = workdir_lib.read_json(workdir_lib.path(workdir) / "config.json")
  if saved is None:
    raise RunError(f"--workdir={workdir} holds no run (no config.json); train one first with "
                   "unmix train --workdir=...")
  # Start from the current defaults of that model and preset, so a run saved before a field
  # existed still opens (the new field takes its default).
  config = configs.get_config(saved["model"]["name"], saved.get("preset"))
  config.update(saved)
  return config


def restore(workdir, which: str = "best"):
  """(config, graphdef, state, step) of the run in `workdir`.

  which: "best" (the lowest holdout, else val, loss among kept checkpoints) or "latest". Safe
  beside the training run of that workdir (`Checkpoints.restore` opened read-only).
  """
  config = load_config(workdir)
  tx = steps.make_optimizer(config, steps.steps_per_epoch(config) * config.train.epochs)
  # Shapes and dtypes only: the checkpoint supplies every value (running the initialisers
  # would compile each of them, seconds for nothing).
  graphdef, state = jax.eval_shape(lambda: steps.create_train_state(config, tx))
  if is_export(workdir):
    state = steps.weights_only(state)
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    found = ckpts.restore(state, which)
  if found is None:
    raise RunError(f"--workdir={workdir} has no checkpoint yet; let its training finish an "
                   "epoch first.")
  step, state, _ = found
  return config, graphdef, state, step


def is_export(workdir) -> bool:
  return (workdir_lib.path(workdir) / EXPORT_FILE).exists()


def pretrained_dir(name: str = PRETRAINED) -> str:
  """The shipped model's directory inside the installed package (read it with `restore`)."""
  return str(importlib.resources.files("unmix_jax") / "pretrained" / name)


def describe(workdir) -> str:
  """Which model a workdir holds, for a panel's title and a printed line: e.g. "the shipped
  unet (:cpu60, step 37500, test gain +2.48 dB)", or the workdir itself."""
  info = workdir_lib.read_json(workdir_lib.path(workdir) / EXPORT_FILE)
  if info is None:
    return str(workdir)
  shipped = os.path.realpath(str(workdir)) == os.path.realpath(pretrained_dir())
  return (f"{'the shipped' if shipped else 'the exported'} {info['model']} (:{info['preset']}, "
          f"step {info['step']}, test gain {info['test_psnr_gain']:+.2f} dB)")


def export(workdir, out_dir, scores: dict) -> dict:
  """Writes the best checkpoint of the run in `workdir` to `out_dir` as weights only, with its
  config and `scores` (`evaluation.evaluate_run` of the same checkpoint); returns export.json's
  content. `out_dir` is replaced."""
  config, _, state, step = restore(workdir, "best")
  out = workdir_lib.path(out_dir)
  if out.exists():
    out.rmtree()
  out.mkdir(parents=True)
  workdir_lib.write_json(out / "config.json", json.loads(config.to_json()))
  trained_by = f"unmix train --config={config.model.name}:{config.preset}"
  with checkpoint.Checkpoints(out, keep=1) as ckpts:
    meta = dict(step=step, model=json.loads(config.model.to_json()), trained_by=trained_by)
    ckpts.save(step, steps.weights_only(state), meta, select_loss=None)
  # On a disk the files name no path of the machine that exported them: Orbax's commit
  # markers do, and mark complete steps only in a bucket.
  for marker in [] if workdir_lib.is_url(out) else [
      *out.glob("checkpoints/*/commit_success.txt"),
      *out.glob("checkpoints/*/*/commit_success.txt")]:
    marker.unlink()
  workdir_lib.write_json(out / "eval.json", dict(scores, workdir=out.name))
  info = dict(model=config.model.name, preset=config.preset, step=step, trained_by=trained_by,
              params=scores["params"], test_psnr_gain=scores["test"]["psnr_gain"]["mean"],
              holds="evaluation weights (the moving average where the run keeps one) and "
                    "normalisation statistics; no optimizer state")
  workdir_lib.write_json(out / EXPORT_FILE, info)
  return info
