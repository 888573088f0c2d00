"""Importing unmix_jax (host_memory.keep_freed_memory()): freed step-sized buffers are reused
without page faults."""

import subprocess
import sys

import pytest

# Allocates, fills and frees a 64 MB block twice with the C allocator (as consecutive train steps
# do with their temporaries) and prints the page faults of the second time.
PROBE = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
  import unmix_jax
  assert unmix_jax.host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def step():
  block = libc.malloc(64 << 20)
  ctypes.memset(block, 1, 64 << 20)
  libc.free(block)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_step_sized_buffer_is_reused_without_page_faults():
  faults = {mode: int(subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                                     text=True, check=True).stdout)
            for mode in ("default", "keep")}
  assert faults["default"] > 10_000  # 64 MB of fresh 4 KiB pages
  assert faults["keep"] < 100
