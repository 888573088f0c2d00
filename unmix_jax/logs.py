"""Run logs a researcher reads in Colab, in a local workdir or a bucket alike.

`workdir/metrics.jsonl`: one JSON object per line, {"step", "epoch", "split", "wall_time", <metrics>},
readable with `pandas.read_json(path, lines=True)` or `read_metrics(workdir)`; complete after
every record (on a disk each is appended and flushed; an object cannot be appended to, so in a
bucket the whole file is written again). `workdir/tb/`: the same scalars as TensorBoard events
(tensorboardX's SummaryWriter; `%tensorboard --logdir <workdir>/tb`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

from unmix_jax import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir) -> list[dict]:
  """All complete records of a run, in the order they were written. A last line without its
  newline is a record still being written (a reader beside the run) or one a full disk cut
  short: it is left out."""
  source = workdir_lib.path(workdir) / METRICS_FILE
  if not source.exists():
    return []
  lines = source.read_text().splitlines(keepends=True)
  if lines and not lines[-1].endswith("\n"):
    lines.pop()
  return [json.loads(line) for line in lines if line.strip()]


def metrics_frame(workdir):
  """metrics.jsonl as a pandas DataFrame (one row per record; NaN where a split lacks a metric)."""
  import pandas as pd

  return pd.DataFrame(read_metrics(workdir))


def read_eval(workdir) -> dict | None:
  """workdir/eval.json (written by `unmix evaluate`), or None before it exists."""
  return workdir_lib.read_json(workdir_lib.path(workdir) / "eval.json")


def read_summary(workdir) -> dict | None:
  """workdir/summary.json, written when a run finishes; None before."""
  return workdir_lib.read_json(workdir_lib.path(workdir) / "summary.json")


def read_bytes(workdir, name: str) -> bytes | None:
  """A file of the run (e.g. "reconstructions.png"), or None where there is none yet."""
  source = workdir_lib.path(workdir) / name
  return source.read_bytes() if source.exists() else None


def _clean(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)  # JSON has no NaN / inf.


class MetricWriter:
  """Writes records to metrics.jsonl and TensorBoard.

  `resume_step`: records after this step belong to work a resumed run will redo, so they are
  dropped (and TensorBoard purges its events from there on); the file then has no duplicated
  or missing steps after a resume. `enabled=False` (every process but the first) writes nothing.
  """

  def __init__(self, workdir, resume_step: int = 0, tensorboard: bool = True,
               enabled: bool = True):
    self.path = workdir_lib.path(workdir) / METRICS_FILE
    self.enabled, self._file, self._tb = enabled, None, None
    if not enabled:
      return
    self._lines = [json.dumps(r) + "\n" for r in read_metrics(workdir) if r["step"] <= resume_step]
    workdir_lib.write_bytes(self.path, "".join(self._lines).encode())
    if not workdir_lib.is_url(self.path):
      with workdir_lib.writes(self.path):
        self._file = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # only runs that log pay the import

      self._tb_dir = self.path.parent / "tb"
      # For a bucket, events are written on the local disk and copied whole after each
      # record: tensorboardX's own bucket writer uploads every file again when it is
      # garbage-collected, and waits minutes for storage that has gone.
      self._tb_local = (tempfile.mkdtemp(prefix="unmix-tb-") if workdir_lib.is_url(self.path)
                        else str(self._tb_dir))
      with workdir_lib.writes(self._tb_dir):
        self._tb = SummaryWriter(self._tb_local, purge_step=resume_step + 1, max_queue=1000,
                                 flush_secs=10)

  def write(self, step: int, split: str, metrics: dict, epoch: float | None = None) -> dict:
    record = {"step": int(step), "epoch": epoch, "split": split, "wall_time": time.time()}
    record.update({k: _clean(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    line = json.dumps(record) + "\n"
    self._lines.append(line)
    with workdir_lib.writes(self.path):
      if self._file is None:
        workdir_lib.write_bytes(self.path, "".join(self._lines).encode())
      else:
        self._file.write(line)
        self._file.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
      self._copy_events()
    return record

  def _copy_events(self) -> None:
    """The local event files into the bucket (nothing to do on a disk)."""
    if self._tb_local == str(self._tb_dir):
      return
    self._tb.flush()
    for name in os.listdir(self._tb_local):
      with open(os.path.join(self._tb_local, name), "rb") as f:
        workdir_lib.write_bytes(self._tb_dir / name, f.read())

  def close(self) -> None:
    if not self.enabled:
      return
    try:
      if self._file is not None:
        self._file.close()
      if self._tb is not None:
        self._tb.close()
        self._copy_events()
    except OSError:
      pass  # closing after a failed write: the error that matters was raised already
