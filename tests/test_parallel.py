"""Data parallel across (simulated) devices and across processes on the loopback address, and
bfloat16 compute."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import (ROOT, checkpoint_steps, comparable, random_images, records,
                            run_unmix, same_final_state, single_step, summary, train_smoke)
from unmix_jax import checkpoint, evaluation, parallel, preemption, runs, steps, train
from unmix_jax.configs import unet

pytestmark = pytest.mark.slow

# The runs compared here: the smoke preset for 4 epochs (16 steps of a global batch of 16).
EPOCHS = 4
ARGS = ["--config=unet:smoke", f"--config.train.epochs={EPOCHS}"]
# A smoke run on two simulated devices (where 'auto' picks the matrix-product convs), with the
# shards of one index batch.
TWO_DEVICE_RUN = """
import json, sys
import numpy as np
from unmix_jax import parallel
from tests.conftest import train_smoke
mesh = parallel.make_mesh()
x = parallel.shard_batch(np.zeros((16, 2), np.int32), mesh)
print(json.dumps([list(s.data.shape) for s in x.addressable_shards]))
train_smoke(sys.argv[1], **{"train.epochs": int(sys.argv[2])})
"""


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory, tfds_data_dir):
  """One process with two (simulated) CPU devices: (workdir, its stdout)."""
  run_dir = str(tmp_path_factory.mktemp("two_devices") / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, "-c", TWO_DEVICE_RUN, run_dir, str(EPOCHS)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return run_dir, out.stdout


def free_port(low: int = 1024, high: int = 65535) -> int:
  for port in np.random.default_rng().integers(low, high, 200):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", int(port)))
        return int(port)
      except OSError:
        continue
  raise RuntimeError("no free port")


def without_jax_launch(env) -> dict:
  return {k: v for k, v in env.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}


def slurm_step(tasks: int) -> list[dict]:
  """What srun gives each task of a step of `tasks` tasks on this machine (the node list is
  127.0.0.1; the job id makes JAX's port for it, 61440 + id % 4096, a free one)."""
  job = free_port(61440) - 61440 + 4096 * 3
  base = dict(without_jax_launch(os.environ), JAX_PLATFORMS="cpu", SLURM_JOB_ID=str(job),
              SLURM_NTASKS=str(tasks), SLURM_STEP_NUM_TASKS=str(tasks),
              SLURM_STEP_NODELIST="127.0.0.1", SLURM_JOB_NODELIST="127.0.0.1",
              SLURM_NODEID="0", SLURM_STEP_TASKS_PER_NODE=str(tasks))
  return [dict(base, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)) for i in range(tasks)]


def indexed_job(pods: int) -> list[dict]:
  """What a Kubernetes indexed Job (as docs/parallel.md's JobSet) gives each pod."""
  base = dict(without_jax_launch(os.environ), JAX_PLATFORMS="cpu",
              JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES=str(pods))
  return [dict(base, JOB_COMPLETION_INDEX=str(i)) for i in range(pods)]


