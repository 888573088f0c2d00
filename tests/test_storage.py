"""Runs in a bucket: a workdir `gs://...` end to end against a Google Cloud Storage emulator on
127.0.0.1 (tests/gcs_emulator.py), reached through STORAGE_EMULATOR_HOST alone."""

import os
import signal
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (ROOT, assert_one_line_error, checkpoint_steps, comparable,
                            run_unmix, same_final_state, summary, train_smoke)
from unmix_jax import logs, preemption, profiling, workdir

pytestmark = pytest.mark.slow

UNET_RUN = {"train.epochs": 3, "profile.start_step": 2, "profile.num_steps": 2,
            "profile.dump_hlo": True}  # the shared run's config (tests/conftest.py)


@pytest.fixture(scope="session")
def bucket():
  """gs://unmix on an emulator this fixture starts on 127.0.0.1 and stops; STORAGE_EMULATOR_HOST
  names it to this process and the ones it starts."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = subprocess.Popen([sys.executable, "-m", "tests.gcs_emulator", str(port), "unmix"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
  assert server.stdout.readline().strip() == "ready"
  os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
  yield "gs://unmix"
  del os.environ["STORAGE_EMULATOR_HOST"]
  server.terminate()
  server.wait(timeout=30)


@pytest.fixture(scope="module")
def bucket_run(bucket, unet_run):
  """The shared run's config trained into the bucket, stopped by SIGTERM after step 6 and
  resumed by the same call: its URL."""
  run = f"{bucket}/runs/{uuid.uuid4().hex[:8]}"
  finish_step = profiling.StepProfiler.finish_step

  def finish_and_signal(self, step, state):
    finish_step(self, step, state)
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)

  profiling.StepProfiler.finish_step = finish_and_signal
  try:
    with pytest.raises(preemption.Preempted, match="at step 6"):
      train_smoke(run, **UNET_RUN)
  finally:
    profiling.StepProfiler.finish_step = finish_step
  assert checkpoint_steps(run) == [4, 6]
  train_smoke(run, **UNET_RUN)
  return run


def test_a_bucket_run_stops_resumes_and_equals_the_same_run_on_a_disk(bucket_run, unet_run):
  assert comparable(bucket_run) == comparable(unet_run)
  assert summary(bucket_run)["test"] == summary(unet_run)["test"]
  same_final_state(bucket_run, unet_run)
  files = {p.name for p in workdir.path(bucket_run).iterdir()}
  assert {"config.json", "metrics.jsonl", "summary.json", "reconstructions.png",
          "loss_curves.png", "tb", "profile", "checkpoints"} <= files
  assert logs.read_bytes(bucket_run, "reconstructions.png").startswith(b"\x89PNG")
  assert not os.path.exists(os.path.join(ROOT, "gs:")) and not os.path.exists("gs:")


def test_the_commands_read_write_and_refuse_a_bucket_workdir(bucket, bucket_run, tmp_path):
  pictures = []
  for k in range(2):
    pictures.append(str(tmp_path / f"p{k}.png"))
    Image.fromarray(np.random.default_rng(k).integers(0, 256, (40, 40, 3), np.uint8)).save(
        pictures[-1])
  exported = f"{bucket}/exported/{uuid.uuid4().hex[:8]}"
  export = run_unmix("export", f"--workdir={bucket_run}", f"--out={exported}", cwd=str(tmp_path))
  assert export.returncode == 0, export.stderr[-2000:]
  assert logs.read_eval(bucket_run)["test"]["num_pairs"] == 16  # scored first, as evaluate does
  separated = run_unmix("separate", f"--workdir={exported}", *pictures, cwd=str(tmp_path))
  assert separated.returncode == 0, separated.stderr[-2000:]
  assert "model: the exported unet (:smoke" in separated.stdout
  assert (workdir.path(exported) / "separations" / "p0_p1_panel.png").exists()
  with workdir.Lock(bucket_run):  # a live run holds it: a second one is refused
    refused = run_unmix("train", "--config=unet:smoke", f"--workdir={bucket_run}",
                        cwd=str(tmp_path))
  assert_one_line_error(refused, f"is in use by the run of pid {os.getpid()}")
  missing = run_unmix("train", "--config=unet:smoke", "--workdir=gs://no-such-bucket/run",
                      cwd=str(tmp_path))
  assert_one_line_error(missing, "the bucket does not exist writing gs://no-such-bucket/run; "
                        "create it", code=3)
  assert "gs:" not in os.listdir(tmp_path)


def test_a_dead_runs_bucket_lock_is_taken_over_and_a_live_one_kept(bucket, capsys,
                                                                   monkeypatch):
  run = f"{bucket}/runs/{uuid.uuid4().hex[:8]}"
  lock = workdir.Lock(run).__enter__()
  lock._bucket[2].set()  # its run stops renewing it, as a killed one does
  with pytest.raises(workdir.LockedError, match=f"pid {os.getpid()}"):
    workdir.Lock(run).__enter__()
  monkeypatch.setattr(workdir, "STALE_S", 0.0)
  taken = workdir.Lock(run).__enter__()
  assert "warning: taking over" in capsys.readouterr().err
  taken.release()
  with workdir.Lock(run):  # released: the next run takes it silently
    pass
  assert "warning" not in capsys.readouterr().err


def test_two_processes_train_one_run_in_a_bucket(bucket, two_processes_of):
  run = f"{bucket}/runs/{uuid.uuid4().hex[:8]}"
  procs = two_processes_of(run)
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  assert checkpoint_steps(run) == [4, 8] and summary(run)["step"] == 8


@pytest.fixture
def two_processes_of():
  from unmix_jax import parallel

  def start(run):
    return [subprocess.Popen([sys.executable, "-m", "experiments.train", "--config=unet:smoke",
                              f"--workdir={run}"], cwd=ROOT, env=dict(env, JAX_PLATFORMS="cpu"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for env in parallel.local_launch(2)]

  return start
