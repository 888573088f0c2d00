"""Run logs a researcher reads in Colab.

`workdir/metrics.jsonl`: one JSON object per line, {"step", "epoch", "split", "wall_time", <metrics>},
readable with `pandas.read_json(path, lines=True)` or `read_metrics(workdir)`.
`workdir/tb/`: the same scalars as TensorBoard events (`%tensorboard --logdir <workdir>/tb`).
Both are written in the calling thread, so a full disk surfaces as `workdir.DiskFullError` at
the write that failed.
"""

from __future__ import annotations

import json
import math
import os
import time

from unmix_jax.workdir import disk_writes, replaced

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  """All complete records of a run, in the order they were written. A last line without its
  newline is a record still being written (a reader beside the run) or one a full disk cut
  short: it is left out."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.readlines()
  if lines and not lines[-1].endswith("\n"):
    lines.pop()
  return [json.loads(line) for line in lines if line.strip()]


def metrics_frame(workdir: str):
  """metrics.jsonl as a pandas DataFrame (one row per record; NaN where a split lacks a metric)."""
  import pandas as pd

  return pd.DataFrame(read_metrics(workdir))


def read_eval(workdir: str) -> dict | None:
  """workdir/eval.json (written by `unmix evaluate`), or None before it exists."""
  path = os.path.join(workdir, "eval.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_json(path: str, value) -> None:
  """`value` as indented JSON at `path`, whole or not at all; DiskFullError when the disk is
  full (the previous file, if any, stays)."""
  with replaced(path) as temporary, open(temporary, "w") as f:
    json.dump(value, f, indent=2)


def read_tensorboard(directory: str) -> list:
  """Every event record (tensorboardX's `Event` protos) of the event files in `directory`, file
  by file in name order: for tests and a quick look without TensorBoard installed."""
  from tensorboardX.proto.event_pb2 import Event

  events = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    at = 0
    while at < len(data):  # TFRecord: length (8 bytes), its CRC (4), payload, its CRC (4)
      length = int.from_bytes(data[at:at + 8], "little")
      events.append(Event.FromString(data[at + 12:at + 12 + length]))
      at += 16 + length
  return events


def _clean(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)  # JSON has no NaN / inf.


class _TensorBoard:
  """Scalars as TensorBoard event records, written synchronously (tensorboardX's SummaryWriter
  writes from a thread of its own, where a failed write is only a printed traceback)."""

  def __init__(self, directory: str, purge_step: int):
    from tensorboardX.event_file_writer import EventsWriter  # only runs that log pay the import
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.proto.summary_pb2 import Summary

    self._event, self._summary = Event, Summary
    os.makedirs(directory, exist_ok=True)
    # A file of its own even when a resumed run starts within the same second.
    self.writer = EventsWriter(os.path.join(directory, "events"),
                               filename_suffix=f".{time.time_ns()}")
    self.path = self.writer._file_name
    # TensorBoard drops the events of earlier files from this step on: a resumed run redoes them.
    self.writer.write_event(Event(step=purge_step, wall_time=time.time(),
                                  session_log=SessionLog(status=SessionLog.START)))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    values = [self._summary.Value(tag=tag, simple_value=v) for tag, v in scalars.items()]
    self.writer.write_event(self._event(step=step, wall_time=time.time(),
                                        summary=self._summary(value=values)))
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


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
    with replaced(self.path) as temporary, open(temporary, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    with disk_writes(self.path):
      self._file = open(self.path, "a")
    self._tb = None
    if tensorboard:
      tb_dir = os.path.join(workdir, "tb")
      with disk_writes(tb_dir):
        self._tb = _TensorBoard(tb_dir, purge_step=resume_step + 1)

  def write(self, step: int, split: str, metrics: dict, epoch: float | None = None) -> dict:
    record = {"step": int(step), "epoch": epoch, "split": split, "wall_time": time.time()}
    record.update({k: _clean(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    with disk_writes(self.path):
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    if self._tb is not None:
      with disk_writes(self._tb.path):
        self._tb.write(int(step), {f"{split}/{k}": float(v) for k, v in metrics.items()})
    return record

  def close(self) -> None:
    if not self.enabled:
      return
    try:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
    except OSError:
      pass  # closing after a failed write: the error that matters was raised already