def start_processes(run_dir: str, envs, *args, prefix=()) -> list[subprocess.Popen]:
  """One training process per environment, started one by one so each can be signalled."""
  return [subprocess.Popen([*prefix, sys.executable, "-m", "experiments.train", *ARGS, *args,
                            f"--workdir={run_dir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for env in envs]


def finish(procs, timeout=600) -> list[tuple[str, str]]:
  return [p.communicate(timeout=timeout) for p in procs]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tfds_data_dir):
  """A SLURM step of two tasks on the loopback address (srun's variables, no JAX_* one):
  (workdir, each task's (stdout, stderr))."""
  run_dir = str(tmp_path_factory.mktemp("two_processes") / "run")
  procs = start_processes(run_dir, slurm_step(2))
  outs = finish(procs)
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  return run_dir, outs


def test_two_devices_match_one_device(two_devices, tmp_path):
  two, stdout = two_devices
  assert json.loads(stdout.splitlines()[0]) == [[8, 2], [8, 2]]  # the batch is split
  assert "data parallel over 2 devices" in stdout and "convs as cpu (auto)" in stdout
  one = str(tmp_path / "one")
  train_smoke(one, **{"train.conv_impl": "cpu", "train.epochs": EPOCHS})  # the same convs
  assert [(r["split"], r["step"]) for r in records(one)] == [
      (r["split"], r["step"]) for r in records(two)]
  for a, b in zip(records(one), records(two)):
    for key in ("loss", "mse", "psnr"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"{a['split']} {key}")
  _, _, state_one, _ = runs.restore(one, "latest")
  _, _, state_two, _ = runs.restore(two, "latest")
  for a, b in zip(jax.tree.leaves(state_one.params), jax.tree.leaves(state_two.params)):
    # Summation order, through Adam's normalised steps: 16 steps of a learning rate of 1e-3 move a
    # parameter by up to ~1.6e-2; the two runs differed by up to 1.7e-6 (a bias near zero).
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


def test_two_processes_equal_two_devices_in_one_process(two_processes, two_devices):
  """The same global batch over two processes of one device each and over one process of two
  devices: the same numbers, bit for bit, and files written once."""
  run_dir, outs = two_processes
  assert "data parallel over 2 devices (cpu, 2 process(es))" in outs[0][0]
  assert "model unet:" in outs[0][0] and "model unet:" not in outs[1][0]  # process 0 alone logs
  assert comparable(run_dir) == comparable(two_devices[0])
  assert summary(run_dir)["test"] == summary(two_devices[0])["test"]
  same_final_state(run_dir, two_devices[0])
  assert checkpoint_steps(run_dir) == checkpoint_steps(two_devices[0])
  # Read back by a single process, as evaluate, separate, compare and the notebook do.
  assert (evaluation.score_run(run_dir, test_only=True)["test"] ==
          evaluation.score_run(two_devices[0], test_only=True)["test"])


def wait_for_checkpoint(run_dir: str, step: int, procs) -> None:
  deadline = time.time() + 300
  while not (os.path.isdir(os.path.join(run_dir, "checkpoints")) and any(
      s >= step for s in checkpoint_steps(run_dir))):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, [
        p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.05)


def test_faults_across_processes_and_the_relaunch_ends_as_an_unbroken_run(two_processes,
                                                                          tmp_path):
  """SIGTERM to both processes: both stop at the same step with one checkpoint of it, exit
  143. SIGKILL of process 1 later: process 0 ends within 60 s with one `error:` line. The
  same launch then finishes equal to the unbroken two-process run."""
  run_dir = str(tmp_path / "run")
  procs = start_processes(run_dir, indexed_job(2))
  wait_for_checkpoint(run_dir, 4, procs)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  outs = finish(procs, 120)
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, outs[0][1][-2000:]
  # At a step both reached (a checkpoint of it), or, where the signal came with nothing left
  # to save, at the latest checkpoint.
  stopped = {int(re.search(r"(?:at step|latest checkpoint is step) (\d+)", err).group(1))
             for _, err in outs}
  assert len(stopped) == 1 and max(checkpoint_steps(run_dir)) == stopped.pop()

  procs = start_processes(run_dir, indexed_job(2))
  wait_for_checkpoint(run_dir, max(checkpoint_steps(run_dir)) + 1, procs)  # a new one
  procs[1].kill()
  t0 = time.time()
  _, stderr = procs[0].communicate(timeout=120)
  assert time.time() - t0 < 60 and procs[0].returncode == 4, stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: another process of this run stopped") and "resume" in last
  assert "Traceback" not in stderr
  procs[1].communicate()

  procs = start_processes(run_dir, indexed_job(2))  # the same Job again
  outs = finish(procs)
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  assert comparable(run_dir) == comparable(two_processes[0])
  assert summary(run_dir)["test"] == summary(two_processes[0])["test"]
  same_final_state(run_dir, two_processes[0])


def test_a_run_resumes_with_fewer_or_more_processes(two_processes, unet_run, copy_run,
                                                    capsys):
  one = copy_run(two_processes[0])
  train_smoke(one, **{"train.epochs": EPOCHS + 1})  # two processes' run, then one process
  assert f"resuming from step {EPOCHS * 4}" in capsys.readouterr().out
  two = one + "-two"
  shutil.copytree(unet_run, two)
  launch = run_unmix("launch", "--processes=2", "train", "--config=unet:smoke",
                     "--config.train.epochs=4", f"--workdir={two}")
  assert launch.returncode == 0, launch.stderr[-3000:]
  assert "resuming from step 12" in launch.stdout
  assert [r["step"] for r in records(two) if r["split"] == "test"] == [4, 8, 12, 16]


def test_processes_started_differently_or_without_a_shared_workdir_end_at_once(tmp_path):
  run_dir = str(tmp_path / "run")
  envs = [dict(env, JAX_PLATFORMS="cpu") for env in parallel.local_launch(2)]
  t0 = time.time()
  procs = [start_processes(run_dir, [env], f"--config.train.lr={lr}")[0]
           for env, lr in zip(envs, ("1e-3", "5e-4"))]
  outs = finish(procs, 90)
  assert time.time() - t0 < 90
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 2 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the processes were started with different settings: "
                           "config.train.lr is 0.001 on process 0 and 0.0005"), last
  # Each host's own disk: process 1 sees an empty folder of its own at the same path.
  envs = [dict(env, JAX_PLATFORMS="cpu") for env in parallel.local_launch(2)]
  own_disk = ["unshare", "-rm", "sh", "-c",
              f'mkdir -p {run_dir} && mount -t tmpfs tmpfs {run_dir} && exec "$0" "$@"']
  if subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                    capture_output=True).returncode:
    pytest.skip("this machine does not allow a tmpfs in a user namespace (unshare -rm)")
  procs = [start_processes(run_dir, [envs[0]])[0],
           start_processes(run_dir, [envs[1]], prefix=own_disk)[0]]
  for p, (_, err) in zip(procs, finish(procs, 90)):
    assert p.returncode == 2, err[-2000:]
    assert "is not shared by the processes: process(es) 1 do not see" in err.strip().splitlines(
        )[-1], err[-2000:]


