"""A training run end to end on the shared CIFAR-10 copy: what it writes, resuming, reading it
back (evaluate, sample, the notebook, from another directory) and the comparison report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (ROOT, assert_one_line_error, checkpoint_steps, comparable, records,
                            run_module, summary, train_smoke)
from unmix_jax import backend, compare, evaluation, logs, runs, train


def test_a_run_writes_logs_pictures_checkpoints_and_a_profile(unet_run):
  for name in ("metrics.jsonl", "reconstructions.png", "loss_curves.png", "config.json",
               "summary.json"):
    assert os.path.getsize(os.path.join(unet_run, name)) > 0, name
  assert checkpoint_steps(unet_run) == [4, 8, 12]
  logged = records(unet_run)
  assert {r["split"] for r in logged} == {"train", "val", "test"}
  test_rows = [r for r in logged if r["split"] == "test"]
  assert [r["step"] for r in test_rows] == [4, 8, 12]
  assert all(r["baseline_psnr"] > 5 and r["psnr"] > 5 for r in test_rows)
  assert summary(unet_run)["test"] == {k: v for k, v in test_rows[-1].items()
                                       if k not in ("step", "epoch", "split", "wall_time")}
  # TensorBoard holds the same scalars.
  events = logs.read_tensorboard(os.path.join(unet_run, "tb"))
  tb = {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value}
  assert tb[("test/psnr", 12)] == pytest.approx(test_rows[-1]["psnr"], rel=1e-6)
  # The profile of steps 3-4 and the train step's optimised HLO.
  traces = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(unet_run, "profile"))
            for f in fs if f.endswith(".xplane.pb")]
  assert traces and os.path.getsize(traces[0]) > 0
  with open(os.path.join(unet_run, "profile", "train_step.hlo.txt")) as f:
    hlo = f.read()
  convs = "unmix_onednn_conv_fwd" if backend.resolve("auto") == "onednn" else "convolution"
  assert hlo.startswith("HloModule") and convs in hlo


def test_k_step_calls_log_every_epoch_alike_and_profile_past_the_first_epoch(tmp_path,
                                                                               tfds_data_dir):
  """5 steps an epoch, 2 steps a call, a log line every 2 steps: calls sized on the global
  step close a window at every even step and at each epoch's end, in every epoch; the trace of
  steps 6-7 (in the second epoch) is written."""
  run_dir = str(tmp_path / "run")
  train_smoke(run_dir, **{"data.num_train_pairs": 80, "train.epochs": 3,
                          "train.steps_per_call": 2, "profile.start_step": 5,
                          "profile.num_steps": 2})
  train_steps = [r["step"] for r in records(run_dir) if r["split"] == "train"]
  assert train_steps == [2, 4, 5, 6, 8, 10, 12, 14, 15]
  per_epoch = [sum(1 for s in train_steps if e * 5 < s <= (e + 1) * 5) for e in range(3)]
  assert per_epoch == [3, 3, 3]
  traces = [f for _, _, fs in os.walk(os.path.join(run_dir, "profile")) for f in fs
            if f.endswith(".xplane.pb")]
  assert traces


def test_a_resumed_run_equals_the_unbroken_one_and_compiles_each_program_once(
    unet_run, copy_run, capsys, monkeypatch):
  broken = copy_run(unet_run, keep_steps=[4])  # as if stopped right after epoch 1
  programs = []

  class Recorded(train.Programs):
    def __init__(self, *a):
      super().__init__(*a)
      programs.append(self)

  monkeypatch.setattr(train, "Programs", Recorded)
  train_smoke(broken, **{"train.epochs": 3, "profile.start_step": 2, "profile.num_steps": 2,
                         "profile.dump_hlo": True})
  assert "resuming from step 4" in capsys.readouterr().out
  assert comparable(broken) == comparable(unet_run)
  assert summary(broken)["test"] == summary(unet_run)["test"]
  # One compile of the two-step program, none at step 2 when the step gets back the metric
  # window it returned; the steps after 4 all run two to a call (log lines at even steps, the
  # profiled steps 3-4 lie before), so the one-step program is compiled but never called.
  assert [p.many._cache_size() for p in programs] == [1]
  assert [p.one._cache_size() for p in programs] == [0]


def test_more_epochs_continue_the_log_without_duplicates(unet_run, copy_run, capsys):
  workdir = copy_run(unet_run)
  train_smoke(workdir, **{"train.epochs": 4})
  assert "resuming from step 12" in capsys.readouterr().out
  logged = records(workdir)
  keys = [(r["split"], r["step"]) for r in logged]
  assert len(keys) == len(set(keys))
  assert [r["step"] for r in logged if r["split"] == "test"] == [4, 8, 12, 16]


def test_a_finished_run_trained_again_only_scores_it(unet_run, copy_run):
  workdir = copy_run(unet_run)
  result = train_smoke(workdir, **{"train.epochs": 3})
  assert result["step"] == 12 and result["test"]["psnr"] == pytest.approx(
      summary(unet_run)["test"]["psnr"], abs=1e-5)
  assert checkpoint_steps(workdir) == [4, 8, 12]


def test_evaluate_scores_the_best_checkpoint_with_intervals(unet_run, copy_run):
  workdir = copy_run(unet_run)
  result = evaluation.evaluate_run(workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f) == json.loads(json.dumps(result))
  for split in ("test", "val"):
    for key in ("mse", "psnr", "ssim", "baseline_psnr", "psnr_gain"):
      lo, hi = result[split][key]["ci95"]
      assert lo <= result[split][key]["mean"] <= hi
  assert result["checkpoint_step"] in (4, 8, 12)
  table = evaluation.table(result)
  assert "test (unseen images)" in table and "gain" in table


def test_the_evaluate_command_and_the_notebook_read_a_run(unet_run, copy_run, tmp_path):
  import nbformat
  from nbclient import NotebookClient

  workdir = copy_run(unet_run)
  result = run_module("experiments.evaluate", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "test (unseen images)" in result.stdout and os.path.exists(
      os.path.join(workdir, "eval.json"))
  # Headless: two pictures of its own for the shipped model, and the Colab-GPU section trains
  # the smoke preset; the reading cells read the shared run.
  pictures = []
  for k in range(2):
    pictures.append(str(tmp_path / f"picture{k}.png"))
    Image.fromarray(np.random.default_rng(k).integers(0, 256, (48, 40, 3), np.uint8)).save(
        pictures[-1])
  settings = dict(UNMIX_WORKDIR=workdir, UNMIX_PICTURES=",".join(pictures),
                  UNMIX_COLAB_PRESET="smoke", UNMIX_COLAB_MINUTES="5",
                  UNMIX_TRAIN_DIR=str(tmp_path / "colab"),
                  UNMIX_SEPARATIONS=str(tmp_path / "separations"))
  notebook = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
  os.environ.update(settings)
  try:
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": ROOT}}).execute()
  finally:
    for name in settings:
      del os.environ[name]
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  separated, trained = (str(notebook.cells[i].outputs) for i in (2, 4))
  assert "model: the shipped unet (:cpu60" in separated and "image/png" in separated
  assert os.path.exists(tmp_path / "separations" / "mine.png")
  assert "test (unseen images, 16 pairs)" in trained
  assert os.path.exists(tmp_path / "colab" / "summary.json")
  assert any("image/png" in o.get("data", {}) for o in notebook.cells[-2].outputs)


def test_a_run_opens_from_any_directory(unet_run, tmp_path):
  """The config comes from the installed package (unmix_jax.configs), not the current folder."""
  code = ("import sys\n"
          "from unmix_jax import evaluation, runs\n"
          "config, _, state, step = runs.restore(sys.argv[1])\n"
          "result = evaluation.evaluate_run(sys.argv[1])\n"
          "print(config.model.name, step, round(result['test']['psnr']['mean'], 3))\n")
  env = dict(os.environ, PYTHONPATH="", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code, unet_run], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  name, step, _ = out.stdout.split()
  assert name == "unet" and int(step) in (4, 8, 12)


def test_a_workdir_without_a_run_or_a_checkpoint_says_so(tmp_path):
  with pytest.raises(runs.RunError, match="holds no run"):
    runs.restore(str(tmp_path))
  with open(tmp_path / "config.json", "w") as f:
    from unmix_jax.configs import unet
    f.write(unet.get_config("smoke").to_json())
  with pytest.raises(runs.RunError, match="no checkpoint"):
    runs.restore(str(tmp_path))
  result = run_module("experiments.evaluate", f"--workdir={tmp_path}")
  assert_one_line_error(result, "no checkpoint")


def test_the_vae_samples_and_logs_its_kl(vae_run):
  train_rows = [r for r in records(vae_run) if r["split"] == "train"]
  assert train_rows and all("kl" in r for r in train_rows)
  result = run_module("experiments.sample", f"--workdir={vae_run}", "--num=8")
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.path.getsize(os.path.join(vae_run, "samples.png")) > 0


def test_the_autoencoder_trains_and_cannot_sample(tmp_path):
  workdir = tmp_path / "ae"
  train_smoke(workdir, "ae")
  assert all("kl" not in r for r in records(workdir))
  result = run_module("experiments.sample", f"--workdir={workdir}", "--num=8")
  assert_one_line_error(result, "prior")
  assert not os.path.exists(workdir / "samples.png")
  assert_one_line_error(run_module("experiments.sample", f"--workdir={tmp_path / 'none'}"),
                        "holds no run")


def test_compare_writes_the_report_and_reuses_finished_runs(tmp_path, vae_run, capsys):
  import shutil

  results = str(tmp_path / "results")
  os.makedirs(results)
  shutil.copytree(vae_run, os.path.join(results, "vae-pit"))  # finished: scored, not retrained
  rows = compare.run_all("smoke", results, ["unet", "vae"], ["pit"],
                         show_progress=False)
  out = capsys.readouterr().out
  assert out.count("training in") == 1 and out.count("re-evaluating") == 1
  with open(os.path.join(results, "report.md")) as f:
    report = f.read()
  for row in ("| unet | pit |", "| vae | pit |", "| mixture baseline |"):
    assert row in report, row
  for name in ("reconstructions.png", "loss_curves.png"):
    assert os.path.getsize(os.path.join(results, name)) > 0
  assert len(rows) == 2 and all(np.isfinite(r["test"]["psnr"]["mean"]) for r in rows)

  before = checkpoint_steps(os.path.join(results, "unet-pit"))
  compare.run_all("smoke", results, ["unet", "vae"], ["pit"], show_progress=False)
  again = capsys.readouterr().out
  assert again.count("re-evaluating") == 2 and "training in" not in again
  assert checkpoint_steps(os.path.join(results, "unet-pit")) == before

  other = run_module("experiments.compare", "--preset=cpu", f"--results_dir={results}")
  assert_one_line_error(other, "preset 'smoke'")
