"""A training run end to end on the shared CIFAR-10 copy: what it writes, resuming, reading it
back (evaluate, sample, the notebook, from another directory) and the comparison report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import (assert_one_line_error, checkpoint_steps, comparable,
                            read_tensorboard, records, run_module, summary, train_smoke)
from unmix_jax import backend, compare, evaluation, runs, train


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
  events = read_tensorboard(os.path.join(unet_run, "tb"))
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


@pytest.mark.slow
def test_k_step_calls_log_every_epoch_alike_and_profile_past_the_first_epoch(tmp_path,
                                                                               tfds_data_dir):
  """6 steps an epoch, 3 steps a call, a log line every 3 steps: every epoch logs alike; the
  trace of steps 8-9 (whole calls, in the second epoch) is written."""
  run_dir = str(tmp_path / "run")
  train_smoke(run_dir, **{"data.num_train_pairs": 96, "train.epochs": 3,
                          "train.steps_per_call": 3, "train.log_every": 3,
                          "profile.start_step": 7, "profile.num_steps": 2})
  train_steps = [r["step"] for r in records(run_dir) if r["split"] == "train"]
  assert train_steps == [3, 6, 9, 12, 15, 18]
  traces = [f for _, _, fs in os.walk(os.path.join(run_dir, "profile")) for f in fs
            if f.endswith(".xplane.pb")]
  assert traces


@pytest.mark.slow
def test_a_resumed_run_equals_the_unbroken_one_and_compiles_each_program_once(
    unet_run, copy_run, capsys, monkeypatch):
  broken = copy_run(unet_run, keep_steps=[4])  # as if stopped right after epoch 1
  compile_call, calls = train._compile_train_call, []

  def recorded(*args):
    call, zeros = compile_call(*args)
    calls.append(call)
    return call, zeros

  monkeypatch.setattr(train, "_compile_train_call", recorded)
  train_smoke(broken, **{"train.epochs": 3, "profile.start_step": 2, "profile.num_steps": 2,
                         "profile.dump_hlo": True})
  assert "resuming from step 4" in capsys.readouterr().out
  assert comparable(broken) == comparable(unet_run)
  assert summary(broken)["test"] == summary(unet_run)["test"]
  # One program of two steps a call, compiled once: none again at step 2 when the call gets
  # back the metric window it returned.
  assert [c._cache_size() for c in calls] == [1]


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


@pytest.mark.slow
def test_the_evaluate_command_writes_eval_json(unet_run, copy_run):
  workdir = copy_run(unet_run)
  result = run_module("experiments.evaluate", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "test (unseen images)" in result.stdout and os.path.exists(
      os.path.join(workdir, "eval.json"))


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_autoencoder_trains_and_cannot_sample(tmp_path):
  workdir = tmp_path / "ae"
  train_smoke(workdir, "ae")
  assert all("kl" not in r for r in records(workdir))
  result = run_module("experiments.sample", f"--workdir={workdir}", "--num=8")
  assert_one_line_error(result, "prior")
  assert not os.path.exists(workdir / "samples.png")
  assert_one_line_error(run_module("experiments.sample", f"--workdir={tmp_path / 'none'}"),
                        "holds no run")


@pytest.mark.slow
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
