"""Orbax checkpoints of the train state: the only module that touches Orbax.

Layout: `workdir/checkpoints/<step>/{state,meta}`. `state` is the TrainState pytree; `meta` is JSON
(model config, epoch, val loss) so a workdir can be checked against a config before restoring.
Kept: the last `keep` checkpoints plus the one with the lowest val loss.
"""

from __future__ import annotations

import os
import warnings

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(RuntimeError):
  """No checkpoint of this workdir can be used; the message says which and why."""


def _val_score(metrics) -> float:
  return -float(metrics["val_loss"])  # BestN keeps the highest score.


class Checkpoints:
  """Saves and restores `(state, meta)` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=_val_score, n=1),
        ]),
        # Synchronous: when save() returns the step is on disk, so a stop right after loses nothing.
        enable_async_checkpointing=False,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest val loss (as saved in its meta)."""
    scored = [(self.read_meta(s)["val_loss"], s) for s in self.steps()]
    return min(scored)[1] if scored else None

  def save(self, step: int, state, meta: dict, val_loss: float) -> None:
    """Writes step `step`; `val_loss` ranks it for keeping and is added to its meta."""
    meta = dict(meta, val_loss=float(val_loss))
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics={"val_loss": float(val_loss)},
    )
    self._manager.wait_until_finished()

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, like):
    """Restores step `step` onto the structure, shapes and dtypes of the pytree `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_latest(self, like):
    """(state, meta) of the newest readable checkpoint, or None when there is none.

    A newer checkpoint that cannot be read (truncated, missing file) is skipped with a warning
    naming it and the step used instead; when none can be read this raises CheckpointError rather
    than silently starting again over a finished run.
    """
    steps = self.steps()
    failures = []
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, like)
      except Exception as e:  # Orbax raises many types for damaged files.
        failures.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
        continue
      for bad, why in failures:
        warnings.warn(f"checkpoint step {bad} in {self.directory} is unreadable ({why}); "
                      f"resuming from step {step} instead.")
      return state, meta
    if failures:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be read (steps {[s for s, _ in failures]}; "
          f"newest: {failures[0][1]}); move the directory away to start again.")
    return None

  def close(self) -> None:
    self._manager.close()
