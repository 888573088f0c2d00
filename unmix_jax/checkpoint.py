"""Orbax checkpoints of the train state: the only module that touches Orbax.

Layout: `workdir/checkpoints/<step>/{state,meta}`. `state` is the TrainState pytree; `meta` is JSON
(model config, epoch, the loss checkpoints are chosen on) so a workdir can be checked against a
config before restoring. Kept: the last `keep` checkpoints plus the best one: the lowest holdout
loss where the run has a holdout split, else the lowest val loss.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from unmix_jax import configs, parallel
from unmix_jax.workdir import DiskFullError, disk_writes, is_disk_error


_NOISE = ("Traceback (most recent call last):", "During handling of the above exception",
          "The above exception was the direct cause", "asyncio/base_events.py",
                      "self._check_closed()", "Event loop is closed")


def _drop_unretrieved_futures(record) -> bool:
  """asyncio logs 'Future exception was never retrieved' (with a full traceback) for each of a
  failed restore's other reads when they are garbage-collected, possibly after our error line."""
  return not str(record.msg).startswith("Future exception was never retrieved")


@contextlib.contextmanager
def _quiet_stderr():
  """When an Orbax read or write fails, TensorStore's pending callbacks still fire into Orbax's
  closed event loop and print dozens of tracebacks straight to the stderr file descriptor,
  burying the one line about the failure. Capture fd 2 meanwhile; on success pass it all on, on
  failure only the lines that are not that noise. Not with several processes: there a save
  waits at barriers on the others, and what the runtime prints about a lost process (before
  it may end this one) must reach the terminal."""
  if jax.process_count() > 1:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  failed = False
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except Exception:
      failed = True
      time.sleep(1.0)  # the callbacks fire shortly after the failure: let them land here
      logging.getLogger("asyncio").addFilter(_drop_unretrieved_futures)
      gc.collect()  # the failed calls' other futures report now, not after our error line
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors="replace").splitlines(keepends=True)
      if failed:
        lines = _without_tracebacks(lines)
      sys.stderr.write("".join(lines))


def _without_tracebacks(lines: list[str]) -> list[str]:
  """Drops every traceback block (its header, indented frames and final exception line) and the
  asyncio noise around them."""
  kept, in_traceback = [], False
  for line in lines:
    if line.startswith("Traceback (most recent call last):"):
      in_traceback = True
      continue
    if in_traceback:
      if line.startswith((" ", "\t")) or not line.strip():
        continue
      in_traceback = False  # the exception's own line ends the block
      continue
    if line.strip() and not any(n in line for n in _NOISE):
      kept.append(line)
  return kept


def _drop_missing_metadata(record) -> bool:
  return not ("orbax" in record.pathname and "does not exist" in record.getMessage())


def _drop_disk_errors(record) -> bool:
  """Orbax's writer threads log a full or read-only disk before `save` raises DiskFullError,
  which says the same with the last complete checkpoint."""
  return not (record.levelno >= logging.ERROR and "orbax" in record.pathname
              and is_disk_error(Exception(record.getMessage())))


@contextlib.contextmanager
def _absl_filtered(drop):
  """Orbax logs through absl's logger: `drop` filters it meanwhile."""
  logger = logging.getLogger("absl")
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


@contextlib.contextmanager
def _quiet_lost_reads():
  """A step that the training run deletes under a reader leaves Orbax's other reads of it to fail
  later: their coroutines report as they are collected, and Orbax warns of missing metadata. The
  reader chooses again, so both are noise here."""
  default_hook = sys.unraisablehook

  def hook(unraisable):
    if not getattr(unraisable.object, "__qualname__", "").startswith("_read_array"):
      default_hook(unraisable)

  sys.unraisablehook = hook
  try:
    with _absl_filtered(_drop_missing_metadata):
      yield
  finally:
    gc.collect()  # the failed reads' coroutines report now, under the hook
    sys.unraisablehook = default_hook


class CheckpointError(RuntimeError):
  """No checkpoint of this workdir can be used; the message says which and why."""


