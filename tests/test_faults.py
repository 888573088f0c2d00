"""Faults a long run meets: preemption, non-finite losses, damaged checkpoints, a full disk, a
second run on the same workdir."""

import errno
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import (ROOT, assert_one_line_error, checkpoint_steps, comparable, records,
                            random_images, run_module, same_final_state, single_step,
                            summary, train_smoke)
from unmix_jax import (checkpoint, cli, config_checks, logs, preemption, profiling, runs, steps,
                       train, workdir)
from unmix_jax.configs import unet

# The shared run's config (tests/conftest.py), which a broken run must repeat.
UNET_RUN = {"train.epochs": 3, "profile.start_step": 2, "profile.num_steps": 2,
            "profile.dump_hlo": True}


def signal_after_step(monkeypatch, at: int):
  """SIGTERM to this process once step `at` has been dispatched, as a scheduler would send it."""
  finish_step = profiling.StepProfiler.finish_step

  def finish_and_signal(self, step, state):
    finish_step(self, step, state)
    if step == at:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(profiling.StepProfiler, "finish_step", finish_and_signal)


@pytest.mark.slow
def test_a_signal_mid_epoch_saves_and_the_resumed_run_equals_an_unbroken_one(
    unet_run, tmp_path, monkeypatch, capsys):
  broken = str(tmp_path / "broken")
  signal_after_step(monkeypatch, 6)
  with pytest.raises(preemption.Preempted, match="at step 6"):
    train_smoke(broken, **UNET_RUN)
  monkeypatch.undo()
  assert checkpoint_steps(broken) == [4, 6]
  meta = checkpoint.Checkpoints(broken, read_only=True).read_meta(6)
  assert meta["window"]["n"] == 0 and meta["epoch"] == 1.5  # the window closed at step 6
  train_smoke(broken, **UNET_RUN)
  assert "resuming from step 6" in capsys.readouterr().out
  assert comparable(broken) == comparable(unet_run)
  assert summary(broken)["test"] == summary(unet_run)["test"]
  same_final_state(broken, unet_run)


def device_work(seconds: float):
  """A function x -> x + (tiny) that keeps the device busy for about `seconds` (matrix products,
  their number calibrated here): slow work that runs asynchronously, as a real step does (a
  host callback would run inline on the dispatching thread)."""
  def burn(x, n):
    a = jax.lax.fori_loop(0, n, lambda i, a: jnp.tanh(a @ a), jnp.eye(512) * 0.5 + x)
    return x + 1e-30 * jnp.sum(a)

  probe = jax.jit(lambda x: burn(x, 20))
  jax.block_until_ready(probe(jnp.float32(0)))
  fastest = float("inf")  # the other test worker may hold a core during some of the probes
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(probe(jnp.float32(0)))
    fastest = min(fastest, time.perf_counter() - t0)
  n = max(1, int(20 * seconds / fastest))
  return lambda x: burn(x, n)


def slow_steps(monkeypatch, seconds: float) -> None:
  """Each train step takes about `seconds` longer on the device."""
  make, work = steps._step_function, device_work(seconds)

  def slow_function(graphdef, config, tx):
    step = make(graphdef, config, tx)

    def slow_step(state, images, idx, key):
      state, parts = step(state, images, idx, key)
      return state, dict(parts, loss=work(parts["loss"]))  # the next call's window waits

    return slow_step

  monkeypatch.setattr(steps, "_step_function", slow_function)


