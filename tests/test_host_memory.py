"""host_memory.keep_freed_memory(): freed step-sized buffers are reused without page faults; and
importing the package changes no allocator setting and builds nothing."""

import os
import subprocess
import sys

import pytest

# Allocates, fills and frees a 64 MB block twice with the C allocator (as consecutive train steps
# do with their temporaries) and prints the page faults of the second time. Mode "keep" sets
# the allocator first; mode "import" only imports the package and builds a model.
PROBE = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
  from unmix_jax import host_memory
  assert host_memory.keep_freed_memory()
if sys.argv[1] == "import":
  import unmix_jax, unmix_jax.models
  from unmix_jax.configs import unet
  unmix_jax.models.build(unet.get_config("smoke").model, 0)
  assert "unmix_jax.cpu" not in sys.modules, "the CPU backend was imported"
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
def test_a_freed_step_sized_buffer_is_reused_without_page_faults_once_asked(tmp_path):
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), JAX_PLATFORMS="cpu")
  faults = {mode: int(subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                                     text=True, check=True, env=env).stdout)
            for mode in ("default", "keep", "import")}
  assert faults["default"] > 10_000  # 64 MB of fresh 4 KiB pages
  assert faults["keep"] < 100
  assert faults["import"] > 10_000  # importing left the allocator alone
  assert not os.listdir(tmp_path)  # and built nothing (no oneDNN library in the cache)


def test_the_allocator_setting_is_for_cpu_runs_only():
  from unmix_jax import host_memory

  assert host_memory.cpu_only({"JAX_PLATFORMS": "cpu"})
  assert not host_memory.cpu_only({"JAX_PLATFORMS": "cuda,cpu"})
  assert not host_memory.cpu_only({"JAX_PLATFORMS": "tpu"})
  assert host_memory.cpu_only({})  # this machine: no accelerator plugin installed
