"""Checks a config before any data is read or anything is compiled.

Every failure is one ConfigError whose message names the field, the value and what is allowed.
"""

from __future__ import annotations

import json
import os
import socket

import jax

from unmix_jax import backend, configs, data, losses, models, steps
from unmix_jax import workdir as workdir_lib


COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  pass


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(config) -> None:
  t = config.train
  try:
    models.get(config.model.name).validate(config.model)
    data.check_sizes(config.data)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(config.loss in losses.LOSSES,
           f"config.loss={config.loss!r} is not a known loss; choose one of "
           f"{', '.join(losses.LOSSES)}.")
  _require(t.lr > 0, f"config.train.lr={t.lr} must be > 0 (e.g. 1e-3).")
  _require(t.batch_size >= 1, f"config.train.batch_size={t.batch_size} must be >= 1.")
  devices = jax.device_count()
  _require(t.batch_size % devices == 0,
           f"config.train.batch_size={t.batch_size} must divide evenly over the {devices} "
           f"devices; use a multiple of {devices}.")
  _require(t.batch_size <= config.data.num_train_pairs,
           f"config.train.batch_size={t.batch_size} is larger than "
           f"config.data.num_train_pairs={config.data.num_train_pairs}; lower it.")
  _require(t.epochs >= 1, f"config.train.epochs={t.epochs} must be >= 1.")
  _require(t.eval_batch_size >= 1, f"config.train.eval_batch_size={t.eval_batch_size} must be >= 1.")
  _require(t.log_every >= 1, f"config.train.log_every={t.log_every} must be >= 1.")
  spe = steps.steps_per_epoch(config)
  _require(t.steps_per_call >= 1 and spe % t.steps_per_call == 0 and
           t.log_every % t.steps_per_call == 0,
           f"config.train.steps_per_call={t.steps_per_call} must divide the steps of an epoch "
           f"({spe}) and config.train.log_every={t.log_every}, so that every call and every "
           "log line fall alike in each epoch (1: one step per call).")
  _require(t.keep_checkpoints >= 1,
           f"config.train.keep_checkpoints={t.keep_checkpoints} must be >= 1.")
  _require(t.warmup_steps >= 0, f"config.train.warmup_steps={t.warmup_steps} must be >= 0.")
  _require(t.weight_decay >= 0, f"config.train.weight_decay={t.weight_decay} must be >= 0.")
  _require(t.grad_clip > 0, f"config.train.grad_clip={t.grad_clip} must be > 0.")
  _require(t.compute_dtype in COMPUTE_DTYPES,
           f"config.train.compute_dtype={t.compute_dtype!r} must be one of "
           f"{', '.join(COMPUTE_DTYPES)}.")
  try:
    backend.check(t.conv_impl)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(0.0 <= t.ema_decay < 1.0,
           f"config.train.ema_decay={t.ema_decay} must be in [0, 1) (0: no moving average).")
  _require(isinstance(config.eval.flip_average, bool),
           f"config.eval.flip_average={config.eval.flip_average!r} must be True or False.")
  _require(config.profile.num_steps >= 1,
           f"config.profile.num_steps={config.profile.num_steps} must be >= 1.")


def check_workdir(workdir, config) -> None:
  """The workdir must take files (a probe written and removed; a bucket's failure is a
  workdir.StorageError) and, if it holds a run, a run of the same model."""
  workdir = workdir_lib.path(workdir)
  # Its own name: runs, and the processes of one run, may start together.
  probe = workdir / f".write_test.{socket.gethostname()}.{os.getpid()}"
  if workdir_lib.is_url(workdir):  # no folders in a bucket; a missing bucket is not created
    with workdir_lib.writes(workdir):
      probe.write_text("")
      probe.unlink()
  else:
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      probe.write_text("")
      probe.unlink()
    except OSError as e:
      raise ConfigError(f"--workdir={workdir} is not writable ({e.strerror}); choose another "
                        "directory.") from None
  try:
    saved_config = workdir_lib.read_json(workdir / "config.json")
  except ValueError as e:
    raise ConfigError(
        f"--workdir={workdir}: its config.json cannot be read ({e}); restore it, or delete it "
        "to continue the run's checkpoints with this command's config.") from None
  if saved_config is None:
    return
  previous = configs.complete_model(saved_config.get("model", {}), saved_config.get("preset"))
  current = json.loads(config.model.to_json())
  if previous != current:
    diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    raise ConfigError(
        f"--workdir={workdir} holds a run of a different model (config.model fields differ: "
        f"{', '.join(diff)}: {[previous.get(k) for k in diff]} there vs "
        f"{[current.get(k) for k in diff]} now); use a new --workdir or the same model config.")