@pytest.mark.slow
def test_the_host_stays_one_call_ahead_and_a_stop_waits_for_no_backlog(tmp_path, monkeypatch):
  """Steps 0.2 s slower on the device, 20 to an epoch, one log line at its end: no call is
  dispatched while more than one before it is unfinished, and SIGTERM 1.5 s into training
  saves at most two steps past those finished when it came (with the epoch dispatched ahead,
  the stop would wait for all of it)."""
  slow_steps(monkeypatch, 0.2)
  compile_call, outputs, waiting = train._compile_train_call, [], []

  def counting_call(*args):
    call, zeros = compile_call(*args)

    def counting(state, sums, images, idx, key):
      waiting.append(sum(not s.is_ready() for s, _ in outputs[-5:]))
      out = call(state, sums, images, idx, key)
      outputs.append((out[1]["loss"], 1))
      if len(outputs) == 1:
        threading.Timer(1.5, lambda: (at_signal.append(finished()),
                                      os.kill(os.getpid(), signal.SIGTERM))).start()
      return out

    return counting, zeros

  finished = lambda: sum(n for s, n in outputs if s.is_ready())
  at_signal = []
  monkeypatch.setattr(train, "_compile_train_call", counting_call)
  run_dir = str(tmp_path / "run")
  with pytest.raises(preemption.Preempted):
    train_smoke(run_dir, **{"data.num_train_pairs": 320, "train.steps_per_call": 1,
                            "train.log_every": 20})
  assert max(waiting) <= 1, waiting
  saved = checkpoint_steps(run_dir)
  assert len(saved) == 1 and 3 <= at_signal[0] < saved[0] <= at_signal[0] + 2, (saved, at_signal)
  assert sum(n for _, n in outputs) == saved[0]  # nothing dispatched past the checkpoint


@pytest.mark.slow
def test_a_signal_with_nothing_to_save_or_a_second_signal_exits_at_once(monkeypatch):
  """The watcher thread acts while the main thread waits on XLA (a computation of about 4.5 s,
  read with np.asarray, a wait in which Python runs no signal handler): with no finished step
  unsaved and no loop to take it up, the first signal exits after the grace period; else the
  second does, within 2 s."""
  exits = []
  monkeypatch.setattr(preemption.os, "_exit", lambda code: exits.append((code, time.time())))
  monkeypatch.setattr(preemption, "GRACE_S", 0.5)  # well inside the held computation
  busy = jax.jit(device_work(4.5))
  jax.block_until_ready(busy(jnp.float32(0)))  # compiled

  def held_main_thread_while_signalled(*delays) -> list[float]:
    sent = []

    def send():
      for delay in delays:
        time.sleep(delay)
        sent.append(time.time())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send).start()
    np.asarray(busy(jnp.float32(0)))
    done = time.time()
    assert len(sent) == len(delays) and max(sent) < done
    assert exits and exits[-1][1] < done  # the exit came while the main thread still waited
    return sent

  with preemption.StopRequests("/w/checkpoints") as stop:
    stop.saved(8)  # restored, compiling: nothing to save
    sent = held_main_thread_while_signalled(0.5)
    assert [code for code, _ in exits] == [128 + signal.SIGTERM]
    assert exits[0][1] - sent[0] < preemption.GRACE_S + 1.0
  exits.clear()
  with preemption.StopRequests("/w/checkpoints") as stop:
    stop.unsaved = True  # a step in flight: the first signal waits for it, the second does not
    sent = held_main_thread_while_signalled(0.3, 0.5)
    assert [code for code, _ in exits] == [128 + signal.SIGTERM]
    assert exits[0][1] - sent[1] < 2.0


@pytest.mark.slow
def test_a_signal_during_evaluation_saves_unscored_and_the_resume_evaluates_first(
    unet_run, tmp_path, monkeypatch, capsys):
  broken = str(tmp_path / "broken")
  evaluate = train._evaluate

  def signalled(eval_step, state, *args, **kwargs):
    if int(state.step) == 8:
      os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(eval_step, state, *args, **kwargs)

  monkeypatch.setattr(train, "_evaluate", signalled)
  with pytest.raises(preemption.Preempted, match="at step 8"):
    train_smoke(broken, **UNET_RUN)
  monkeypatch.undo()
  assert checkpoint_steps(broken) == [4, 8]
  assert checkpoint.Checkpoints(broken, read_only=True).read_meta(8)["select_loss"] is None
  assert max(r["step"] for r in records(broken) if r["split"] == "test") == 4
  train_smoke(broken, **UNET_RUN)
  assert "resuming from step 8 (epoch 2, its evaluation first)" in capsys.readouterr().out
  assert comparable(broken) == comparable(unet_run)
  assert summary(broken)["test"] == summary(unet_run)["test"]
  same_final_state(broken, unet_run)


