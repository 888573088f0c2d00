"""Data parallelism over every device of every process, and what processes decide together.

One 1-D mesh with axis "data" spans all devices. Batches (index arrays [B, 2]) are split along
it; parameters, optimizer state and the uint8 image arrays are replicated. The jitted steps are
the same on 1 or N devices: XLA's partitioner follows the input shardings and inserts the
all-reduces of the loss mean, the gradients and BatchNorm's batch statistics, so a global batch
gives the same numbers as on one device (up to summation order).

Several processes (one per host, or several on one machine): every process runs the same
program on the same global arrays, built from its own host copy (`replicate`, `shard_batch`:
every process holds the whole index batch and hands over the rows of its own devices). Files
are written by process 0; what one process finds (a held lock, a stop request, an error) is
shared so that every process takes the same branch (`main_decides`, `max_over_processes`).
`initialize()` joins the processes from the environment (see `launch_settings`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"
# How long a process waits for the others (and the coordinator) to join, in seconds.
JOIN_TIMEOUT_S = 300
# A process that stops unannounced is noticed by the others at their next collective (its
# sockets close) or, where they wait on the coordinator, once it misses heartbeats this long.
HEARTBEAT_TIMEOUT_S = 30
# What the runtime's errors say when another process of the run is gone.
_LOST_PROCESS = ("gloo", "connection reset by peer", "connection closed by peer", "heartbeat",
                 "coordination service", "barrier")
_MESSAGE_BYTES = 2048  # the longest error message one process passes to the others


class LaunchError(RuntimeError):
  """The environment describes a multi-process launch that cannot start; the message names the
  variable and the fix."""


class ProcessLost(RuntimeError):
  """Another process of a multi-process run stopped (`lost_process(error)`); the message names
  the last complete checkpoint and how to resume."""

  def __init__(self, error: BaseException, saved_step: int | None, directory: str):
    where = (f"the last complete checkpoint is step {saved_step} in {directory}"
             if saved_step is not None else "no checkpoint was completed yet")
    super().__init__(f"another process of this run stopped ({first_line(error)}); {where}; "
                     "start every process again with the same command to resume.")


def lost_process(e: BaseException) -> bool:
  """Whether `e` is the runtime reporting that another process of this run is gone."""
  return jax.process_count() > 1 and any(s in str(e).lower() for s in _LOST_PROCESS)


def launch_settings(env=os.environ) -> dict | None:
  """{"coordinator_address", "num_processes", "process_id"} from JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID; {} where a SLURM or Open MPI job of several tasks
  describes the launch (jax.distributed reads it); None for a single process. Raises
  LaunchError for a half-set or inconsistent environment."""
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  given = {name: env[name] for name in names if env.get(name, "") != ""}
  if not given:
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or env.get(
        "OMPI_COMM_WORLD_SIZE") or "1"
    return {} if tasks.isdigit() and int(tasks) > 1 else None
  missing = [name for name in names if name not in given]
  if missing:
    raise LaunchError(
        f"{', '.join(f'{n}={given[n]}' for n in given)} is set but {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not; set all three for every process "
        "(README: several processes), or none for a single process.")
  address = given["JAX_COORDINATOR_ADDRESS"]
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise LaunchError(f"JAX_COORDINATOR_ADDRESS={address} is not host:port (e.g. "
                      "127.0.0.1:12355, the address of process 0 and a free port).")
  count, index = given["JAX_NUM_PROCESSES"], given["JAX_PROCESS_ID"]
  if not count.isdigit() or int(count) < 1:
    raise LaunchError(f"JAX_NUM_PROCESSES={count} must be a whole number >= 1.")
  if not index.isdigit() or int(index) >= int(count):
    raise LaunchError(f"JAX_PROCESS_ID={index} must be a whole number from 0 to "
                      f"{int(count) - 1} (JAX_NUM_PROCESSES={count}).")
  return dict(coordinator_address=address, num_processes=int(count), process_id=int(index))


def initialize(env=os.environ) -> None:
  """Joins a multi-process run when the environment describes one (`launch_settings`); a
  no-op otherwise. LaunchError where the coordinator does not answer, or the processes do not
  all join, within JOIN_TIMEOUT_S."""
  settings = launch_settings(env)
  if settings is None or jax.distributed.is_initialized():
    return
  # The loop handles SIGTERM itself (preemption.py) and agrees on the stop step; JAX's own
  # preemption service would install a competing SIGTERM handler.
  jax.config.update("jax_enable_preemption_service", False)
  deadline = time.time() + JOIN_TIMEOUT_S
  if settings.get("process_id", 0) != 0:
    # JAX's client ends the process with a fatal error (a C++ stack dump) when its coordinator
    # never answers: wait for the coordinator's port here first.
    _wait_for(settings["coordinator_address"], deadline)
  try:
    jax.distributed.initialize(**settings, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                               initialization_timeout=max(1, int(deadline - time.time())))
  except Exception as e:  # noqa: BLE001 - the runtime reports failures as XlaRuntimeError
    raise LaunchError(f"the processes did not all join ({first_line(e)}); start every process "
                      "with the same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, each with "
                      "its own JAX_PROCESS_ID.") from None


def _wait_for(address: str, deadline: float) -> None:
  host, _, port = address.rpartition(":")
  while True:
    try:
      socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
      return
    except OSError as e:
      if time.time() > deadline:
        raise LaunchError(
            f"the coordinator at JAX_COORDINATOR_ADDRESS={address} did not answer within "
            f"{JOIN_TIMEOUT_S} s ({e.strerror or e}); start process 0 (JAX_PROCESS_ID=0) on "
            "that host and port, or correct the address.") from None
      time.sleep(0.5)


def first_line(e: BaseException) -> str:
  """The first line of an error's message (the runtime's can run to pages)."""
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def local_launch(processes: int, env=os.environ) -> list[dict]:
  """The environment of each process of a run on this machine (`unmix launch`): the
  coordinator on 127.0.0.1 at a free port."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
          for i in range(processes)]


