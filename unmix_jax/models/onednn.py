"""oneDNN's direct convolution for the 3x3 stride-1 convs, through XLA's FFI (conv_impl='onednn').

On the CPU these convs hold most of the U-Net's FLOPs, and every XLA formulation of them (stock,
im2col, taps, Winograd) runs 2-3x slower than oneDNN's direct kernels, the ones PyTorch uses
(README, Performance). `onednn_conv.cc` wraps the forward and backward primitives as two FFI
custom calls; it is compiled on first use (g++, oneDNN 2.x: `apt install g++ libdnnl-dev`) into
`~/.cache/unmix_jax/` and loaded once per process.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp

_SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
_HINT = ("config.train.conv_impl='onednn' needs g++ and oneDNN 2.x headers and library "
         "(Debian/Ubuntu: apt install g++ libdnnl-dev), or use conv_impl='cpu'")


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(root) / "unmix_jax"


@functools.lru_cache(maxsize=None)
def load() -> None:
  """Builds (once per source and jax version) and registers the custom calls; a ValueError with
  one line naming the fix when the compiler or oneDNN is missing."""
  digest = hashlib.sha256(_SOURCE.read_bytes() + jax.__version__.encode()).hexdigest()[:16]
  library = _cache_dir() / f"onednn_conv-{digest}.so"
  if not library.exists():
    library.parent.mkdir(parents=True, exist_ok=True)
    partial = library.with_suffix(f".{os.getpid()}.tmp")  # concurrent first uses do not collide
    command = [os.environ.get("CXX", "g++"), "-O2", "-shared", "-fPIC", "-std=c++17", "-w",
               f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(partial), "-ldnnl"]
    try:
      done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
      raise ValueError(f"{_HINT}: no compiler {command[0]!r}.") from None
    if done.returncode != 0:
      last = (done.stderr.strip().splitlines() or ["?"])[-1]
      raise ValueError(f"{_HINT}: building {_SOURCE.name} failed ({last}).")
    os.replace(partial, library)
  try:
    handle = ctypes.cdll.LoadLibrary(str(library))
  except OSError as e:
    raise ValueError(f"{_HINT}: {e}.") from None
  jax.ffi.register_ffi_target("unmix_onednn_conv3x3_fwd", jax.ffi.pycapsule(handle.DnnlConvFwd),
                              platform="cpu")
  jax.ffi.register_ffi_target("unmix_onednn_conv3x3_bwd", jax.ffi.pycapsule(handle.DnnlConvBwd),
                              platform="cpu")


def handles(x_shape, kernel_shape, strides, dtype) -> bool:
  """Whether `conv3x3` runs this conv and is the faster choice: 3x3, stride 1, float32, at 8x8
  or larger (at 4x4 and 2x2 the im2col products beat it) and not on the RGB input."""
  _, h, w, cin = x_shape
  return (tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
          and jnp.dtype(dtype) == jnp.float32 and min(h, w) >= 8 and cin > 4)


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'SAME' 3x3 stride-1 conv. x [B, H, W, Cin] float32, kernel [3, 3, Cin, Cout] ->
  [B, H, W, Cout]; equal to lax's conv to float32 rounding. `load()` must have run."""
  b, h, w, _ = x.shape
  out = jax.ShapeDtypeStruct((b, h, w, kernel.shape[-1]), x.dtype)
  return jax.ffi.ffi_call("unmix_onednn_conv3x3_fwd", out)(x, kernel)


def _fwd(x, kernel):
  return conv3x3(x, kernel), (x, kernel)


def _bwd(residuals, dy):
  x, kernel = residuals
  shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))
  dx, dkernel = jax.ffi.ffi_call("unmix_onednn_conv3x3_bwd", shapes)(x, kernel, dy)
  return dx, dkernel


conv3x3.defvjp(_fwd, _bwd)
