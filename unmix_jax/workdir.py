"""Where a run lives: a local folder or a bucket (`gs://bucket/run`), read and written through one
path layer, `etils.epath` (what Orbax itself uses; a bucket through fsspec's gcsfs), and the
run's hold on it.

Files a user reads are written whole: locally to a temporary file renamed into place, in a
bucket as one object, which appears only once its upload completes. A write that fails for
lack of space, on a read-only filesystem, or because the bucket is missing, refuses this
account or cannot be reached raises `StorageError` naming the path and the fix (`writes`).

`Lock`: a workdir belongs to one live training run. `run.lock` names the host, pid and start of
the run that holds it. On a disk it is held with an OS lock (`fcntl.flock`), which a dead run
releases. A bucket has no such lock: the object is created only where absent (a generation
precondition) and renewed every RENEW_S while the run lives; a lock not renewed for STALE_S is
a dead run's and is taken over with a warning.
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
import threading
import time

from etils import epath

LOCK_FILE = "run.lock"
RENEW_S, STALE_S = 30.0, 120.0  # a bucket lock's renewal period and how old a dead one is
# What each kind of storage failure asks of the user.
FIXES = {
    "no space left on device": "free space",
    "read-only file system": "make it writable",
    "the bucket does not exist": "create it (gcloud storage buckets create gs://BUCKET) or "
                                 "correct --workdir",
    "permission denied": "give this account write access to the bucket (Application Default "
                         "Credentials: gcloud auth application-default login) or use another "
                         "--workdir",
    "storage unreachable": "check the network (or STORAGE_EMULATOR_HOST, where an emulator is "
                           "meant)",
}
_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "no space left on device",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}
_TEXTS = {"No space left on device": "no space left on device",
          "Disk quota exceeded": "no space left on device",
          "Read-only file system": "read-only file system",
          "bucket does not exist": "the bucket does not exist",
          "NoSuchBucket": "the bucket does not exist",
          "403": "permission denied", "PERMISSION_DENIED": "permission denied",
          "Cannot connect to host": "storage unreachable"}


def is_url(location) -> bool:
  return "://" in str(location)


def path(location) -> epath.Path:
  """`location`, a local path (made absolute) or a URL such as gs://bucket/run, as a path of
  the one layer; for a bucket, the storage libraries are told where an emulator is."""
  if not is_url(location):
    return epath.Path(os.path.abspath(location))
  import fsspec

  # Files other processes write (the training run's, process 0's) are seen at once; gcsfs
  # would answer from a listing it made earlier.
  fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:  # Google's convention; Orbax's TensorStore and gcsfs each read their own names
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", emulator)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # no credentials asked
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # no gRPC bucket probe
  return epath.Path(str(location))


class StorageError(OSError):
  """A write or read the storage refused (`FIXES` names each kind). `resume` (set by the
  training loop through `resumable`): where the same command continues from."""

  def __init__(self, where, reason: str = "no space left on device"):
    super().__init__(errno.ENOSPC, reason, str(where))
    self.path, self.reason = str(where), reason
    self.resume: str | None = None

  def resumable(self, last_step: int | None, directory) -> StorageError:
    self.resume = (f"the last complete checkpoint is step {last_step} in {directory}"
                   if last_step is not None else "no checkpoint was completed yet")
    return self

  def __str__(self) -> str:
    if self.resume is None:
      return f"{self.reason} writing {self.path}; {FIXES[self.reason]} and run the same command again"
    return (f"{self.reason} writing {self.path}; {self.resume}; {FIXES[self.reason]} and run the "
            "same command to resume")


def storage_reason(e: BaseException) -> str | None:
  """Which of `FIXES` an error is (an OSError, or a library's error with the OS's or the
  storage service's words), or None for any other error."""
  if isinstance(e, StorageError):
    return e.reason
  if isinstance(e, OSError) and e.errno in _ERRNOS:
    return _ERRNOS[e.errno]
  text = f"{type(e).__name__}: {e}"
  return next((reason for words, reason in _TEXTS.items() if words in text), None)


@contextlib.contextmanager
def writes(where):
  """Turns a storage failure inside (`storage_reason`) into StorageError naming `where`; in a
  bucket a write that finds nothing there found no bucket."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - Orbax, TensorStore and gcsfs raise many types
    reason = storage_reason(e) or (
        "the bucket does not exist" if is_url(where) and isinstance(e, FileNotFoundError)
        else None)
    if reason is None or isinstance(e, StorageError):
      raise
    raise StorageError(where, reason) from None


def write_bytes(target, data: bytes) -> None:
  """`data` as the whole file `target`, or nothing: a failed write leaves the previous file."""
  target = epath.Path(target)
  with writes(target):
    if is_url(target):
      target.write_bytes(data)  # an object appears only once its upload completes
      return
    temporary = target.parent / f".{target.name}.{os.getpid()}.tmp"
    try:
      with open(temporary, "wb") as f:
        f.write(data)
      os.replace(temporary, target)
    finally:
      if temporary.exists():
        temporary.unlink()


def write_json(target, value) -> None:
  """`value` as indented JSON at `target`, whole (`write_bytes`)."""
  write_bytes(target, json.dumps(value, indent=2).encode())


def read_json(source) -> dict | None:
  """The JSON object at `source`, or None where there is no such file."""
  source = epath.Path(source)
  return json.loads(source.read_text()) if source.exists() else None


class LockedError(RuntimeError):
  """Another live run holds the workdir."""


def _holder() -> dict:
  return dict(host=socket.gethostname(), pid=os.getpid(),
              started=datetime.datetime.now().isoformat(timespec="seconds"))


def _describe(holder: dict) -> str:
  if not holder:
    return "another run"
  return (f"the run of pid {holder.get('pid')} on {holder.get('host')} started "
          f"{holder.get('started')}")


def _refused(workdir, holder: dict) -> LockedError:
  return LockedError(f"--workdir={workdir} is in use by {_describe(holder)}; wait for that run "
                     "to end, stop it, or use another --workdir.")


def _taking_over(lock, holder: dict) -> None:
  print(f"warning: taking over {lock} from {_describe(holder)}, which no longer runs.",
        file=sys.stderr, flush=True)


class Lock:
  """Context manager holding `workdir/run.lock` for this process (see the module's docstring);
  LockedError when another live run holds it. In a multi-process run process 0 holds it for
  all (`parallel.held_by_main`)."""

  def __init__(self, workdir):
    self.workdir = path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._fd = None
    self._bucket = None  # (blob, renewal thread, stop event) of a bucket lock

  def __enter__(self):
    if is_url(self.path):
      self._hold_object()
    else:
      self._hold_file()
    return self

  def __exit__(self, *exc):
    self.release()

  def _hold_file(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_fd(fd)
      os.close(fd)
      raise _refused(self.workdir, holder) from None
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
        raise
      raise LockedError(
          f"--workdir={self.workdir} is on a filesystem that refuses file locks ({e.strerror}): "
          "mount it with locking (Lustre: -o flock; NFS: without nolock) or use a bucket "
          "(gs://...) as --workdir.") from None
    previous = _read_fd(fd)
    if previous.get("pid") not in (None, os.getpid()) or previous.get("host") not in (
        None, socket.gethostname()):
      _taking_over(self.path, previous)
    with writes(self.path):
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    self._fd = fd

  def _hold_object(self) -> None:
    from google.api_core import exceptions
    from google.cloud import storage

    bucket, _, name = str(self.path).removeprefix("gs://").partition("/")
    blob = storage.Client().bucket(bucket).blob(name)
    with writes(self.path):
      try:
        blob.upload_from_string(json.dumps(_holder()), if_generation_match=0)
      except exceptions.PreconditionFailed:
        blob.reload()
        holder = json.loads(blob.download_as_text() or "{}")
        if time.time() - blob.updated.timestamp() < STALE_S:
          raise _refused(self.workdir, holder) from None
        _taking_over(self.path, holder)  # not renewed for STALE_S: its run is gone
        blob.upload_from_string(json.dumps(_holder()), if_generation_match=blob.generation)
      except exceptions.NotFound:
        raise StorageError(self.path, "the bucket does not exist") from None
    stop = threading.Event()
    thread = threading.Thread(target=self._renew, args=(blob, stop), name="workdir-lock",
                              daemon=True)
    self._bucket = (blob, thread, stop)
    thread.start()

  @staticmethod
  def _renew(blob, stop) -> None:
    while not stop.wait(RENEW_S):
      try:  # rewritten in place: its update time says the run lives
        blob.upload_from_string(blob.download_as_text(), if_generation_match=blob.generation)
      except Exception as e:  # noqa: BLE001 - storage errors; the run itself reports them
        print(f"warning: could not renew the workdir lock ({type(e).__name__}).",
              file=sys.stderr, flush=True)

  def release(self) -> None:
    """Gives the workdir back (also from a process about to exit at once). A lock file is
    emptied, not removed: a run that opened it just before could otherwise hold a lock on a
    file the next run no longer sees."""
    if self._fd is not None:
      with contextlib.suppress(OSError):
        os.ftruncate(self._fd, 0)
      os.close(self._fd)  # releases the flock
      self._fd = None
    if self._bucket is not None:
      blob, thread, stop = self._bucket
      self._bucket = None
      stop.set()
      with contextlib.suppress(Exception):
        blob.delete(if_generation_match=blob.generation)


def _read_fd(fd: int) -> dict:
  try:
    text = os.pread(fd, 4096, 0).decode()
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {}
