"""Data parallelism over every device of every process, and what processes decide together.

One 1-D mesh with axis "data" spans all devices. Batches (index arrays [B, 2]) are split along
it; parameters, optimizer state and the uint8 image arrays are replicated. The jitted steps are
the same on 1 or N devices: XLA's partitioner follows the input shardings and inserts the
all-reduces of the loss mean, the gradients and BatchNorm's batch statistics, so a global batch
gives the same numbers as on one device (up to summation order).

Several processes (one per host, or per GPU): every process runs the same program on the same
global arrays, built from its own host copy (`replicate`, `shard_batch`). Files are written by
process 0. `initialize()` joins the processes as the scheduler started them (`launch_settings`:
JAX_* variables, SLURM, Open MPI, a Kubernetes indexed Job, or JAX's own detection where
UNMIX_JOIN=jax, for TPU pod slices). What they must agree on goes through the key-value store
of the coordination service that jax.distributed runs, on the hosts: the config they were
started with (`check_same_run`), when to stop (`StopAgreement`), an error one process found
(`main_decides`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
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
                 "coordination service", "barrier", "deadline_exceeded")


class LaunchError(RuntimeError):
  """The environment describes a multi-process launch that cannot start; the message names the
  variable and the fix."""


class ProcessLost(RuntimeError):
  """Another process of a multi-process run stopped (`lost_process(error)`); the message names
  the last complete checkpoint and how to resume."""

  def __init__(self, error: BaseException, saved_step: int | None, directory):
    where = (f"the last complete checkpoint is step {saved_step} in {directory}"
             if saved_step is not None else "no checkpoint was completed yet")
    super().__init__(f"another process of this run stopped ({first_line(error)}); {where}; "
                     "start every process again with the same command to resume.")


class RemoteError(RuntimeError):
  """What another process of the run failed with (`main_decides`): its one line; `kind` is the
  name of its type, which decides the exit code."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


def lost_process(e: BaseException) -> bool:
  """Whether `e` is the runtime reporting that another process of this run is gone."""
  return jax.process_count() > 1 and any(s in str(e).lower() for s in _LOST_PROCESS)


def first_line(e: BaseException) -> str:
  """The first line of an error's message (the runtime's can run to pages)."""
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _whole(env, name: str, low: int = 0) -> int:
  value = env[name]
  if not value.isdigit() or int(value) < low:
    raise LaunchError(f"{name}={value} must be a whole number >= {low}.")
  return int(value)


def _first_host(nodelist: str) -> str:
  """The first host of a SLURM node list: 'node[001-004,010],gpu7' -> 'node001'."""
  match = re.match(r"([^,\[]+)(?:\[([^,\-\]]+))?", nodelist)
  return match[1] + (match[2] or "")


