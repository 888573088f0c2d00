"""Shared helpers and trained runs.

Smoke runs train in-process once per test process (`unet_run`, `vae_run`) and tests that only
read them share them; a test that changes a run copies it first (`copy_run`). Entry points are
started as subprocesses only where the process itself is under test (exit codes, signals,
stderr).
"""

import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unmix_jax import configs, logs, steps, train
from unmix_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data", "tensorflow_datasets")

# Many tests compile the same programs (the smoke presets' steps, in this process and in the
# subprocesses it starts): JAX's persistent compilation cache, keyed by the program, serves the
# repeats. Set before anything compiles; the environment carries it to subprocesses.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "unmix_jax-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Compiling dominates the tests (small models, few steps): LLVM's optimisation passes are skipped,
# which compiles several times faster and leaves results as correct, not as fast.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_backend_optimization_level=0").strip()
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def tfds_data_dir() -> str:
  """The prepared CIFAR-10 copy: $TFDS_DATA_DIR, else ../shared/data/tensorflow_datasets (set as
  $TFDS_DATA_DIR for in-process runs and subprocesses alike)."""
  path = os.path.abspath(os.environ.get("TFDS_DATA_DIR") or SHARED_DATA)
  if not os.path.isdir(os.path.join(path, "cifar10")):
    pytest.fail(f"end-to-end tests need a tfds data dir with cifar10; none at {path}. "
                "Set TFDS_DATA_DIR (see README).")
  os.environ["TFDS_DATA_DIR"] = path
  return path


def smoke_config(model: str = "unet", **fields):
  """The smoke preset of `model` with dotted overrides, e.g. smoke_config(**{"train.epochs": 3})."""
  config = configs.get_config(model, "smoke")
  config.update_from_flattened_dict(fields)
  return config


def train_smoke(workdir, model: str = "unet", **fields) -> dict:
  """Trains the smoke preset in this process; returns the summary."""
  return train.train_and_evaluate(smoke_config(model, **fields), str(workdir),
                                  show_progress=False)


def run_module(module: str, *args, env=None, cwd=ROOT, timeout=600):
  """`python -m module args...` as a user runs it; the CompletedProcess."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def run_unmix(*args, env=None, cwd=ROOT, timeout=600):
  """`unmix args...`, the installed console command, as a user runs it."""
  unmix = os.path.join(os.path.dirname(sys.executable), "unmix")
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([unmix, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def assert_one_line_error(result, needle: str, code: int = 2) -> str:
  """The process ended with `code`, its last stderr line is `error: ...` holding `needle`, and
  it printed no traceback. Returns that line."""
  assert result.returncode == code, (result.returncode, result.stderr[-3000:])
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and needle in last, last
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return last


def records(workdir) -> list[dict]:
  """metrics.jsonl of a run on a disk or in a bucket."""
  return logs.read_metrics(workdir)


def comparable(workdir) -> list[dict]:
  """metrics.jsonl without the fields that depend on timing."""
  drop = ("wall_time", "images_per_s")
  return [{k: v for k, v in r.items() if k not in drop} for r in records(workdir)]


def same_final_state(a, b) -> None:
  """The latest checkpoints of two runs hold the same state, bit for bit."""
  from unmix_jax import runs

  _, _, state_a, _ = runs.restore(a, "latest")
  _, _, state_b, _ = runs.restore(b, "latest")
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(x, y)


def read_tensorboard(directory) -> list:
  """Every event record (tensorboardX's `Event` protos) of the event files in `directory`, file
  by file in name order."""
  from tensorboardX.proto.event_pb2 import Event

  events = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    at = 0
    while at < len(data):  # TFRecord: length (8 bytes), its CRC (4), payload, its CRC (4)
      length = int.from_bytes(data[at:at + 8], "little")
      events.append(Event.FromString(data[at + 12:at + 12 + length]))
      at += 16 + length
  return events


def summary(workdir) -> dict:
  return logs.read_summary(workdir)


def checkpoint_steps(workdir) -> list[int]:
  return sorted(int(d.name) for d in (workdir_lib.path(workdir) / "checkpoints").iterdir()
                if d.name.isdigit())


@pytest.fixture(scope="session")
def unet_run(tmp_path_factory, tfds_data_dir) -> str:
  """A finished smoke U-Net run of 3 epochs (4 steps each: checkpoints 4, 8, 12), with a profile
  of steps 3-4 and the train step's HLO. Read it; copy it (`copy_run`) to change it."""
  workdir = tmp_path_factory.mktemp("unet_run") / "run"
  train_smoke(workdir, **{"train.epochs": 3, "profile.start_step": 2, "profile.num_steps": 2,
                          "profile.dump_hlo": True})
  return str(workdir)


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory, tfds_data_dir) -> str:
  """A finished smoke VAE run (2 epochs)."""
  workdir = tmp_path_factory.mktemp("vae_run") / "run"
  train_smoke(workdir, "vae")
  return str(workdir)


@pytest.fixture
def copy_run(tmp_path):
  """copy_run(workdir, keep_steps=None): a copy of a run in tmp_path; with keep_steps, only
  those checkpoints survive (the state of a run stopped after them)."""

  def copy(workdir, keep_steps=None):
    target = str(tmp_path / "copy")
    shutil.copytree(workdir, target)
    if keep_steps is not None:
      for step in checkpoint_steps(target):
        if step not in keep_steps:
          shutil.rmtree(os.path.join(target, "checkpoints", str(step)))
    return target

  return copy


def random_images(n=16, seed=0):
  """Blocky images (4x4 random cells, 8x8 pixels each): structure a small net can learn."""
  cells = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), np.uint8)
  return jnp.asarray(cells.repeat(8, axis=1).repeat(8, axis=2))


def single_step(graphdef, config, tx):
  """The jitted train step with a fresh metric window each call: (state, images, idx, key) ->
  (state, this step's metrics)."""
  step = steps.make_train_step(graphdef, config, tx)
  zeros = None

  def run(state, images, idx, key):
    nonlocal zeros
    if zeros is None:
      zeros = steps.zero_window(graphdef, config, tx, state, images, idx, key)
    return step(state, zeros, images, idx, key)

  return run


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def value_and_grads(f, *args):
  """f(*args) and the gradients of a random projection of it with respect to every argument,
  as one jitted program."""
  shape = jax.eval_shape(f, *args).shape
  probe = jax.random.normal(jax.random.PRNGKey(9), shape)
  loss = lambda *a: jnp.sum(f(*a) * probe)
  return jax.jit(lambda *a: (f(*a), jax.grad(loss, argnums=tuple(range(len(a))))(*a)))(*args)
