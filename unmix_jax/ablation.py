"""Which levers of a recipe help separate unseen images: the recipe, and the recipe with each
lever switched (off where the recipe uses it, on where it does not), every run trained for the
same number of steps and scored on the same pairs.

`results_dir/<lever>/` is an ordinary workdir per run (`recipe/` for the recipe itself); finished
runs are scored again, not retrained. Levers that only change evaluation reuse the recipe's
checkpoint. `results_dir/report.md` is rewritten every time.
"""

from __future__ import annotations

import os
import platform

import jax
import numpy as np

from unmix_jax import compare, data, evaluation, logs, runs, steps, train
from unmix_jax import workdir as workdir_lib

# name: (what it is, the fields that switch it on, the fields that switch it off)
LEVERS = {
    "all_images": ("all 45,000 training images, not the study's 1,000",
                   {"data.num_images": 45_000}, {"data.num_images": 1000}),
    "stream_pairs": ("fresh pairs drawn on the device every step, not a fixed pair table",
                     {"data.stream_pairs": True}, {"data.stream_pairs": False}),
    "flips": ("left-right flips of each image before mixing",
              {"data.augment": True}, {"data.augment": False}),
    "shifts": ("shifts of each image by up to 2 pixels (reflected border)",
               {"data.translate": 2}, {"data.translate": 0}),
    "residual": ("residual blocks with batch norm and ReLU, not the reference double convs",
                 {"model.block": "residual", "model.norm": "batch"},
                 {"model.block": "double_conv"}),
    "group_norm": ("group norm and SiLU in the residual blocks, not batch norm and ReLU",
                   {"model.norm": "group"}, {"model.norm": "batch"}),
    "attention": ("self-attention at the lowest resolution (residual blocks only)",
                  {"model.attention_levels": 1}, {"model.attention_levels": 0}),
    "bounded": ("outputs bounded to [0, 1] through the mixture's headroom",
                {"model.bounded": True}, {"model.bounded": False}),
    "ema": ("evaluating a moving average of the weights (decay 0.999)",
            {"train.ema_decay": 0.999}, {"train.ema_decay": 0.0}),
    "flip_average": ("averaging the outputs of the mixture and its mirror image",
                     {"eval.flip_average": True}, {"eval.flip_average": False}),
}


def _get(config, name: str):
  section, field = name.split(".")
  return config[section][field]


def uses(config, lever: str) -> bool:
  """Whether `config` has `lever` switched on."""
  return all(_get(config, k) == v for k, v in LEVERS[lever][1].items())


def switched(config, lever: str):
  """`config` with `lever` switched the other way."""
  _, on, off = LEVERS[lever]
  config = config.copy_and_resolve_references()
  config.update_from_flattened_dict(off if uses(config, lever) else on)
  return config


def applies(config, lever: str) -> bool:
  """Whether switching `lever` means anything for `config`: the block's norm and attention
  exist only in the residual U-Net, the bound only with mixture-consistent outputs."""
  if lever in ("group_norm", "attention"):
    return config.model.name == "unet" and config.model.block == "residual"
  if lever == "residual":
    return config.model.name == "unet"
  if lever == "bounded":
    return bool(config.model.mixture_consistent)
  return True


def _scores(workdir: str, config=None) -> dict[str, dict[str, np.ndarray]]:
  """Per-pair metrics of the run's best checkpoint on its test and val pairs, with `config`'s
  evaluation settings where given."""
  saved, graphdef, state, _ = runs.restore(workdir, "best")
  config = config or saved
  pair_data = data.load(config)
  eval_step = steps.make_eval_step(graphdef, config)
  splits = pair_data.eval_splits()
  return {split: evaluation.score_pairs(eval_step, state, *splits[split],
                                        config.train.eval_batch_size)
          for split in ("test", "val")}


def _gain(per_pair: dict) -> np.ndarray:
  return per_pair["psnr"] - per_pair["baseline_psnr"]


