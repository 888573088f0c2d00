"""The study's comparison: every architecture with PIT and with fixed-order loss, one report.

`results_dir/<model>-<loss>/` is an ordinary workdir per run; finished runs are re-evaluated,
not retrained. `results_dir/report.md`, `reconstructions.png` and `loss_curves.png` are rewritten
every time.
"""

from __future__ import annotations

import json
import os
import platform

import jax
import jax.numpy as jnp

from unmix_jax import (configs, config_checks, data, evaluation, logs, metrics, plotting, runs,
                       steps, train)
from unmix_jax import workdir as workdir_lib

MODELS = ("unet", "ae", "vae")
LOSSES = ("pit", "fixed")
NUM_PICTURES = 6


def run_config(model: str, loss: str, preset: str):
  config = configs.get_config(model, preset)
  config.loss = loss
  return config


def finished(workdir: str, config) -> bool:
  """True when `workdir` holds a completed run of exactly `config`; a run of any other config
  there is an error, so a report never mixes settings."""
  if (workdir_lib.path(workdir) / "config.json").exists():
    saved = runs.load_config(workdir)
    if saved.to_json() != config.to_json():
      theirs, ours = json.loads(saved.to_json()), json.loads(config.to_json())
      diff = sorted(f"{section}.{k}" for section in ours if isinstance(ours[section], dict)
                    for k in ours[section] if theirs.get(section, {}).get(k) != ours[section][k])
      raise config_checks.ConfigError(
          f"{workdir} holds a run of another config ({', '.join(diff) or 'top-level fields'} "
          "differ); move it away to retrain it with the current one.")
  summary = logs.read_summary(workdir)
  return summary is not None and summary["step"] >= steps.steps_per_epoch(config) * config.train.epochs


def check_results_dir(results_dir: str, holds: str) -> None:
  """A results directory holds one study (`holds`, e.g. "runs of preset 'cpu'"), never two."""
  marker = workdir_lib.path(results_dir) / "study.json"
  previous = (workdir_lib.read_json(marker) or {}).get("holds", holds)
  if previous != holds:
    raise config_checks.ConfigError(
        f"--results_dir={results_dir} holds {previous}, not {holds}; use another "
        "--results_dir so the two are never mixed.")
  marker.parent.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_json(marker, {"holds": holds})


def run_all(preset: str, results_dir: str, models=MODELS, losses=LOSSES, *,
            show_progress: bool = True) -> list[dict]:
  check_results_dir(results_dir, f"runs of preset {preset!r}")
  rows = []
  for model in models:
    for loss in losses:
      config = run_config(model, loss, preset)
      workdir = str(workdir_lib.path(results_dir) / f"{model}-{loss}")
      if finished(workdir, config):
        print(f"== {model} / {loss}: finished run in {workdir}, re-evaluating", flush=True)
      else:
        print(f"== {model} / {loss}: training in {workdir}", flush=True)
        train.train_and_evaluate(config, workdir, show_progress=show_progress)
      result = evaluation.evaluate_run(workdir)
      result["summary"] = logs.read_summary(workdir)
      print(evaluation.table(result), flush=True)
      rows.append(result)
  write_report(preset, results_dir, rows)
  return rows


def _pictures(results_dir: str, rows: list[dict]) -> None:
  outputs = []
  m = x1 = x2 = None
  for row in rows:
    config, graphdef, state, _ = runs.restore(row["workdir"], "best")
    if m is None:  # the test pairs are the same for every run (fixed test_seed)
      pair_data = data.load(config)
      m, x1, x2 = data.mix_batch(jnp.asarray(pair_data.test_images),
                                 pair_data.test_pairs[:NUM_PICTURES])
    x1_hat, x2_hat = steps.make_predict(graphdef, config)(state, m)
    x1_hat, x2_hat = metrics.best_assignment(x1_hat, x2_hat, x1, x2)
    outputs.append((f"{row['model']}/{row['loss']}", x1_hat, x2_hat))
  results = workdir_lib.path(results_dir)
  plotting.compare_reconstructions(results / "reconstructions.png", m, x1, x2, outputs,
                                   title="The same unseen test mixtures, every run")
  plotting.compare_curves(results / "loss_curves.png",
                          {f"{r['model']}/{r['loss']}": logs.read_metrics(r["workdir"])
                           for r in rows})


def report_table(rows: list[dict]) -> str:
  f = evaluation.fmt
  header = ["model", "loss", "params", "train s", "img/s", "val MSE", "val PSNR", "val SSIM",
            "test MSE", "test PSNR", "test SSIM", "test gain dB"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

  def scores(v, t, prefix=""):
    return [f(v[prefix + "mse"], 5), f(v[prefix + "psnr"], 2), f(v[prefix + "ssim"], 3),
            f(t[prefix + "mse"], 5), f(t[prefix + "psnr"], 2), f(t[prefix + "ssim"], 3)]

  for r in rows:
    s = r["summary"]
    ips = s.get("train_images_per_s")
    cells = [r["model"], r["loss"], f"{r['params']:,}", f"{s['wall_seconds']:.0f}",
             f"{ips:.0f}" if ips else "-", *scores(r["val"], r["test"]),
             f(r["test"]["psnr_gain"], 2)]
    lines.append("| " + " | ".join(cells) + " |")
  cells = ["mixture baseline", "-", "0", "-", "-",
           *scores(rows[0]["val"], rows[0]["test"], "baseline_"), "0"]
  lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_report(preset: str, results_dir: str, rows: list[dict]) -> None:
  _pictures(results_dir, rows)
  n_test, n_val = rows[0]["test"]["num_pairs"], rows[0]["val"]["num_pairs"]
  text = f"""# Un-mixing comparison, preset `{preset}`

Made by `unmix compare --preset={preset} --results_dir={results_dir}` on
{platform.machine()} with {os.cpu_count()} CPU cores, jax {jax.__version__} ({jax.default_backend()}).

Each run is scored at its best checkpoint (lowest holdout loss, else val loss). Test = {n_test} pairs of unseen
CIFAR-10 test images; val = {n_val} held-out pairs of the training images (seen images).
MSE under the better assignment; PSNR per image, then averaged; SSIM per image (dm-pix, 11x11
Gaussian window), averaged; outputs clipped to [0, 1]. Brackets: {evaluation.NUM_BOOTSTRAP}-resample
percentile bootstrap 95% intervals over pairs; the gain is bootstrapped on per-pair differences.
Train seconds: wall time of the training loop (compile, per-epoch evaluation and checkpoints
included, data loading not); images/s: training steps only. Both are the last training
process's (a resumed run reports its last leg).

{report_table(rows)}

![reconstructions](reconstructions.png)

![loss curves](loss_curves.png)
"""
  with open(os.path.join(results_dir, "report.md"), "w") as f:
    f.write(text)