def _val_score(metrics) -> float:
  # BestN keeps the highest score; checkpoints written before the holdout split call it val_loss.
  return -float(metrics.get("select_loss", metrics.get("val_loss")))


def _describe(e: Exception) -> str:
  return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"


def _restore_target(x) -> jax.ShapeDtypeStruct:
  target = ocp.utils.to_shape_dtype_struct(x)
  if target.sharding is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.ShapeDtypeStruct(target.shape, target.dtype, sharding=device)
  return target


class Checkpoints:
  """Saves and restores `(state, meta)` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            # A checkpoint saved mid-epoch (preemption) has no loss; only LatestN keeps it.
            policies.BestN(get_metric_fn=_val_score, n=1, keep_checkpoints_without_metrics=False),
        ]),
        # Synchronous: when save() returns the step is on disk, so a stop right after loses nothing.
        enable_async_checkpointing=False,
    )
    with _quiet_lost_reads():
      for attempt in range(5):
        try:
          self._manager = ocp.CheckpointManager(
              self.directory, options=options, item_names=("state", "meta"))
          break
        except FileNotFoundError:  # a reader's listing lost a step the training run deleted
          if attempt == 4:
            raise

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest selection loss (as saved in its meta); mid-epoch checkpoints,
    which have none, only when nothing else is kept."""
    ranked = self._by_score()
    return ranked[0] if ranked else None

  def _by_score(self) -> list[int]:
    scored = []
    for s in self.steps():
      meta = self.read_meta(s)
      val = meta.get("select_loss", meta.get("val_loss"))
      scored.append((val is None, val if val is not None else 0.0, s))
    return [s for *_, s in sorted(scored)]

  def read(self, like, which: str = "best"):
    """(step, state) for a reader (evaluate, sample, separate, the notebook), which may run beside
    the training run that writes this directory: `which` is "best" or "latest"; None when there
    is no checkpoint. A step the training run deletes meanwhile (it keeps only a few) is passed
    over and the choice made again; a damaged one falls back to the next best (or newest) with a
    warning. Nothing is moved or deleted."""
    with _quiet_lost_reads():
      return self._read(like, which)

  def _read(self, like, which: str):
    for _ in range(5):  # each retry follows a save that deleted a step being read
      try:
        self._manager.reload()
        ranked = self._by_score() if which == "best" else self.steps()[::-1]
      except Exception:  # noqa: BLE001 - a step deleted while it was listed or its meta read
        continue
      failures, vanished = [], False
      for step in ranked:
        try:
          with _quiet_stderr():
            state, _ = self.restore(step, like)
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged files
          if not os.path.isdir(os.path.join(self.directory, str(step))):
            vanished = True
            break
          failures.append((step, _describe(e)))
          continue
        for bad, why in failures:
          print(f"warning: checkpoint step {bad} in {self.directory} is unreadable ({why}); "
                f"using step {step} instead.", file=sys.stderr, flush=True)
        return step, state
      if not vanished:
        if failures:
          raise CheckpointError(
              f"no checkpoint in {self.directory} can be read (steps "
              f"{[s for s, _ in failures]}; first: {failures[0][1]}).")
        return None
    raise CheckpointError(f"the checkpoints in {self.directory} changed during every read; run "
                          "the command again.")

  def save(self, step: int, state, meta: dict, select_loss: float | None) -> None:
    """Writes step `step`; `select_loss` (the loss the best checkpoint is chosen on: holdout,
    else val; None mid-epoch) ranks it for keeping and joins its meta.
    On a full disk: workdir.DiskFullError, with what was written of this step removed."""
    meta = dict(meta, select_loss=None if select_loss is None else float(select_loss))
    try:
      with (_quiet_stderr(), _absl_filtered(_drop_disk_errors),
            disk_writes(os.path.join(self.directory, str(step)))):
        if step in self._manager.all_steps():
          # Saved unscored by a stop during this epoch's evaluation; the scored one replaces it.
          self._manager.delete(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            metrics=None if select_loss is None else {"select_loss": float(select_loss)},
            force=True,
        )
        self._manager.wait_until_finished()
    except DiskFullError:
      self._remove_unfinished()
      raise

  def _remove_unfinished(self) -> None:
    """Deletes the temporary directories of saves that never completed (Orbax renames a step's
    directory into place only once it is whole), to give back their space."""
    for name in os.listdir(self.directory):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, like):
    """Restores step `step` onto the structure, shapes, dtypes and shardings of the pytree
    `like` (arrays or jax.ShapeDtypeStruct); leaves without a sharding go to this process's
    first device, whatever devices the writing run had."""
    abstract = jax.tree.map(_restore_target, like)
    try:
      out = self._manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except ValueError as e:
      if "tree structures do not match" not in str(e):
        raise
      return self._restore_by_path(step, like), self.read_meta(step)
    return out["state"], out["meta"]

  def _restore_by_path(self, step: int, like):
    """Reads step `step` without a target and places each saved array at the leaf of `like`
    with the same path. Checkpoints written before the train state held plain dicts (until
    2026-11) store every parameter as an nnx.Variable, one `value` level deeper; that level is
    dropped. Raises ValueError, naming a path, when the trees differ otherwise."""
    raw = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

    def names(path, drop_value: bool) -> tuple[str, ...]:
      keys = tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                   for k in path)
      return keys[:-1] if drop_value and keys and keys[-1] == "value" else keys

    saved = {names(p, True): x for p, x in jax.tree_util.tree_leaves_with_path(raw)}
    wanted, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, target in wanted:
      x = saved.pop(names(path, False), None)
      if x is None or x.shape != target.shape:
        raise ValueError(f"checkpoint step {step} has no array of shape {target.shape} at "
                         f"{jax.tree_util.keystr(path)}")
      leaves.append(jax.numpy.asarray(x, target.dtype))
    if saved:
      raise ValueError(f"checkpoint step {step} holds arrays the model lacks: {sorted(saved)[:3]}")
    return jax.tree.unflatten(treedef, leaves)

  def restore_latest(self, like, model: dict | None = None):
    """(state, meta) of the newest readable checkpoint, or None when there is none.

    `model`: the config.model the caller will train; a checkpoint of another model is an error,
    not a damaged file.

    A newer checkpoint that cannot be read (truncated, missing file) is skipped with a warning
    naming it and the step used instead; when none can be read this raises CheckpointError rather
    than silently starting again over a finished run.
    """
    steps = self.steps()
    failures = []
    for step in reversed(steps):
      if model is not None:
        try:
          saved = self.read_meta(step).get("model")
        except Exception as e:  # Orbax raises many types for damaged files.
          failures.append((step, _describe(e)))
          continue
        if saved is not None and configs.complete_model(saved) != model:
          raise CheckpointError(
              f"checkpoint step {step} in {self.directory} belongs to another model "
              f"({saved.get('name')} {saved}); use a new --workdir or that model's config.")
      try:
        with _quiet_stderr():
          state, meta = self.restore(step, like)
      except Exception as e:  # Orbax raises many types for damaged files.
        failures.append((step, _describe(e)))
        continue
      if failures:
        self._set_aside([bad for bad, _ in failures])
      for bad, why in failures:
        print(f"warning: checkpoint step {bad} in {self.directory} is unreadable ({why}); "
              f"moved to {self.unreadable_dir}; resuming from step {step} instead.",
              file=sys.stderr, flush=True)
      return state, meta
    if failures:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be read (steps {[s for s, _ in failures]}; "
          f"newest: {failures[0][1]}); move the directory away to start again.")
    return None

  @property
  def unreadable_dir(self) -> str:
    return self.directory + "_unreadable"

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable steps out of the way (kept for inspection, never deleted), so training
    can write those step numbers again."""
    # Every process found the same steps unreadable; process 0 moves them.
    for step in steps if parallel.is_main_process() else ():
      os.makedirs(self.unreadable_dir, exist_ok=True)
      target = os.path.join(self.unreadable_dir, str(step))
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(self.unreadable_dir, f"{step}.{suffix}")
      os.rename(os.path.join(self.directory, str(step)), target)
    parallel.barrier("checkpoints set aside")
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()
