"""A training run's hold on its workdir, and what a full disk does to it.

`Lock`: a workdir belongs to one live training run. `workdir/run.lock` names the host, pid and
start time of the run that holds it, and is held with an OS lock (`fcntl.flock`), so a run that
dies releases it: a second run on the same workdir stops at once, and a lock file whose run is
gone is taken over with a warning. Readers (evaluate, sample, separate, the notebook) take no
lock and may run beside a training run.

`DiskFullError`: a write that failed for lack of space (or a read-only filesystem), raised by
`disk_writes(path)` around any write a run makes; the training loop adds where its last complete
checkpoint is. `replaced(path)` writes a whole file beside its target and renames it into place,
so a failed write leaves the previous file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys

LOCK_FILE = "run.lock"
_DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
_DISK_MESSAGES = ("No space left on device", "Read-only file system", "Disk quota exceeded")


class LockedError(RuntimeError):
  """Another live run holds the workdir."""


class DiskFullError(OSError):
  """A write failed for lack of space or on a read-only filesystem. `resume` (set by the training
  loop, which `resumable` does): where running the same command again continues from."""

  def __init__(self, path: str, reason: str = "no space left on device"):
    super().__init__(errno.ENOSPC, reason, path)
    self.path, self.reason = path, reason
    self.resume: str | None = None

  def resumable(self, last_step: int | None, directory: str) -> DiskFullError:
    self.resume = (f"the last complete checkpoint is step {last_step} in {directory}"
                   if last_step is not None else "no checkpoint was completed yet")
    return self

  def __str__(self) -> str:
    fix = "make it writable" if self.reason == "read-only file system" else "free space"
    if self.resume is None:
      return f"{self.reason} writing {self.path}; {fix} and run the same command again"
    return (f"{self.reason} writing {self.path}; {self.resume}; {fix} and run the same command "
            "to resume")


def is_disk_error(e: BaseException) -> bool:
  """Whether `e` (an OSError, or an error Orbax / TensorStore raised with the OS's text) is a
  full disk, a quota or a read-only filesystem."""
  if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
    return True
  return any(m in str(e) for m in _DISK_MESSAGES)


def disk_reason(e: BaseException) -> str:
  """'read-only file system' or 'no space left on device', for the one line."""
  if isinstance(e, OSError) and e.errno == errno.EROFS or "Read-only" in str(e):
    return "read-only file system"
  return "no space left on device"


@contextlib.contextmanager
def disk_writes(path: str):
  """Turns a full disk or read-only filesystem inside into DiskFullError naming `path`."""
  try:
    yield
  except DiskFullError:
    raise
  except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many types
    if is_disk_error(e):
      raise DiskFullError(path, disk_reason(e)) from None
    raise


@contextlib.contextmanager
def replaced(path: str):
  """Yields a temporary path beside `path` (same extension, for writers that read it) to write
  the whole file to; renames it onto `path` when the block ends, removes it when it fails.
  Disk errors inside become DiskFullError naming `path`."""
  directory, name = os.path.split(path)
  temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp{os.path.splitext(name)[1]}")
  try:
    with disk_writes(path):
      yield temporary
      os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


class Lock:
  """Context manager holding `workdir/run.lock` for this process; LockedError when another live
  run holds it (a multi-process run: process 0 holds it for all, `parallel.held_by_main`). A
  run that ends empties the file rather than removing it: a run that opened it just before
  could otherwise hold a lock on a file that the next one no longer sees."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def __enter__(self):
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe(_read(fd))
      os.close(fd)
      raise LockedError(
          f"--workdir={os.path.dirname(self.path)} is in use by {holder}; wait for that run to "
          "end, stop it, or use another --workdir.") from None
    previous = _read(fd)
    if previous.get("pid") not in (None, os.getpid()) or previous.get("host") not in (
        None, socket.gethostname()):
      print(f"warning: taking over {self.path} from {_describe(previous)}, which no longer "
            "runs.", file=sys.stderr, flush=True)
    with disk_writes(self.path):
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(dict(
          host=socket.gethostname(), pid=os.getpid(),
          started=datetime.datetime.now().isoformat(timespec="seconds"))).encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc):
    self.release()

  def release(self) -> None:
    """Gives the workdir back (also from a process about to exit at once)."""
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)  # empty: released cleanly (the file stays, see `Lock`)
      except OSError:
        pass
      os.close(self._fd)  # releases the flock
      self._fd = None


def _read(fd: int) -> dict:
  try:
    text = os.pread(fd, 4096, 0).decode()
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return "another run"
  return (f"the run of pid {holder.get('pid')} on {holder.get('host')} started "
          f"{holder.get('started')}")
