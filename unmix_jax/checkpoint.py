"""Orbax checkpoints of the train state: the only module that touches Orbax.

Layout: `workdir/checkpoints/<step>/{state,meta}` (a local folder or a bucket: Orbax is handed
the path itself). `state` is the TrainState pytree; `meta` is JSON (model config, epoch) so a
workdir can be checked against a config before restoring. Orbax keeps the last `keep`
checkpoints and the best one, ranks them (`best_step`: the lowest loss they were chosen on,
holdout where the run has that split, else val), removes what unfinished saves left behind, and
saves in the background: the loop waits only for the copy off the devices.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from unmix_jax import configs, parallel
from unmix_jax import workdir as workdir_lib


class CheckpointError(RuntimeError):
  """No checkpoint of this workdir can be used; the message says which and why."""


def _select_loss(metrics) -> float:
  return float(metrics["select_loss"])


def _orbax_noise(record) -> bool:
  """False for what Orbax logs that a one-line error says better: an error it raises again
  (with its traceback) or a disk or bucket failure of a save (StorageError or ProcessLost
  follows, naming the last complete checkpoint), and the missing metadata of a step the
  training run deleted under a reader (the reader chooses again)."""
  if "orbax" not in record.pathname:
    return True
  message = record.getMessage()
  return not (record.levelno >= logging.ERROR and (
      record.exc_info or workdir_lib.storage_reason(Exception(message)))
      or "does not exist" in message)


def _failed_read_noise(report_unraisable):
  """After an Orbax read fails, TensorStore completes the read's other futures into Orbax's
  event loop, closed by then: Python reports each as an unraisable "Event loop is closed"
  RuntimeError with its traceback, and asyncio logs each future whose error nobody retrieved
  (67 reports for a workdir of two damaged smoke checkpoints, some after the command's last
  line). Those are dropped; any other report passes."""
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)):
      report_unraisable(unraisable)

  hook.drops_failed_read_noise = True
  logging.getLogger("asyncio").addFilter(
      lambda record: not str(record.msg).startswith("Future exception was never retrieved"))
  return hook


@contextlib.contextmanager
def _without_orbax_noise():
  """Orbax logs through absl's logger: `_orbax_noise` filters it meanwhile. A failed read
  reports later still: `_failed_read_noise` stays for the rest of the process."""
  if not getattr(sys.unraisablehook, "drops_failed_read_noise", False):
    sys.unraisablehook = _failed_read_noise(sys.unraisablehook)
  logger = logging.getLogger("absl")
  logger.addFilter(_orbax_noise)
  try:
    yield
  finally:
    logger.removeFilter(_orbax_noise)


def _describe(e: Exception) -> str:
  return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"


def _restore_target(x) -> jax.ShapeDtypeStruct:
  """A leaf given by shape alone goes to this process's first device."""
  target = ocp.utils.to_shape_dtype_struct(x)
  if target.sharding is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.ShapeDtypeStruct(target.shape, target.dtype, sharding=device)
  return target


