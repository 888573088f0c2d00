"""Stopping on SIGTERM / SIGINT without losing work: finish the step, save, exit, resume.

The first signal only sets `StopRequests.signum`; the loop then saves a checkpoint of the
current step, with the half-full metric window (`window.MetricWindow.carry`), and raises
`Preempted`. A second signal exits at once: checkpoints are written to a temporary directory and
renamed when complete, so the last complete one survives.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class Preempted(Exception):
  """Training stopped on a signal after writing a checkpoint of the current step."""

  def __init__(self, signum: int, step: int, directory: str):
    self.exit_code = 128 + signum
    super().__init__(
        f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written to "
        f"{directory}. Run the same command again to resume.")


class StopRequests:
  """Context manager that catches SIGTERM and SIGINT; `signum` is the first one caught."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      os._exit(128 + signum)
    self.signum = signum
    print(f"\n{signal.Signals(signum).name} received: finishing the current step and saving a "
          "checkpoint (send it again to exit at once).", file=sys.stderr, flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Python only allows it there.
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
