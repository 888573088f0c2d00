"""The training command on the shared CIFAR-10 copy, as a user runs it (subprocesses)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_train(workdir, *overrides, data_dir, config="configs/unet.py:smoke", timeout=600,
              env=None):
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu", **(env or {}))
  cmd = [sys.executable, "-m", "experiments.train", f"--config={config}",
         f"--workdir={workdir}", *overrides]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_smoke_run_writes_logs_pictures_checkpoint_and_resumes(tmp_path, tfds_data_dir):
  workdir = str(tmp_path / "run")
  first = run_train(workdir, data_dir=tfds_data_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  for name in ("metrics.jsonl", "reconstructions.png", "loss_curves.png", "config.json",
               "summary.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert os.listdir(os.path.join(workdir, "tb"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
  logged = records(workdir)
  assert {r["split"] for r in logged} == {"train", "val", "test"}
  test_rows = [r for r in logged if r["split"] == "test"]
  assert [r["step"] for r in test_rows] == [4, 8]
  assert all(r["baseline_psnr"] > 5 and r["psnr"] > 5 for r in test_rows)
  assert "test (unseen images" in first.stdout

  # Same command, two more epochs: resumes at step 8 and appends without duplicating steps.
  second = run_train(workdir, "--config.train.epochs=4", data_dir=tfds_data_dir)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming from step 8" in second.stdout
  logged = records(workdir)
  keys = [(r["split"], r["step"]) for r in logged]
  assert len(keys) == len(set(keys))
  assert [r["step"] for r in logged if r["split"] == "test"] == [4, 8, 12, 16]


def test_each_train_program_compiles_once(tmp_path, tfds_data_dir):
  """One step per call and several (the smoke preset's 2): two programs, each compiled once
  before the first step. A metric window on another sharding than the step's outputs used to
  compile the step again at step 2."""
  # The command silences logging below ERROR; a handler on "jax" shows its compile log.
  script = ("import logging, runpy, sys\n"
            "log = logging.getLogger('jax'); log.setLevel(logging.WARNING)\n"
            "log.addHandler(logging.StreamHandler())\n"
            "sys.argv = ['train'] + sys.argv[1:]\n"
            "runpy.run_module('experiments.train', run_name='__main__')\n")
  env = dict(os.environ, TFDS_DATA_DIR=tfds_data_dir, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
  result = subprocess.run(
      [sys.executable, "-c", script, "--config=configs/unet.py:smoke",
       "--config.train.log_every=4",  # so a call gets the window the previous one returned
       f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  compiles = [line for line in result.stderr.splitlines()
              if line.startswith("Finished XLA compilation of jit(train_step)")]
  assert len(compiles) == 2, result.stderr[-3000:]


def test_resumed_run_equals_unbroken_run(tmp_path, tfds_data_dir):
  """A run stopped after its first checkpoint and started again ends with the same numbers."""
  unbroken = str(tmp_path / "unbroken")
  assert run_train(unbroken, "--config.train.epochs=3", data_dir=tfds_data_dir).returncode == 0
  # The state of a run stopped right after epoch 1: later checkpoints never written.
  broken = str(tmp_path / "broken")
  shutil.copytree(unbroken, broken)
  for step in ("8", "12"):
    shutil.rmtree(os.path.join(broken, "checkpoints", step))
  resumed = run_train(broken, "--config.train.epochs=3", data_dir=tfds_data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step 4" in resumed.stdout
  strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_time", "images_per_s")}
                      for r in rs]
  assert strip(records(broken)) == strip(records(unbroken))
  with open(os.path.join(unbroken, "summary.json")) as f, \
       open(os.path.join(broken, "summary.json")) as g:
    assert json.load(f)["test"] == json.load(g)["test"]


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_two_decoder_models_train_and_only_the_vae_samples(tmp_path, tfds_data_dir, name):
  workdir = str(tmp_path / name)
  result = run_train(workdir, config=f"configs/{name}.py:smoke", data_dir=tfds_data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  logged = records(workdir)
  train_rows = [r for r in logged if r["split"] == "train"]
  assert train_rows and all(("kl" in r) == (name == "vae") for r in train_rows)
  assert os.path.getsize(os.path.join(workdir, "reconstructions.png")) > 0

  sample = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={workdir}",
                           "--num=8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  samples = os.path.join(workdir, "samples.png")
  if name == "vae":
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert os.path.getsize(samples) > 0
  else:
    assert sample.returncode == 2
    assert "no prior" not in sample.stdout and "prior" in sample.stderr.splitlines()[-1]
    assert not os.path.exists(samples)


def test_sample_without_a_run_says_so(tmp_path):
  result = subprocess.run([sys.executable, "-m", "experiments.sample",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 2
  assert "holds no run" in result.stderr.strip().splitlines()[-1]


def test_evaluate_and_the_notebook_read_a_smoke_run(tmp_path, tfds_data_dir):
  import nbformat
  from nbclient import NotebookClient

  workdir = str(tmp_path / "run")
  assert run_train(workdir, data_dir=tfds_data_dir).returncode == 0
  env = dict(os.environ, TFDS_DATA_DIR=tfds_data_dir)
  result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "test (unseen images)" in result.stdout
  with open(os.path.join(workdir, "eval.json")) as f:
    evaluation = json.load(f)
  for split in ("test", "val"):
    for key in ("mse", "psnr", "ssim", "baseline_psnr", "psnr_gain"):
      lo, hi = evaluation[split][key]["ci95"]
      assert lo <= evaluation[split][key]["mean"] <= hi
  assert evaluation["checkpoint_step"] in (4, 8)

  notebook = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
  os.environ["UNMIX_WORKDIR"] = workdir
  try:
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": ROOT}}).execute()
  finally:
    del os.environ["UNMIX_WORKDIR"]
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)


def test_evaluate_without_a_checkpoint_says_so(tmp_path):
  os.makedirs(tmp_path / "run")
  with open(tmp_path / "run" / "config.json", "w") as f:
    from configs import unet
    f.write(unet.get_config("smoke").to_json())
  result = subprocess.run([sys.executable, "-m", "experiments.evaluate",
                           f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2
  assert "no checkpoint" in result.stderr.strip().splitlines()[-1]


def run_compare(results_dir, data_dir, preset="smoke", models="unet,vae"):
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.compare", f"--preset={preset}",
         f"--results_dir={results_dir}", f"--models={models}"]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_compare_writes_the_report_and_reuses_finished_runs(tmp_path, tfds_data_dir):
  results = str(tmp_path / "results")
  first = run_compare(results, tfds_data_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(results, "report.md")) as f:
    report = f.read()
  for row in ("| unet | pit |", "| unet | fixed |", "| vae | pit |", "| vae | fixed |",
              "| mixture baseline |"):
    assert row in report, row
  for name in ("reconstructions.png", "loss_curves.png"):
    assert os.path.getsize(os.path.join(results, name)) > 0
  checkpoints = os.path.join(results, "unet-pit", "checkpoints")
  before = sorted(os.listdir(checkpoints))

  again = run_compare(results, tfds_data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("re-evaluating") == 4 and "training in" not in again.stdout
  assert sorted(os.listdir(checkpoints)) == before

  other = run_compare(results, tfds_data_dir, preset="cpu")
  assert other.returncode == 2
  assert "preset 'smoke'" in other.stderr.strip().splitlines()[-1]