class Checkpoints:
  """Saves and restores `(state, meta)` under `workdir/checkpoints`; `read_only` for readers
  (evaluate, separate, the notebook), which may run beside the training run."""

  def __init__(self, workdir, keep: int = 3, read_only: bool = False):
    self.directory = workdir_lib.path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            # A checkpoint saved mid-epoch (a stop) has no loss; only LatestN keeps it.
            policies.BestN(get_metric_fn=_select_loss, reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
        best_fn=_select_loss, best_mode="min", read_only=read_only,
        cleanup_tmp_directories=not read_only, create=not read_only)
    with _without_orbax_noise(), workdir_lib.writes(self.directory):
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "meta"))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint (a save still being written is not one)."""
    with contextlib.suppress(Exception):
      self._manager.check_for_errors()
    return max(self._done(), default=None)

  def _done(self) -> list[int]:
    steps = self.steps()
    if self._manager.is_saving_in_progress() and steps:
      steps = steps[:-1]
    return steps

  def best_step(self) -> int | None:
    """The kept step with the lowest loss it was chosen on; a mid-epoch checkpoint, which has
    none, only when nothing else is kept."""
    return self._manager.best_step() or self._manager.latest_step()

  def save(self, step: int, state, meta: dict, select_loss: float | None) -> None:
    """Starts writing step `step` in the background (`wait` for it); `select_loss` (holdout,
    else val; None mid-epoch) ranks it. A storage failure, here or in the background, raises
    workdir.StorageError from this call or the next `wait`."""
    meta = dict(meta, select_loss=None if select_loss is None else float(select_loss))
    with _without_orbax_noise(), workdir_lib.writes(self.directory / str(step)):
      if step in self._manager.all_steps():
        # Saved unscored by a stop during this epoch's evaluation; the scored one replaces it.
        self._manager.wait_until_finished()
        self._manager.delete(step)
      self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)),
          metrics=None if select_loss is None else {"select_loss": float(select_loss)},
          force=True)

  def wait(self) -> None:
    """Until the save in the background is complete (StorageError where it failed)."""
    with _without_orbax_noise(), workdir_lib.writes(self.directory):
      self._manager.wait_until_finished()

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_step(self, step: int, like):
    """(state, meta) of step `step`, onto the structure, shapes, dtypes and shardings of the
    pytree `like` (arrays or jax.ShapeDtypeStruct)."""
    abstract = jax.tree.map(_restore_target, like)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def ranked(self, which: str = "latest") -> list[int]:
    """The kept steps, the one to read first first: the best or the newest, then newest first."""
    self._manager.reload()
    best = self.best_step() if which == "best" else None
    return sorted(self.steps(), key=lambda s: (s != best, -s))

  def restore(self, like, which: str = "latest", model: dict | None = None,
              set_aside: bool = False, ranked=None):
    """(step, state, meta) of the best or latest readable checkpoint, or None when there is
    none. A damaged checkpoint is passed over for the next best (or newest) with a warning, and
    where `set_aside` (the training run) moved to `checkpoints_unreadable/` so the step can be
    written again; a step that the training run deletes under a reader is passed over and the
    choice made again. `model`: the config.model the caller will train; a checkpoint of another
    model is an error, not a damaged file. `ranked`: the steps in the order to try (process 0's,
    `ranked()`, with several processes). CheckpointError when none can be read."""
    with _without_orbax_noise():
      for _ in range(5):  # each retry follows a save that deleted a step being read
        ranked = self.ranked(which) if ranked is None else ranked
        failures = []
        for step in ranked:
          try:
            self._check_model(step, model)
            state, meta = self.restore_step(step, like)
          except CheckpointError:
            raise
          except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged files
            if not (self.directory / str(step)).exists():
              ranked = None
              break  # deleted by the training run meanwhile: choose again
            failures.append((step, _describe(e)))
            continue
          self._passed_over(failures, step, set_aside)
          return step, state, meta
        else:
          if failures:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be read (steps "
                f"{[s for s, _ in failures]}; first: {failures[0][1]}); move the directory away "
                "to start again.")
          return None
    raise CheckpointError(f"the checkpoints in {self.directory} changed during every read; run "
                          "the command again.")

  def _check_model(self, step: int, model: dict | None) -> None:
    if model is None:
      return
    saved = self.read_meta(step).get("model")
    if saved is not None and configs.complete_model(saved) != model:
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} belongs to another model "
          f"({saved.get('name')} {saved}); use a new --workdir or that model's config.")

  def _passed_over(self, failures, used: int, set_aside: bool) -> None:
    moved = ""
    if failures and set_aside:
      aside = self.directory.parent / "checkpoints_unreadable"
      if parallel.is_main_process():  # every process found the same steps unreadable
        for step, _ in failures:
          aside.mkdir(parents=True, exist_ok=True)
          target, suffix = aside / str(step), 0
          while target.exists():
            suffix += 1
            target = aside / f"{step}.{suffix}"
          (self.directory / str(step)).rename(target)
      parallel.barrier("checkpoints set aside")
      self._manager.reload()
      moved = f"moved to {aside}; "
    for step, why in failures:
      print(f"warning: checkpoint step {step} in {self.directory} is unreadable ({why}); "
            f"{moved}{'resuming from' if set_aside else 'using'} step {used} instead.",
            file=sys.stderr, flush=True)

  def close(self) -> None:
    """Waits for a save in the background, then stops Orbax's threads."""
    with _without_orbax_noise(), workdir_lib.writes(self.directory):
      self._manager.close()