@pytest.mark.slow
def test_a_half_full_metric_window_is_carried_over(tmp_path, monkeypatch):
  """Stopped at step 5 with log lines every 2 steps: step 5's metrics travel in the checkpoint
  and the resumed run logs step 6 as an unbroken run does."""
  fields = {"train.epochs": 2, "train.steps_per_call": 1}
  unbroken, broken = str(tmp_path / "unbroken"), str(tmp_path / "broken")
  train_smoke(unbroken, **fields)
  signal_after_step(monkeypatch, 5)
  with pytest.raises(preemption.Preempted):
    train_smoke(broken, **fields)
  monkeypatch.undo()
  assert checkpoint.Checkpoints(broken, read_only=True).read_meta(5)["window"]["n"] == 1
  train_smoke(broken, **fields)
  assert comparable(broken) == comparable(unbroken)


def test_a_non_finite_loss_stops_in_one_line_and_keeps_the_last_good_checkpoint(
    unet_run, copy_run, capsys):
  run_dir = copy_run(unet_run)
  with pytest.raises(SystemExit) as e, cli.one_line_errors():  # as the command runs it
    train_smoke(run_dir, **{"train.epochs": 5, "train.lr": 1e30, "train.grad_clip": 1e30})
  message = capsys.readouterr().err.strip().splitlines()[-1]
  assert e.value.code == 2 and message.startswith("error: training loss is ")
  assert "training loss is nan" in message or "training loss is inf" in message
  assert "last good checkpoint: step 12" in message and "config.train.skip_nonfinite" in message
  _, _, state, step = runs.restore(run_dir, "latest")
  assert step == 12
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))


