"""Run logs a researcher reads in Colab.

`workdir/metrics.jsonl`: one JSON object per line, {"step", "epoch", "split", "wall_time", <metrics>},
readable with `pandas.read_json(path, lines=True)` or `read_metrics(workdir)`.
`workdir/tb/`: the same scalars as TensorBoard events (`%tensorboard --logdir <workdir>/tb`).
"""

from __future__ import annotations

import json
import math
import os
import time

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  """All records of a run, in the order they were written."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def metrics_frame(workdir: str):
  """metrics.jsonl as a pandas DataFrame (one row per record; NaN where a split lacks a metric)."""
  import pandas as pd

  return pd.DataFrame(read_metrics(workdir))


def read_eval(workdir: str) -> dict | None:
  """workdir/eval.json (written by experiments.evaluate), or None before it exists."""
  path = os.path.join(workdir, "eval.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _clean(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)  # JSON has no NaN / inf.


class MetricWriter:
  """Appends records to metrics.jsonl and TensorBoard.

  `resume_step`: records after this step belong to work a resumed run will redo, so they are
  dropped; the file then has no duplicated or missing steps after a resume.
  `enabled=False` (every process but the first of a multi-host run) writes nothing.
  """

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True,
               enabled: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = enabled
    if not enabled:
      return
    kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    self._file = open(self.path, "a")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # Only runs that log pay its import.
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1)

  def write(self, step: int, split: str, metrics: dict, epoch: float | None = None) -> dict:
    record = {"step": int(step), "epoch": epoch, "split": split, "wall_time": time.time()}
    record.update({k: _clean(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
    return record

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