def run_all(recipe, results_dir: str, levers=tuple(LEVERS), *,
            show_progress: bool = True) -> list[dict]:
  """Trains (or reuses) the recipe and each lever's switched run in `results_dir`, scores them
  and writes report.md. Returns one row per lever."""
  compare.check_results_dir(results_dir, f"ablation of {recipe.model.name}:{recipe.preset}")
  runs_needed = {"recipe": recipe}
  for lever in levers:
    if applies(recipe, lever):
      runs_needed[lever] = switched(recipe, lever)
  scores, seconds = {}, {}
  for name, config in runs_needed.items():
    eval_only = name != "recipe" and all(k.startswith("eval.") for k in LEVERS[name][1])
    workdir = str(workdir_lib.path(results_dir) / ("recipe" if eval_only else name))
    if not eval_only:
      if compare.finished(workdir, config):
        print(f"== {name}: finished run in {workdir}, scoring it", flush=True)
      else:
        print(f"== {name}: training in {workdir}", flush=True)
        train.train_and_evaluate(config, workdir, show_progress=show_progress)
    seconds[name] = logs.read_summary(workdir)["wall_seconds"]
    scores[name] = _scores(workdir, config if eval_only else None)
  rows = [_row(lever, recipe, scores["recipe"], scores[lever], seconds["recipe"],
               seconds[lever]) for lever in runs_needed if lever != "recipe"]
  write_report(recipe, results_dir, rows, scores["recipe"], seconds["recipe"])
  return rows


def _row(lever, recipe, base, other, base_s, other_s) -> dict:
  on = uses(recipe, lever)
  with_, without = (base, other) if on else (other, base)
  diff = _gain(with_["test"]) - _gain(without["test"])
  summary = lambda values: {"mean": float(np.mean(values)),
                            "ci95": evaluation.bootstrap_ci(values)}
  return {"lever": lever, "what": LEVERS[lever][0], "in_recipe": on,
          "test_gain_with": summary(_gain(with_["test"])),
          "test_gain_without": summary(_gain(without["test"])),
          "difference": summary(diff),
          "val_psnr_with": float(np.mean(with_["val"]["psnr"])),
          "val_psnr_without": float(np.mean(without["val"]["psnr"])),
          "seconds_with": base_s if on else other_s, "seconds_without": other_s if on else base_s}


def verdict(row: dict) -> str:
  lo, hi = row["difference"]["ci95"]
  if lo > 0:
    return "helps"
  if hi < 0:
    return "hurts"
  return "no clear effect"


def table(rows: list[dict]) -> str:
  f = evaluation.fmt
  lines = ["| lever | in recipe | test gain with | test gain without | difference | verdict | "
           "val PSNR with / without | train s with / without |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    lines.append(
        f"| {r['lever']} | {'yes' if r['in_recipe'] else 'no'} | {f(r['test_gain_with'], 2)} | "
        f"{f(r['test_gain_without'], 2)} | {f(r['difference'], 2)} | {verdict(r)} | "
        f"{r['val_psnr_with']:.2f} / {r['val_psnr_without']:.2f} | "
        f"{r['seconds_with']:.0f} / {r['seconds_without']:.0f} |")
  return "\n".join(lines)


def write_report(recipe, results_dir: str, rows: list[dict], base: dict, base_s: float) -> None:
  gain = _gain(base["test"])
  lo, hi = evaluation.bootstrap_ci(gain)
  levers = "\n".join(f"- `{r['lever']}`: {r['what']}" for r in rows)
  text = (
      f"# Ablation of `{recipe.model.name}:{recipe.preset}`\n\n"
      f"Made by `unmix ablate --config={recipe.model.name}:"
      f"{recipe.preset} --epochs={recipe.train.epochs} --results_dir={results_dir}` on "
      f"{platform.machine()} with {os.cpu_count()} CPU cores, jax {jax.__version__} "
      f"({jax.default_backend()}).\n\n"
      f"The recipe: test gain **{np.mean(gain):+.2f} dB** [{lo:.2f}, {hi:.2f}] over the mixture, "
      f"val PSNR {np.mean(base['val']['psnr']):.2f} dB, {base_s:.0f} s. Each row switches one "
      "lever (off where the recipe uses it, on where it does not) and trains as many steps "
      f"({steps.steps_per_epoch(recipe) * recipe.train.epochs}) from the same seed; every run is "
      f"scored at its best checkpoint on the same {len(gain)} test pairs of unseen images. "
      "Gain: PSNR over the mixture baseline, dB. Difference: with minus without, per pair, so its "
      "95% bootstrap interval is paired. Val: pairs of the training images (seen). Train s: the "
      "run's wall time.\n\n"
      f"{table(rows)}\n\n{levers}\n")
  workdir_lib.write_bytes(workdir_lib.path(results_dir) / "report.md", text.encode())

