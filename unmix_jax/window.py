"""The train metrics of one log line: sums kept on the device, read one step late, timed.

The train step adds its scalar metrics (loss parts, grad_norm, lr, ...) into `sums` itself, so
the host dispatches no tiny add per metric. A window is closed at a log line and read only after
the next step has been dispatched, so the host never waits for the device in between. Its time
runs from when the previous window's metrics arrived to when its own did: the host dispatches
ahead of the device, so dispatch times would mislead.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
  pass


def means(sums: dict[str, float], steps: int) -> dict[str, float]:
  """Per-step means of a window's sums over its `steps`; with `skipped` (steps whose update was
  dropped, see config.train.skip_nonfinite) the means cover the applied steps only and
  `skipped` stays a count."""
  applied = steps - sums.get("skipped", 0.0)
  out = {k: v / applied if applied else math.nan for k, v in sums.items()}
  if "skipped" in sums:
    out["skipped"] = sums["skipped"]
  return out


def check_finite(loss: float, step: int, steps: int, last_checkpoint: str, lr: float) -> None:
  """Raises NonFiniteLossError, naming the last good checkpoint and the fixes, when a window's
  mean loss is NaN or infinite."""
  if not math.isfinite(loss):
    raise NonFiniteLossError(
        f"training loss is {loss} at step {step} (mean of the last {steps} steps); last good "
        f"checkpoint: {last_checkpoint}; lower config.train.lr (now {lr}), tighten "
        "config.train.grad_clip, or set config.train.skip_nonfinite=True to skip such updates.")


class MetricWindow:
  """`sums` (device arrays shaped like `zeros`) and `steps` of the open window, and at most one
  closed window waiting to be read. `carried` ({"n", "sums"}, from `carry()` in a checkpoint)
  reopens a window that a stopped run left half full."""

  def __init__(self, zeros: dict, carried: dict | None = None, put=lambda tree: tree):
    self._zeros = zeros
    self.sums, self.steps = zeros, 0
    if carried:
      self.sums = put({k: np.asarray(v, np.float32) for k, v in carried["sums"].items()})
      self.steps = int(carried["n"])
    self._closed = None  # (step, sums, steps)
    self._since = time.time()

  def add(self, sums: dict, steps: int) -> None:
    """The sums returned by a call of `steps` train steps (which started from `self.sums`)."""
    self.sums, self.steps = sums, self.steps + steps

  def close(self, step: int) -> None:
    """Ends the open window at `step`; it is read by the next `read()`."""
    self._closed = (step, self.sums, self.steps)
    self.sums, self.steps = self._zeros, 0

  def restart_clock(self) -> None:
    """The next window's time starts now (after an evaluation, say)."""
    self._since = time.time()

  def read(self) -> tuple[int, dict[str, float], int, float] | None:
    """(step, means, steps, seconds) of the closed window, waiting for it; None when none is."""
    if self._closed is None:
      return None
    step, sums, steps = self._closed
    self._closed = None
    values = {k: float(v) for k, v in jax.device_get(sums).items()}
    now = time.time()
    seconds, self._since = now - self._since, now
    return step, means(values, steps), steps, seconds

  def carry(self) -> dict:
    """The open window as JSON ({"n", "sums"}), for a checkpoint taken mid-window."""
    return dict(n=self.steps, sums={k: float(v) for k, v in jax.device_get(self.sums).items()})


class InFlight:
  """Keeps the host at most one call ahead of the device: a stop request, the progress bar and
  a log line then describe steps the device has run, and nothing waits behind a backlog."""

  def __init__(self):
    self._last = None  # (an output of the newest call, its steps)

  def wait_for_previous(self, output, steps: int) -> int:
    """After dispatching a call of `steps` steps (`output`: any of its results): waits for the
    call before it and returns how many steps that one ran (0 for the first)."""
    previous, self._last = self._last, (output, steps)
    if previous is None:
      return 0
    jax.block_until_ready(previous[0])
    return previous[1]

  def drain(self) -> int:
    """Waits for the newest call; returns its steps (0 when none is in flight)."""
    last, self._last = self._last, None
    if last is None:
      return 0
    jax.block_until_ready(last[0])
    return last[1]
