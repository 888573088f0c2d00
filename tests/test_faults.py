"""Faults a long run meets: preemption, non-finite losses, damaged checkpoints."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import unet
from tests.conftest import ROOT
from tests.test_end_to_end import records, run_train
from tests.test_train import random_images, single_step
from unmix_jax import runs, train

LONG = ("--config.train.epochs=40",)


def comparable(workdir):
  drop = ("wall_time", "images_per_s")
  return [{k: v for k, v in r.items() if k not in drop} for r in records(workdir)]


def test_sigterm_saves_and_the_resumed_run_equals_an_unbroken_one(tmp_path, tfds_data_dir):
  unbroken = str(tmp_path / "unbroken")
  assert run_train(unbroken, *LONG, data_dir=tfds_data_dir).returncode == 0

  broken = str(tmp_path / "broken")
  env = dict(os.environ, TFDS_DATA_DIR=tfds_data_dir, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/unet.py:smoke",
         f"--workdir={broken}", *LONG]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  ckpt_dir = os.path.join(broken, "checkpoints")
  deadline = time.time() + 300
  while not (os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))):
    assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  assert "Run the same command again to resume" in stderr
  stopped_at = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  assert stopped_at < 160  # it really stopped early (40 epochs x 4 steps)

  resumed = run_train(broken, *LONG, data_dir=tfds_data_dir)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resuming from step {stopped_at}" in resumed.stdout
  assert comparable(broken) == comparable(unbroken)
  with open(os.path.join(unbroken, "summary.json")) as f, \
       open(os.path.join(broken, "summary.json")) as g:
    assert json.load(f)["test"] == json.load(g)["test"]
  _, _, state_a, _ = runs.restore(unbroken, "latest")
  _, _, state_b, _ = runs.restore(broken, "latest")
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)


def test_absurd_learning_rate_stops_with_a_message_and_keeps_the_checkpoint(tmp_path,
                                                                            tfds_data_dir):
  workdir = str(tmp_path / "run")
  assert run_train(workdir, "--config.train.epochs=1", data_dir=tfds_data_dir).returncode == 0
  result = run_train(workdir, "--config.train.epochs=3", "--config.train.lr=1e30",
                     "--config.train.grad_clip=1e30", data_dir=tfds_data_dir)
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert "training loss is nan" in last or "training loss is inf" in last, last
  assert "last good checkpoint: step 4" in last
  _, _, state, step = runs.restore(workdir, "latest")
  assert step == 4
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))


def test_skip_nonfinite_keeps_the_state_and_counts_the_step():
  config = unet.get_config("smoke")
  config.train.skip_nonfinite = True
  tx = train.make_optimizer(config, 10)
  graphdef, state = train.create_train_state(config, tx)
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


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, tfds_data_dir):
  workdir = str(tmp_path / "run")
  assert run_train(workdir, data_dir=tfds_data_dir).returncode == 0  # checkpoints 4 and 8
  # Which OCDBT data file holds the arrays varies (per-process files may be merged away), so
  # truncate every data file of step 8 to half its size.
  state_dir = os.path.join(workdir, "checkpoints", "8", "state")
  data_files = glob.glob(os.path.join(state_dir, "**", "d", "*"), recursive=True)
  assert data_files
  for path in data_files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  result = run_train(workdir, "--config.train.epochs=3", data_dir=tfds_data_dir)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "checkpoint step 8" in result.stderr and "resuming from step 4 instead" in result.stderr
  assert "resuming from step 4" in result.stdout
  # The damaged step was set aside, not deleted, and training wrote a fresh step 8.
  assert os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", "8"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "4", "8"]


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path, tfds_data_dir):
  workdir = str(tmp_path / "run")
  assert run_train(workdir, data_dir=tfds_data_dir).returncode == 0
  for step in ("4", "8"):
    os.remove(os.path.join(workdir, "checkpoints", step, "state", "manifest.ocdbt"))
  result = run_train(workdir, "--config.train.epochs=3", data_dir=tfds_data_dir)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert "no checkpoint" in last and "can be read" in last, last