STOP_AGREEMENT = """
import sys, time
import jax
from jax.experimental import multihost_utils
from unmix_jax import parallel

parallel.initialize()
def device_work(*args, **kwargs):
  raise AssertionError("the stop agreement asked the device")
jax.device_put = jax.jit = device_work
multihost_utils.process_allgather = multihost_utils.broadcast_one_to_all = device_work
arrays = len(jax.live_arrays())
agree = parallel.StopAgreement()
for check in range(1, 60):
  signum = agree(15 if (jax.process_index(), check) == (1, 5) else 0)
  if signum:
    break
  time.sleep(0.02 * (1 + jax.process_index()))  # the two run at their own pace
print(check, signum, len(jax.live_arrays()) - arrays)
"""


def test_the_stop_agreement_asks_no_device_and_stops_all_at_one_check(tmp_path):
  procs = [subprocess.Popen([sys.executable, "-c", STOP_AGREEMENT], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for env in indexed_job(2)]
  outs = finish(procs, 120)
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  checks = {out.split()[0] for out, _ in outs}
  assert len(checks) == 1 and int(checks.pop()) >= 5  # the same check on both
  assert all(out.split()[1:] == ["15", "0"] for out, _ in outs)  # SIGTERM's number; no arrays


def fixed_batch_losses(dtype, num_steps=25):
  config = unet.get_config("smoke")
  config.model.features = (16, 32)
  config.train.compute_dtype = dtype
  config.train.lr = 3e-3
  config.train.warmup_steps = 0
  tx = steps.make_optimizer(config, 1000)
  graphdef, state = steps.create_train_state(config, tx)
  step = single_step(graphdef, config, tx)
  idx = jnp.array([[i, (i + 1) % 16] for i in range(4)], jnp.int32)
  losses = []
  for _ in range(num_steps):
    state, parts = step(state, random_images(), idx, jax.random.PRNGKey(0))
    losses.append(float(parts["loss"]))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state)
             if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating))
  return np.array(losses)


def test_bfloat16_trains_and_stays_close_to_float32():
  f32 = fixed_batch_losses("float32")
  bf16 = fixed_batch_losses("bfloat16")
  assert bf16[-1] < 0.8 * bf16[0]
  np.testing.assert_allclose(bf16[:5], f32[:5], rtol=0.03)
  assert abs(bf16[-1] - f32[-1]) / f32[-1] < 0.1


def tiny(preset: str | None, **train_fields):
  """The U-Net of `preset` (the program a GPU trains: its blocks, norms and attention) at an
  eighth of its widths, on a handful of images: two steps of 8 pairs an epoch, scored on 8
  pairs per split."""
  config = unet.get_config(preset)
  config.model.features = tuple(max(4, f // 8) for f in config.model.features)
  d = config.data
  d.num_images, d.num_train_pairs, d.num_val_pairs, d.num_test_images, d.num_test_pairs = (
      32, 16, 8, 16, 8)
  if d.num_holdout_images:
    d.num_holdout_images, d.num_holdout_pairs = 16, 8
  config.train.update(batch_size=8, eval_batch_size=8, warmup_steps=1, epochs=1, **train_fields)
  return config


def test_the_accelerator_program_trains_evaluates_and_resumes(tmp_path, tfds_data_dir, capsys,
                                                             monkeypatch):
  """What a GPU or TPU runs (lax convolutions, `conv_impl='xla'`), the `:gpu` recipe's network
  (residual blocks, attention), at a tiny data size on the CPU: an epoch trains and is scored, a
  SIGTERM after its checkpoint stops the run, the same config resumes from it (the same
  programs, which the compilation cache serves), and the profile of the xla step is written.
  bfloat16: test_bfloat16_trains_and_stays_close_to_float32."""
  run_dir, dtype = str(tmp_path / "run"), "float32"
  config = tiny("gpu", conv_impl="xla", compute_dtype=dtype)
  config.train.epochs = 2
  config.profile.update(start_step=0, num_steps=1)
  save = checkpoint.Checkpoints.save

  def save_then_signal(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(checkpoint.Checkpoints, "save", save_then_signal)
  with pytest.raises(preemption.Preempted, match="at step 2"):
    train.train_and_evaluate(config, run_dir, show_progress=False)
  monkeypatch.undo()
  assert f"compute dtype {dtype}, convs as xla" in capsys.readouterr().out
  assert [(r["step"], np.isfinite(r["loss"])) for r in records(run_dir)
          if r["split"] == "test"] == [(2, True)]
  assert any(f.endswith(".xplane.pb") for _, _, fs in os.walk(os.path.join(run_dir, "profile"))
             for f in fs)
  second = train.train_and_evaluate(config, run_dir, show_progress=False)
  assert "resuming from step 2" in capsys.readouterr().out
  assert second["step"] == 4 and np.isfinite(second["test"]["loss"])
  assert [r["step"] for r in records(run_dir) if r["split"] == "test"] == [2, 4]