def test_skip_nonfinite_keeps_the_state_and_counts_the_step():
  config = unet.get_config("smoke")
  config.train.skip_nonfinite = True
  tx = steps.make_optimizer(config, 10)
  graphdef, state = steps.create_train_state(config, tx)
  step = single_step(graphdef, config, tx)
  idx = jnp.array([[0, 1], [2, 3]], jnp.int32)
  state, parts = step(state, random_images(), idx, jax.random.PRNGKey(0))
  assert float(parts["skipped"]) == 0.0
  # Poison one weight: the loss becomes NaN and the update must be dropped.
  leaves, treedef = jax.tree.flatten(state.params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
  poisoned = state.replace(params=jax.tree.unflatten(treedef, leaves))
  before = [np.asarray(x) for x in jax.tree.leaves(poisoned)]
  after, parts = step(poisoned, random_images(), idx, jax.random.PRNGKey(0))
  assert float(parts["skipped"]) == 1.0 and float(parts["loss"]) == 0.0
  assert int(after.step) == 2
  for a, b in zip(jax.tree.leaves(after.replace(step=poisoned.step)), before):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(unet_run, copy_run, capsys):
  run_dir = copy_run(unet_run)
  # Which OCDBT data file holds the arrays varies, so truncate every data file of step 12.
  data_files = glob.glob(os.path.join(run_dir, "checkpoints", "12", "state", "**", "d", "*"),
                         recursive=True)
  assert data_files
  for path in data_files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  train_smoke(run_dir, **{"train.epochs": 4})
  out, err = capsys.readouterr()
  assert "checkpoint step 12" in err and "resuming from step 8 instead" in err
  assert "resuming from step 8" in out
  # The damaged step was set aside, not deleted, and training wrote a fresh step 12.
  assert os.path.isdir(os.path.join(run_dir, "checkpoints_unreadable", "12"))
  assert {8, 12, 16} <= set(checkpoint_steps(run_dir))


@pytest.mark.slow
def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(unet_run, copy_run):
  run_dir = copy_run(unet_run)
  for step in checkpoint_steps(run_dir):
    os.remove(os.path.join(run_dir, "checkpoints", str(step), "state", "manifest.ocdbt"))
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint .* can be read"):
    train_smoke(run_dir, **{"train.epochs": 4})
  result = run_module("experiments.train", "--config=configs/unet.py:smoke",
                      f"--workdir={run_dir}", "--config.train.epochs=4")
  assert_one_line_error(result, "can be read")


# A second run on the same workdir.

def test_a_workdir_lock_refuses_a_second_holder_and_is_taken_over_when_stale(tmp_path, capsys):
  with workdir.Lock(str(tmp_path)):
    with open(tmp_path / workdir.LOCK_FILE) as f:
      assert json.load(f)["pid"] == os.getpid()
    with pytest.raises(workdir.LockedError, match=f"pid {os.getpid()}"):
      workdir.Lock(str(tmp_path)).__enter__()
  # Released (emptied): the next holder takes it silently.
  with workdir.Lock(str(tmp_path)):
    pass
  assert "warning" not in capsys.readouterr().err
  # A holder that died without releasing: its record stays, its OS lock is gone.
  with open(tmp_path / workdir.LOCK_FILE, "w") as f:
    json.dump({"host": "elsewhere", "pid": 2 ** 22 + 1, "started": "2026-01-01T00:00:00"}, f)
  with workdir.Lock(str(tmp_path)):
    pass
  assert "taking over" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_run_on_a_live_workdir_is_refused_and_the_first_finishes_cleanly(tmp_path):
  run_dir = str(tmp_path / "run")
  args = ["-m", "experiments.train", "--config=unet:smoke", f"--workdir={run_dir}",
          "--config.train.epochs=6"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  first = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  lock = os.path.join(run_dir, workdir.LOCK_FILE)
  deadline = time.time() + 300
  while not (os.path.exists(lock) and os.path.getsize(lock) > 0):
    assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
    time.sleep(0.05)
  second = run_module(*args[1:])
  _, stderr = first.communicate(timeout=600)
  assert first.returncode == 0, stderr[-2000:]
  assert_one_line_error(second, f"pid {first.pid}")
  keys = [(r["split"], r["step"]) for r in records(run_dir)]
  assert len(keys) == len(set(keys)) and max(k[1] for k in keys) == 24
  with workdir.Lock(run_dir):  # released
    pass


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, tfds_data_dir, capsys):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  with open(run_dir / workdir.LOCK_FILE, "w") as f:
    json.dump({"host": "elsewhere", "pid": 2 ** 22 + 1, "started": "2026-01-01T00:00:00"}, f)
  train_smoke(run_dir, **{"train.epochs": 1})
  assert "taking over" in capsys.readouterr().err
  assert checkpoint_steps(run_dir) == [4]


# Readers beside a training run.

def test_a_reader_passes_over_a_step_the_training_run_deletes_meanwhile(
    unet_run, copy_run, monkeypatch):
  run_dir = copy_run(unet_run)
  _, _, _, best = runs.restore(run_dir, "best")
  restore, deleted = checkpoint.Checkpoints.restore_step, []

  def deleted_first(self, step, like):
    if not deleted:  # the training run's save removes the chosen step before it is read
      deleted.append(step)
      shutil.rmtree(os.path.join(self.directory, str(step)))
    return restore(self, step, like)

  monkeypatch.setattr(checkpoint.Checkpoints, "restore_step", deleted_first)
  _, _, state, step = runs.restore(run_dir, "best")
  monkeypatch.undo()
  assert deleted == [best] and step != best and step in checkpoint_steps(run_dir)
  _, _, expected, _ = runs.restore(run_dir, "best")
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(x, y)


def test_a_reader_falls_back_from_a_damaged_step_and_moves_nothing(unet_run, copy_run, capsys):
  run_dir = copy_run(unet_run)
  for path in glob.glob(os.path.join(run_dir, "checkpoints", "12", "state", "**", "d", "*"),
                        recursive=True):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  _, _, _, step = runs.restore(run_dir, "latest")
  assert step == 8
  assert "checkpoint step 12" in capsys.readouterr().err
  assert checkpoint_steps(run_dir) == [4, 8, 12]  # left where the training run will find it
  assert not os.path.exists(os.path.join(run_dir, "checkpoints_unreadable"))


# A full disk.

def _full_disk_at_save(monkeypatch, at_step: int):
  """Checkpoint saves of `at_step` fail as TensorStore does on a full disk, after leaving a
  partly written temporary directory."""
  save = checkpoint.Checkpoints.save

  def failing_save(self, step, *args, **kwargs):
    if step != at_step:
      return save(self, step, *args, **kwargs)
    os.makedirs(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp-1", "state"))

    def write(*a, **k):
      raise ValueError("RESOURCE_EXHAUSTED: Error writing local file "
                       f"\"{self.directory}/{step}/state/d/x\": No space left on device")

    monkeypatch.setattr(self._manager, "save", write)
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpoints, "save", failing_save)


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resumes_exactly(
    unet_run, tmp_path, monkeypatch):
  run_dir = str(tmp_path / "run")
  _full_disk_at_save(monkeypatch, at_step=8)
  with pytest.raises(workdir.StorageError) as e:
    train_smoke(run_dir, **UNET_RUN)
  monkeypatch.undo()
  message = str(e.value)
  assert message.startswith("no space left on device writing ")
  assert f"the last complete checkpoint is step 4 in {run_dir}" in message
  assert "free space and run the same command to resume" in message
  assert checkpoint_steps(run_dir) == [4]  # the half-written step is not taken for one
  train_smoke(run_dir, **UNET_RUN)
  assert comparable(run_dir) == comparable(unet_run)
  same_final_state(run_dir, unet_run)
  assert not [d for d in os.listdir(os.path.join(run_dir, "checkpoints")) if "tmp" in d]


class _FullFile:
  """A file whose writes fail with ENOSPC."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    raise OSError(errno.ENOSPC, "No space left on device")

  def __getattr__(self, name):
    return getattr(self._f, name)


@pytest.mark.slow
def test_a_full_disk_at_a_log_write_names_the_file_and_resumes_exactly(
    unet_run, tmp_path, monkeypatch):
  run_dir = str(tmp_path / "run")
  write = logs.MetricWriter.write

  def failing_write(self, step, split, metrics, epoch=None):
    if step == 6:
      self._file = _FullFile(self._file)
    return write(self, step, split, metrics, epoch)

  monkeypatch.setattr(logs.MetricWriter, "write", failing_write)
  with pytest.raises(workdir.StorageError) as e:
    train_smoke(run_dir, **UNET_RUN)
  monkeypatch.undo()
  assert str(e.value).startswith(
      f"no space left on device writing {os.path.join(run_dir, 'metrics.jsonl')}; the last "
      f"complete checkpoint is step 4 in {os.path.join(run_dir, 'checkpoints')}")
  train_smoke(run_dir, **UNET_RUN)
  assert comparable(run_dir) == comparable(unet_run)


def test_a_file_cut_short_by_a_full_disk_leaves_the_previous_one(tmp_path, monkeypatch):
  import builtins

  path = str(tmp_path / "summary.json")
  workdir.write_json(path, {"a": 1})
  real_open = builtins.open

  def half_then_full(name, mode="r", *a, **k):
    f = real_open(name, mode, *a, **k)
    if "w" not in mode:
      return f

    class Half:
      def __enter__(self):
        return self

      def __exit__(self, *exc):
        f.close()

      def write(self, data):
        f.write(data[:len(data) // 2])
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    return Half()

  monkeypatch.setattr(builtins, "open", half_then_full)
  with pytest.raises(workdir.StorageError, match="no space left on device writing .*summary"):
    workdir.write_json(path, {"a": 2})
  monkeypatch.undo()
  with open(path) as f:
    assert json.load(f) == {"a": 1}
  assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left behind


def test_a_metrics_line_cut_short_is_left_out_and_dropped_on_resume(tmp_path):
  writer = logs.MetricWriter(str(tmp_path), tensorboard=False)
  writer.write(2, "train", {"loss": 0.5})
  writer.close()
  with open(tmp_path / logs.METRICS_FILE, "a") as f:
    f.write('{"step": 4, "epoch": 1.0, "spl')  # the disk filled mid-record
  assert [r["step"] for r in logs.read_metrics(str(tmp_path))] == [2]
  logs.MetricWriter(str(tmp_path), resume_step=2, tensorboard=False).close()
  assert [r["step"] for r in records(tmp_path)] == [2]


def test_an_unreadable_config_json_is_one_line_naming_it(unet_run, copy_run):
  run_dir = copy_run(unet_run)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    f.write('{"model": ')
  with pytest.raises(config_checks.ConfigError, match="config.json cannot be read"):
    config_checks.check_workdir(run_dir, unet.get_config("smoke"))


def _can_mount_a_small_filesystem() -> bool:
  try:
    return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


@pytest.mark.slow
def test_a_real_full_filesystem_is_one_line_and_the_run_resumes_exactly(unet_run, tmp_path):
  """The shared run's training (without its profile, whose size depends on the programs a
  process compiled) on an 800 KB tmpfs, in a mount namespace of its own: here two checkpoints
  and the pictures fit and the third checkpoint fills it; then the same command, with space
  freed, ends as the shared run."""
  if not _can_mount_a_small_filesystem():
    pytest.skip("this machine does not allow a tmpfs in a user namespace (unshare -rm)")
  disk, out = tmp_path / "disk", tmp_path / "out"
  disk.mkdir()
  out.mkdir()
  flags = " ".join(["--config=configs/unet.py:smoke", f"--workdir={disk}/run",
                    f"--config.train.epochs={UNET_RUN['train.epochs']}"])
  script = (f"mount -t tmpfs -o size=800k tmpfs {disk} || exit 99\n"
            f"{sys.executable} -m experiments.train {flags} 2> {out}/full.err\n"
            f"echo $? > {out}/full.rc\n"
            f"ls {disk}/run/checkpoints > {out}/checkpoints\n"
            f"mount -o remount,size=64m {disk}\n"
            f"{sys.executable} -m experiments.train {flags} 2> {out}/resumed.err\n"
            f"echo $? > {out}/resumed.rc\n"
            f"cp {disk}/run/metrics.jsonl {out}/\n"
            f"ls {disk}/run/checkpoints > {out}/checkpoints_after\n")
  subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, timeout=900,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
  full = subprocess.CompletedProcess([], int((out / "full.rc").read_text()), "",
                                     (out / "full.err").read_text())
  last = assert_one_line_error(full, "no space left on device writing ", code=3)
  messages = [line for line in full.stderr.splitlines()
              if line.strip() and "step/s" not in line and "s/step" not in line]  # not tqdm's
  assert messages == [last], messages  # nothing else, not even Orbax's thread errors
  kept = [name for name in (out / "checkpoints").read_text().split() if name.isdigit()]
  named = (f"the last complete checkpoint is step {max(kept, key=int)}" if kept
           else "no checkpoint was completed yet")
  assert named in last, (named, last)
  assert (out / "resumed.rc").read_text().strip() == "0", (out / "resumed.err").read_text()[-3000:]
  assert comparable(out) == comparable(unet_run)
  after = (out / "checkpoints_after").read_text().split()
  assert all(name.isdigit() for name in after), after  # what the full disk cut short is gone


def test_other_disk_errors_are_one_line_and_orbax_thread_logs_are_left_to_it(monkeypatch):
  said = []
  monkeypatch.setattr(cli, "fail", lambda message, code=cli.BAD_INPUT: said.append((message, code)))
  with cli.one_line_errors():  # e.g. a comparison's report on a full disk
    raise OSError(errno.ENOSPC, "No space left on device", "/r/report.md")
  assert said == [("no space left on device writing /r/report.md; free space and run the same "
                   "command again", cli.STORAGE)]
  absl_logger = logging.getLogger("absl")

  def record(path, message):
    return absl_logger.makeRecord("absl", logging.ERROR, path, 1, message, (), None)

  orbax = "/site-packages/orbax/checkpoint/_src/futures/future.py"
  full = record(orbax, "RESOURCE_EXHAUSTED: No space left on device")
  with checkpoint._without_orbax_noise():  # as during a save
    assert not absl_logger.filter(full)
    assert absl_logger.filter(record(orbax, "some other failure"))
    assert absl_logger.filter(record("/x/train.py", "No space left on device"))
  assert absl_logger.filter(full)  # outside a save, Orbax's errors reach the log


def test_config_and_summary_writes_on_a_read_only_disk_name_the_file(tmp_path, monkeypatch):
  import builtins

  real_open = builtins.open

  def read_only(path, mode="r", *a, **k):
    if "w" in mode:
      raise OSError(errno.EROFS, "Read-only file system", path)
    return real_open(path, mode, *a, **k)

  monkeypatch.setattr(builtins, "open", read_only)
  with pytest.raises(workdir.StorageError, match="read-only file system writing .*x.json") as e:
    workdir.write_json(str(tmp_path / "x.json"), {"a": 1})
  assert str(e.value).endswith("; make it writable and run the same command again")
  e.value.resumable(None, "ckpts")  # as the training loop adds
  assert str(e.value).endswith("; no checkpoint was completed yet; make it writable and run the "
                               "same command to resume")
