"""Scoring a finished run on fixed pair sets, with 95% bootstrap confidence intervals.

Intervals: percentile bootstrap over pairs (the pairs are resampled with replacement
`NUM_BOOTSTRAP` times with a fixed seed; the interval holds the middle 95% of the resampled
means). The gain over the baseline is bootstrapped on per-pair differences (paired), so its
interval is much narrower than the two separate intervals suggest.
"""

from __future__ import annotations

import numpy as np

from unmix_jax import data, parallel, runs, steps
from unmix_jax import workdir as workdir_lib

NUM_BOOTSTRAP = 1000
METRICS = ("mse", "psnr", "ssim")
SPLITS = {"test": "unseen images", "holdout": "unseen, for choosing", "val": "seen images"}


def score_pairs(eval_step, state, images, pairs: np.ndarray, batch_size: int,
                mesh=None, between_batches=None) -> dict[str, np.ndarray]:
  """Per-pair metrics (`steps.make_eval_step`) over a whole pair set [P, 2], [P] each.

  The last batch is padded by repeating pairs so every batch has one shape (one compilation);
  the padding is dropped before anything is averaged. With a `mesh` each batch is split over
  its devices (the batch size rounded up to a multiple of their number). The host stays one
  batch ahead of the device; `between_batches()`, if given, runs before each batch (a stop
  request raises there).
  """
  n = len(pairs)
  batch_size = min(batch_size, n)
  if mesh is not None:
    batch_size = -(-batch_size // mesh.size) * mesh.size
  chunks, pending = [], None
  for start in range(0, n, batch_size):
    if between_batches is not None:
      between_batches()
    idx = pairs[start:start + batch_size]
    pad = batch_size - len(idx)
    if pad:
      idx = np.concatenate([idx, np.resize(pairs, (pad, 2))])
    if mesh is not None:
      idx = parallel.shard_batch(idx, mesh)
    dispatched = eval_step(steps.eval_params(state), state.model_state, images, idx)
    if pending is not None:
      chunks.append(parallel.to_host(pending))
    pending = dispatched
  chunks.append(parallel.to_host(pending))
  return {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}


def summarize(per_pair: dict[str, np.ndarray]) -> dict[str, float]:
  """Means over pairs; psnr_gain = model PSNR minus baseline PSNR on the same pairs."""
  out = {k: float(np.mean(v)) for k, v in per_pair.items()}
  out["psnr_gain"] = out["psnr"] - out["baseline_psnr"]
  return out


def bootstrap_ci(values: np.ndarray, num: int = NUM_BOOTSTRAP, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of `values` [P]."""
  rng = np.random.default_rng(seed)
  values = np.asarray(values, np.float64)
  means = values[rng.integers(0, len(values), (num, len(values)))].mean(axis=1)
  tail = (1 - level) / 2 * 100
  lo, hi = np.percentile(means, [tail, 100 - tail])
  return float(lo), float(hi)


def describe(per_pair: dict[str, np.ndarray]) -> dict[str, dict]:
  """{metric: {"mean", "ci95"}} for the model, the baseline and the PSNR / SSIM gains."""
  out = {}
  for name in METRICS:
    for key in (name, f"baseline_{name}"):
      out[key] = {"mean": float(np.mean(per_pair[key])), "ci95": bootstrap_ci(per_pair[key])}
  for name in ("psnr", "ssim"):
    diff = per_pair[name] - per_pair[f"baseline_{name}"]
    out[f"{name}_gain"] = {"mean": float(np.mean(diff)), "ci95": bootstrap_ci(diff)}
  out["num_pairs"] = int(len(per_pair["mse"]))
  return out


def evaluate_run(workdir: str, which: str = "best") -> dict:
  """Restores the run's best checkpoint (`Checkpoints.best_step`) or its latest, scores its
  splits (test, val, and holdout where the run has one), writes `workdir/eval.json` and returns
  its content."""
  result = score_run(workdir, which)
  workdir_lib.write_json(workdir_lib.path(workdir) / "eval.json", result)
  return result


def score_run(workdir: str, which: str = "best", test_only: bool = False) -> dict:
  """What `evaluate_run` writes, without writing it; with `test_only`, the test split alone
  (only its images are read)."""
  config, graphdef, state, step = runs.restore(workdir, which)
  pair_data = data.load(config, test_only=test_only)
  eval_step = steps.make_eval_step(graphdef, config)
  result = {"workdir": str(workdir_lib.path(workdir)), "model": config.model.name, "loss": config.loss,
            "preset": config.preset, "checkpoint_step": step,
            "params": steps.count_params(state.params),
            "intervals": f"95% percentile bootstrap over pairs, {NUM_BOOTSTRAP} resamples",
            "psnr": "per image, averaged over images and pairs; outputs clipped to [0, 1]"}
  for split, (images, pairs) in pair_data.eval_splits().items():
    if test_only and split != "test":
      continue
    per_pair = score_pairs(eval_step, state, images, pairs, config.train.eval_batch_size)
    result[split] = describe(per_pair)
  return result


def fmt(entry: dict, digits: int) -> str:
  lo, hi = entry["ci95"]
  return f"{entry['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table(result: dict) -> str:
  """A short plain-text table of one eval.json."""
  lines = [f"{result['model']} (loss={result['loss']}, preset={result['preset']}, "
           f"checkpoint step {result['checkpoint_step']}); 95% bootstrap intervals"]
  w = 32
  lines.append(f"{'split':<{w}}{'':<10}{'MSE':<28}{'PSNR dB':<26}{'SSIM':<24}")
  for split, words in SPLITS.items():
    if split not in result:
      continue
    r = result[split]
    for who, prefix in (("model", ""), ("baseline", "baseline_")):
      label = f"{split} ({words})" if who == "model" else ""
      lines.append(f"{label:<{w}}{who:<10}{fmt(r[prefix + 'mse'], 5):<28}"
                   f"{fmt(r[prefix + 'psnr'], 2):<26}{fmt(r[prefix + 'ssim'], 3):<24}")
    lines.append(f"{'':<{w}}{'gain':<10}{'':<28}{fmt(r['psnr_gain'], 2):<26}"
                 f"{fmt(r['ssim_gain'], 3):<24}")
  return "\n".join(lines)
