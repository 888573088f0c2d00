"""How the process's C allocator treats XLA:CPU's step buffers.

XLA:CPU allocates every step's temporaries anew (tens of MB). With glibc's defaults, blocks that
large are mmap-ed, or come from per-thread arenas that mmap them, and go back to the kernel when
freed, so each step touches fresh pages and pays their page faults. `keep_freed_memory()` makes
glibc serve them from one heap and keep what is freed, so later steps reuse warm pages. The cost
is that the process holds on to its peak heap size until it exits. It must run before JAX
starts its CPU threads, whose arenas it cannot change afterwards: the train, benchmark, compare
and ablate commands call it first thing (docs/performance.md has the measurements).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def cpu_only(env=os.environ) -> bool:
  """Whether JAX will run on the CPU alone, told before JAX starts: JAX_PLATFORMS says so, or
  no accelerator plugin (CUDA, ROCm, TPU) is installed. GPU and TPU runtimes allocate from many
  threads of their own, which one arena would serialise."""
  platforms = env.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  from importlib import metadata, util

  return not metadata.entry_points(group="jax_plugins") and util.find_spec("libtpu") is None


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
  """Sets glibc's malloc to one arena, no mmap-ed blocks and no trimming of the heap; once per
  process. True when glibc accepted all three; False elsewhere (macOS, musl) and where JAX will
  run on an accelerator (`cpu_only`), where it does nothing."""
  if not sys.platform.startswith("linux") or not cpu_only():
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim
  return all([mallopt(param, value) == 1 for param, value in settings])