def as_launched() -> None:
  """In a process `unmix launch` starts, before it runs: asks Linux for SIGTERM should
  the launcher die (prctl PR_SET_PDEATHSIG)."""
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def make_mesh() -> Mesh:
  # Auto axes: the partitioner propagates the batch sharding through gathers, convs and the
  # reductions by itself, so the model code carries no sharding annotations.
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Split along the batch axis: the first, or the second of a stack [K, B, ...]."""
  return NamedSharding(mesh, PartitionSpec(None, AXIS) if stacked else PartitionSpec(AXIS))


def _global(x, sharding: NamedSharding) -> jax.Array:
  """A global array from this process's whole copy of `x` (host numpy or a local jax.Array):
  each process places only the pieces of its own devices, so nothing crosses processes."""
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def replicate(tree, mesh: Mesh):
  """Every leaf (host numpy or local arrays, the same on every process) replicated over the
  mesh."""
  return jax.tree.map(lambda x: _global(x, replicated(mesh)), tree)


def shard_batch(idx: np.ndarray, mesh: Mesh) -> jax.Array:
  """Global index batch [B, 2], or a stack of them [K, B, 2] for one call of K steps (the same
  on every process) -> array split along "data" on its batch axis."""
  return _global(idx, batch_sharding(mesh, idx.ndim == 3))


def to_host(tree):
  """Numpy copies of the leaves, on every process: a leaf split across processes (per-pair
  metrics) is gathered first."""
  def fetch(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
  return jax.tree.map(fetch, tree)


def max_over_processes(value: int) -> int:
  """The largest of every process's `value`, on every process; each process must call it at
  the same point (it is a collective where there are several)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))


def main_decides(fn, errors: tuple[type[Exception], ...]):
  """Runs `fn()` on process 0 only and returns its result there (None elsewhere). Where it
  raises one of `errors` (types made from their message alone), every process raises that
  error with process 0's message, so that no process waits for one that has stopped."""
  if jax.process_count() == 1:
    return fn()
  result, error = None, None
  if is_main_process():
    try:
      result = fn()
    except errors as e:
      error = e
  text = _broadcast_text(f"{type(error).__name__}\n{error}" if error is not None else "")
  if error is not None:
    raise error
  if text:
    name, _, message = text.partition("\n")
    raise next(e for e in errors if e.__name__ == name)(message)
  return result


def main_first(fn, errors: tuple[type[Exception], ...]):
  """`fn()` on process 0, then (once it succeeded) on every other process: for work that
  must not run everywhere at once, such as preparing a dataset in a shared directory."""
  result = main_decides(fn, errors)
  return result if is_main_process() else fn()


def _broadcast_text(text: str) -> str:
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  raw = text.encode()[:_MESSAGE_BYTES]
  data[:len(raw)] = np.frombuffer(raw, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(out[out != 0].tobytes()).decode(errors="replace")


@contextlib.contextmanager
def held_by_main(context, errors: tuple[type[Exception], ...]):
  """Enters the context manager `context` on process 0 only (the workdir lock); an error it
  raises there is raised on every process (`main_decides`)."""
  main_decides(context.__enter__, errors)
  try:
    yield
  finally:
    if is_main_process():
      context.__exit__(None, None, None)


def barrier(name: str) -> None:
  """Every process waits here until all have arrived."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def is_main_process() -> bool:
  return jax.process_index() == 0