def launch_settings(env=os.environ) -> dict | None:
  """How this process joins its run, for `jax.distributed.initialize`: {"coordinator_address",
  "num_processes", "process_id", "local_device_ids"}; {} where JAX detects the cluster itself
  (UNMIX_JOIN=jax: TPU pod slices); None for a single process. From, in order: JAX_* variables
  (the process id may come from a Kubernetes indexed Job's JOB_COMPLETION_INDEX or Open MPI's
  rank); a SLURM step (srun); Open MPI 4 (mpirun). LaunchError, naming the fix, for half a
  launch: a task count without a coordinator, sbatch without srun, Open MPI 5."""
  if env.get("UNMIX_JOIN") == "jax":
    return {}
  address, count = env.get("JAX_COORDINATOR_ADDRESS"), env.get("JAX_NUM_PROCESSES")
  index = env.get("JAX_PROCESS_ID") or env.get("JOB_COMPLETION_INDEX") or env.get(
      "OMPI_COMM_WORLD_RANK")
  if address or count or env.get("JAX_PROCESS_ID"):
    count = count or env.get("OMPI_COMM_WORLD_SIZE")
    missing = [name for name, value in (("JAX_COORDINATOR_ADDRESS", address),
                                        ("JAX_NUM_PROCESSES", count),
                                        ("JAX_PROCESS_ID", index)) if not value]
    if count == "1" and not address:
      return None
    if missing:
      given = ", ".join(f"{n}={env[n]}" for n in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                                                  "JAX_PROCESS_ID") if env.get(n))
      raise LaunchError(
          f"{given} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
          "not; set all three for every process (the process id may come from "
          "JOB_COMPLETION_INDEX), or none for a single process (docs/parallel.md).")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise LaunchError(f"JAX_COORDINATOR_ADDRESS={address} is not host:port (e.g. "
                        "127.0.0.1:12355, the address of process 0 and a free port).")
    values = dict(env, JAX_NUM_PROCESSES=count, JAX_PROCESS_ID=index)
    num, pid = _whole(values, "JAX_NUM_PROCESSES", 1), _whole(values, "JAX_PROCESS_ID")
    if pid >= num:
      raise LaunchError(f"JAX_PROCESS_ID={pid} must be a whole number from 0 to {num - 1} "
                        f"(JAX_NUM_PROCESSES={num}).")
    return dict(coordinator_address=address, num_processes=num, process_id=pid,
                local_device_ids=local_device_ids(env))
  if env.get("JOB_COMPLETION_INDEX"):
    raise LaunchError(
        f"JOB_COMPLETION_INDEX={env['JOB_COMPLETION_INDEX']} (a Kubernetes indexed Job) but no "
        "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES: give every pod both (pod 0's headless "
        "Service name and a port; the Job's completions), as docs/parallel.md's JobSet does.")
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    if not env.get("SLURM_STEP_NUM_TASKS"):
      raise LaunchError(
          f"started inside a SLURM job of SLURM_NTASKS={env['SLURM_NTASKS']} tasks but not by "
          "srun: this one process cannot train as that many; start it with `srun unmix train "
          "...` (docs/parallel.md), or ask for --ntasks=1.")
    tasks = _whole(env, "SLURM_STEP_NUM_TASKS", 1)
    if tasks == 1:
      return None
    port = env.get("JAX_COORDINATOR_PORT") or str(
        int(env["SLURM_JOB_ID"]) % 2 ** 12 + 65535 - 2 ** 12 + 1)  # as JAX's own SLURM support
    return dict(coordinator_address=f"{_first_host(env['SLURM_STEP_NODELIST'])}:{port}",
                num_processes=tasks, process_id=_whole(env, "SLURM_PROCID"),
                local_device_ids=local_device_ids(env))
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    uri = env.get("OMPI_MCA_orte_hnp_uri")
    if not uri:
      raise LaunchError(
          "Open MPI 5 (PMIx) started this process, which JAX does not detect: give every rank "
          "JAX_COORDINATOR_ADDRESS=<host of rank 0>:<free port> (mpirun -x "
          "JAX_COORDINATOR_ADDRESS=...); the rank and size come from Open MPI.")
    launcher = re.search(r"tcp6?://\[?([^,\]:]+)", uri)[1]
    port = env.get("JAX_COORDINATOR_PORT") or str(
        int(uri.split(".")[0]) // 2 ** 12 % 2 ** 12 + 65535 - 2 ** 12 + 1)  # as JAX's own
    return dict(coordinator_address=f"{launcher}:{port}",
                num_processes=_whole(env, "OMPI_COMM_WORLD_SIZE", 1),
                process_id=_whole(env, "OMPI_COMM_WORLD_RANK"),
                local_device_ids=local_device_ids(env))
  return None


def _tasks_on_this_node(env) -> int:
  """How many tasks of a SLURM step share this node ("2(x3),1" per node, SLURM_NODEID's)."""
  counts = []
  for part in env.get("SLURM_STEP_TASKS_PER_NODE", "1").split(","):
    match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
    if match:
      counts += [int(match[1])] * int(match[2] or 1)
  node = int(env.get("SLURM_NODEID", "0") or 0)
  return counts[node] if node < len(counts) else 1


def local_device_ids(env=os.environ) -> list[int] | None:
  """The GPUs this process drives, as JAX numbers them (None: every one it sees): an explicit
  JAX_LOCAL_DEVICE_IDS; else every visible one (CUDA_VISIBLE_DEVICES, which SLURM sets to a
  task's GPUs and CUDA numbers from 0), or its share of them where several SLURM tasks of a
  step share a node and each sees them all. JAX's own SLURM and Open MPI detection would use
  the local task id alone: GPU 0 only for a task that has a whole 8-GPU node."""
  if env.get("JAX_LOCAL_DEVICE_IDS"):
    return [int(x) for x in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if not visible:
    return None
  tasks, local = _tasks_on_this_node(env), int(env.get("SLURM_LOCALID", "0") or 0)
  if tasks > 1 and len(visible) >= tasks:
    share = len(visible) // tasks
    return list(range(local * share, (local + 1) * share))
  return list(range(len(visible)))


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
    # The settings are complete: JAX's own detection (which would narrow each task to one GPU)
    # stays out of it; with UNMIX_JOIN=jax it is all there is.
    jax.distributed.initialize(**settings, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                               initialization_timeout=max(1, int(deadline - time.time())),
                               cluster_detection_method="deactivate" if settings else None)
  except Exception as e:  # noqa: BLE001 - the runtime reports failures as XlaRuntimeError
    raise LaunchError(f"the processes did not all join ({first_line(e)}); start every process "
                      "with the same coordinator and process count, each with its own process "
                      "id (docs/parallel.md).") from None


def _wait_for(address: str, deadline: float) -> None:
  host, _, port = address.rpartition(":")
  while True:
    try:
      socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
      return
    except OSError as e:
      if time.time() > deadline:
        raise LaunchError(
            f"the coordinator at {address} did not answer within {JOIN_TIMEOUT_S} s "
            f"({e.strerror or e}); start process 0 on that host and port, or correct the "
            "address.") from None
      time.sleep(0.5)


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


def _store():
  """The key-value store of jax.distributed's coordination service (process 0 hosts it): host
  to host, no device computation. JAX has no public handle on it (Orbax reaches it the same
  way); every use is in this module."""
  from jax._src import distributed

  return distributed.global_state.client


def _gather_texts(key: str, text: str) -> list[str]:
  """Every process's `text`, in process order, through the store (each calls it once with the
  same `key`, a name used once in a run)."""
  store, timeout = _store(), JOIN_TIMEOUT_S * 1000
  store.key_value_set(f"unmix/{key}/{jax.process_index()}", text)
  return [store.blocking_key_value_get(f"unmix/{key}/{i}", timeout)
          for i in range(jax.process_count())]


def _first_difference(ours, theirs, prefix: str = "") -> str | None:
  if isinstance(ours, dict) and isinstance(theirs, dict):
    for key in sorted(set(ours) | set(theirs)):
      found = _first_difference(ours.get(key), theirs.get(key), f"{prefix}{key}.")
      if found:
        return found
    return None
  return None if ours == theirs else f"{prefix[:-1]} is {theirs!r} on process 0 and {ours!r}"


def check_same_run(config, workdir) -> None:
  """Every process was started with the same config and workdir, else each raises a
  config_checks.ConfigError naming the first field that differs."""
  if jax.process_count() == 1:
    return
  from unmix_jax.config_checks import ConfigError

  ours = {"config": json.loads(config.to_json()), "workdir": str(workdir)}
  texts = _gather_texts("started_with", json.dumps(ours, sort_keys=True))
  for index, text in enumerate(texts):
    found = _first_difference(json.loads(text), json.loads(texts[0]))
    if found:
      raise ConfigError(f"the processes were started with different settings: {found} on "
                        f"process {index}; start every process with the same command.")


def check_shared(workdir) -> None:
  """Every process sees what process 0 writes in `workdir` (a token), else every process raises
  config_checks.ConfigError: a workdir on each host's own disk would leave every host a part
  of each checkpoint and none a whole one."""
  if jax.process_count() == 1:
    return
  from unmix_jax import workdir as workdir_lib
  from unmix_jax.config_checks import ConfigError

  token_file = workdir_lib.path(workdir) / ".shared_by_the_processes"

  def write_token() -> str:
    token = f"{socket.gethostname()} {os.getpid()} {time.time_ns()}"
    workdir_lib.write_bytes(token_file, token.encode())
    return token

  token = main_decides("shared_token", write_token, share=True)
  seen = token_file.read_text() if token_file.exists() else ""
  blind = [i for i, text in enumerate(_gather_texts("saw_token", str(seen == token)))
           if text != "True"]
  if blind:
    raise ConfigError(
        f"--workdir={workdir} is not shared by the processes: process(es) "
        f"{', '.join(map(str, blind))} do not see what process 0 wrote there, as where each "
        "host has a disk of its own; use a folder every host reaches (a shared filesystem) or a "
        "bucket (gs://...) (docs/parallel.md).")


class StopAgreement:
  """`agree(signum) -> signum` for `preemption.StopRequests` with several processes: every
  process calls it at the same points (after each train call, between evaluation batches, at
  an epoch's end) and gets the signal number back at the same one. A process that caught a
  signal posts it to the store at once. Every READ_EVERY-th call is a check that reads the
  store, host to host (the device is never asked): each process, at its first check that finds
  a signal posted, proposes to stop MARGIN checks later and goes on; at its proposal it waits
  for every proposal and all stop at the largest. No process waits before its proposal, when
  another may still need its next call: each call's collectives keep the processes within two
  calls of each other, so by then every proposal is in."""

  # A read on every call cost the 2-process :cpu loop 10% of its images/s on 2 cores (192
  # against 213, docs/parallel.md). A stop comes at most (MARGIN + 1) * READ_EVERY calls after
  # the signal; (MARGIN - 1) * READ_EVERY >= 2 keeps every proposal in before it is awaited.
  MARGIN, READ_EVERY = 2, 2

  def __init__(self):
    self.calls, self.checks, self.posted = 0, 0, False
    self.proposal = self.stop_at = self.signum = None

  def __call__(self, signum: int | None) -> int:
    if jax.process_count() == 1:
      return int(signum or 0)
    store = _store()
    if signum and not self.posted:
      store.key_value_set(f"unmix/signal/{jax.process_index()}", str(signum))
      self.posted = True
    self.calls += 1
    if self.calls % self.READ_EVERY:
      return 0
    self.checks += 1
    if self.proposal is None and store.key_value_dir_get("unmix/signal/"):
      self.proposal = self.checks + self.MARGIN
      store.key_value_set(f"unmix/stop_at/{jax.process_index()}", str(self.proposal))
    elif self.proposal is not None and self.stop_at is None and self.checks >= self.proposal:
      self.stop_at = max(int(store.blocking_key_value_get(f"unmix/stop_at/{i}",
                                                          JOIN_TIMEOUT_S * 1000))
                         for i in range(jax.process_count()))
      self.signum = max(int(value) for _, value in store.key_value_dir_get("unmix/signal/"))
    return self.signum if self.stop_at is not None and self.checks >= self.stop_at else 0


def main_decides(name: str, fn, share: bool = False):
  """Runs `fn()` on process 0 only and returns its result there (elsewhere None, or with
  `share` the same result, which must be JSON). Whatever it raises there, every other process
  raises RemoteError with its type's name and its message (its one line), so that no process
  waits for one that has stopped. `name`: what is decided, once in a run."""
  if jax.process_count() == 1:
    return fn()
  result, error = None, None
  if is_main_process():
    try:
      result = fn()
    except Exception as e:  # noqa: BLE001 - every error reaches the other processes
      error = e
  said = "!" + json.dumps([type(error).__name__, str(error)]) if error is not None else (
      json.dumps(result) if share else "null")
  text = _gather_texts(name, said)[0]
  if error is not None:
    raise error
  if text.startswith("!"):
    raise RemoteError(*json.loads(text[1:]))
  return result if is_main_process() else json.loads(text)


def main_first(name: str, fn):
  """`fn()` on process 0, then (once it succeeded) on every other process: for work that
  must not run everywhere at once, such as preparing a dataset in a shared directory."""
  result = main_decides(name, fn)
  return result if is_main_process() else fn()


@contextlib.contextmanager
def held_by_main(context):
  """Enters the context manager `context` on process 0 only (the workdir lock); an error it
  raises there is raised on every process (`main_decides`)."""
  main_decides("lock", context.__enter__)
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
