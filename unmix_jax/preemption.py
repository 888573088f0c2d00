"""Stopping on SIGTERM / SIGINT within a scheduler's grace period, without losing work.

The first signal sets `StopRequests.signum`; the training loop, which keeps at most one call
ahead of the device, sees it after the call in flight and saves a checkpoint of its latest
finished step, with the half-full metric window (`window.MetricWindow.carry`), then raises
`Preempted` (exit 128 + N). Evaluation checks between batches and is redone on resume.

Python runs signal handlers only on the main thread, between bytecodes: a main thread that
waits on XLA (a step, a compile) would hold them back. So the C-level handler's wakeup byte
(`signal.set_wakeup_fd`) is read by a watcher thread, which acts where waiting would help
nothing: a second signal exits at once, and a first one while no finished step waits to be
saved (starting up, compiling, writing pictures after the last checkpoint) exits unless the
loop takes it up within GRACE_S. Both exit 128 + N; checkpoints are written to a temporary
directory and renamed when complete, so the last complete one survives.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

# How long a stop request with nothing to save waits for the loop to take it up before the
# process exits without it, in seconds.
GRACE_S = 2.0


class Preempted(Exception):
  """Training stopped on a signal after writing a checkpoint of the current step."""

  def __init__(self, signum: int, step: int, directory: str):
    self.exit_code = 128 + signum
    super().__init__(
        f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written to "
        f"{directory}. Run the same command again to resume.")


class StopNow(Exception):
  """Raised by `StopRequests.check` where every process has agreed to stop."""


class StopRequests:
  """Context manager that catches SIGTERM and SIGINT; `signum` is the first one caught.

  The loop keeps `saved_step` (the newest complete checkpoint, or None) and `unsaved` (whether
  finished steps wait for a checkpoint) current, so the watcher knows when it may exit at once.
  `agree(signum) -> int`: a signal number any process caught (0: none), at the same call on
  every process (`parallel.StopAgreement`); the identity in a single process.
  `idle_exit`: whether a first signal with nothing unsaved exits after GRACE_S. Not with
  several processes: one that waits for the others at the agreement must not leave them.
  `at_exit`: cleanups (releasing the workdir lock) run before an immediate exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, directory: str = "", agree: Callable[[int], int] = int,
               idle_exit: bool = True):
    self.signum = None
    self.directory = directory
    self.saved_step: int | None = None
    self.unsaved = False
    self.agree, self.idle_exit = agree, idle_exit
    self.at_exit: list[Callable[[], None]] = []
    self._received = 0
    self._taken_up = False  # the loop has seen the stop request and acts on it
    self._lock = threading.Lock()
    self._previous = {}
    self._pipe = None
    self._previous_fd = None
    self._timer = None

  def requested(self) -> bool:
    """Whether to stop now: the same answer on every process, at the same call (a process
    that caught no signal itself takes the others')."""
    signum = self.agree(self.signum or 0)
    if signum and self.signum is None:
      self.signum = signum
    self._taken_up = bool(signum)
    return self._taken_up

  def check(self) -> None:
    """Raises StopNow where a stop was requested (`requested`)."""
    if self.requested():
      raise StopNow()

  def saved(self, step: int | None) -> None:
    """A checkpoint of `step` is complete (or was restored): nothing waits to be saved."""
    self.saved_step, self.unsaved = step, False

  def _signal(self, signum: int) -> None:
    """One signal, from the watcher (or from the Python handler where there is no watcher)."""
    with self._lock:
      self._received += 1
      again = self._received > 1  # this process's own second signal
      if self.signum is None:
        self.signum = signum
    name = signal.Signals(signum).name
    if again:
      self._exit_now(signum, f"\n{name} again: exiting at once; {self._where()}. Run the same "
                             "command again to resume.")
    print(f"\n{name} received: saving a checkpoint of the step in progress, then exiting "
          "(send it again to exit at once).", file=sys.stderr, flush=True)
    if not self.unsaved and self.idle_exit:
      # Nothing to save: unless the loop takes the stop up within GRACE_S (then every process
      # of a run stops at the same step), exit without waiting for the main thread.
      self._timer = threading.Timer(GRACE_S, self._exit_unless_taken_up, args=(signum,))
      self._timer.daemon = True
      self._timer.start()

  def _exit_unless_taken_up(self, signum: int) -> None:
    if not self._taken_up and not self.unsaved:
      self._exit_now(signum, f"\n{signal.Signals(signum).name}: no unsaved step; exiting; "
                             f"{self._where()}. Run the same command again to resume.")

  def _where(self) -> str:
    return (f"the latest checkpoint is step {self.saved_step} in {self.directory}"
            if self.saved_step is not None else "no checkpoint was written yet")

  def _exit_now(self, signum: int, message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    for cleanup in self.at_exit:
      try:
        cleanup()
      except Exception:  # noqa: BLE001 - exiting regardless
        pass
    os._exit(128 + signum)

  def _handle(self, signum, frame):
    del frame
    if self._pipe is None:  # no watcher (not the main thread's wakeup fd): act here
      self._signal(signum)
    elif self.signum is None:  # the watcher counts it; the loop may look before it does
      self.signum = signum

  def _watch(self, fd: int) -> None:
    try:
      while data := os.read(fd, 64):  # empty: the context ended and closed the other end
        for byte in data:
          if byte in self.SIGNALS:
            self._signal(byte)
    finally:
      os.close(fd)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # Python only allows handlers there; signals then stop nothing here
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    read, write = os.pipe()
    os.set_blocking(write, False)
    self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    self._pipe = (read, write)
    threading.Thread(target=self._watch, args=(read,), name="stop-requests",
                     daemon=True).start()
    return self

  def __exit__(self, *exc):
    if self._timer is not None:  # the run ended meanwhile: nothing is left to stop
      self._timer.cancel()
    if self._pipe is not None:
      signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
      os.close(self._pipe[1])  # the watcher reads end-of-file and ends
      self._pipe = None
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
