"""oneDNN's convolutions and BatchNorm + ReLU through XLA's FFI (conv_impl='onednn').

On the CPU the 3x3 convs hold most of the U-Net's FLOPs, and every XLA formulation of them
(stock, im2col, taps, Winograd) runs slower than oneDNN's direct kernels, the ones PyTorch
uses (docs/performance.md). `onednn_ops.cc` wraps the forward and backward primitives as FFI
custom calls: convolution, and training-mode batch normalisation with its ReLU (which XLA runs
as several passes over the activation). It is compiled on first use (g++, and oneDNN 3.x from
Intel's `onednn-cpu-gomp` wheels, a dependency on Linux x86-64) into `~/.cache/unmix_jax/` and
loaded once per process."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import site
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from unmix_jax.cpu import padding

_SOURCE = pathlib.Path(__file__).with_name("onednn_ops.cc")
_HINT = ("config.train.conv_impl='onednn' needs g++ and oneDNN 3.x (apt install g++; "
         "pip install onednn-cpu-gomp onednn-devel-cpu-gomp), or use conv_impl='cpu'")


def _onednn_flags() -> list[str]:
  """Compiler flags for the oneDNN to build against: the one pip installed for this Python
  where present (onednn-cpu-gomp, oneDNN 3.2: into the environment, or under the user's base
  with `pip install --user`), else the system's (Debian 12's libdnnl-dev is 2.6, whose kernels
  are slower)."""
  for prefix in (pathlib.Path(sys.prefix), pathlib.Path(site.getuserbase())):
    lib = prefix / "lib"
    if (prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists() and any(
        lib.glob("libdnnl.so*")):
      return [f"-I{prefix / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-ldnnl"]
  return ["-ldnnl"]


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(root) / "unmix_jax"


class _Version(ctypes.Structure):
  _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]


@functools.lru_cache(maxsize=None)
def load() -> ctypes.CDLL:
  """Builds (once per source and jax version) and registers the custom calls; a ValueError with
  one line naming the fix when the compiler or oneDNN is missing."""
  flags = _onednn_flags()
  digest = hashlib.sha256(
      _SOURCE.read_bytes() + jax.__version__.encode() + " ".join(flags).encode()).hexdigest()[:16]
  library = _cache_dir() / f"onednn_ops-{digest}.so"
  if not library.exists():
    library.parent.mkdir(parents=True, exist_ok=True)
    partial = library.with_suffix(f".{os.getpid()}.tmp")  # concurrent first uses do not collide
    command = [os.environ.get("CXX", "g++"), "-O2", "-shared", "-fPIC", "-std=c++17", "-w",
               f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(partial), *flags]
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
  jax.ffi.register_ffi_target("unmix_onednn_conv_fwd", jax.ffi.pycapsule(handle.DnnlConvFwd),
                              platform="cpu")
  for name, symbol in (("conv_bwd_data", handle.DnnlConvBwdData),
                       ("conv_bwd_weights", handle.DnnlConvBwdWeights),
                       ("bn_fwd", handle.DnnlBnFwd), ("bn_bwd", handle.DnnlBnBwd)):
    jax.ffi.register_ffi_target(f"unmix_onednn_{name}", jax.ffi.pycapsule(symbol), platform="cpu")
  handle.UnmixBnWorkspaceBytes.restype = ctypes.c_int64
  handle.UnmixBnWorkspaceBytes.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_float]
  handle.UnmixPrepareConv.restype = ctypes.c_int
  handle.UnmixPrepareConv.argtypes = [ctypes.c_int64] * 15 + [ctypes.c_bool]
  handle.dnnl_version.restype = ctypes.POINTER(_Version)  # oneDNN's own, found through ours
  return handle


def version() -> str:
  """The loaded oneDNN's version, e.g. '3.2.0' (the library's own answer, not the headers')."""
  v = load().dnnl_version().contents
  return f"{v.major}.{v.minor}.{v.patch}"


@functools.lru_cache(maxsize=None)
def unavailable() -> str | None:
  """None when the custom calls are built and registered; else why not, in one line. For
  conv_impl='auto', which falls back to 'cpu' instead of failing; tried once per process."""
  try:
    load()
  except ValueError as e:
    return str(e)
  return None


def handles(x_shape, kernel_shape, strides, dtype, transposed: bool = False) -> bool:
  """Whether `conv` / `conv_transpose` runs this float32 layer: the faster choice in per-layer
  timings (`unmix benchmark --layers`). oneDNN wins on strided and transposed 3x3 convs
  and on every conv at 4x4 or larger, the RGB input's included (its unneeded input gradient is
  never computed, see `_bwd`); the matrix-product forms win where the layer is nearly one
  matmul: 2x2 inputs and the U-Net's 2x2 stride-2 up-sampling (kernel = stride)."""
  if jnp.dtype(dtype) != jnp.float32:
    return False
  _, h, w, _ = x_shape
  if transposed:
    return all(k > s for k, s in zip(kernel_shape[:2], strides))
  return tuple(strides) != (1, 1) or min(h, w) >= 4


def conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """lax's 'SAME' conv. x [B, H, W, Cin] float32, kernel [kh, kw, Cin, Cout] ->
  [B, ceil(H / sh), ceil(W / sw), Cout]; equal to lax to float32 rounding. `load()` first."""
  (_, h, w, _), (kh, kw, _, _) = x.shape, kernel.shape
  (pt, pb), (pl, pr) = padding.same(h, kh, strides[0]), padding.same(w, kw, strides[1])
  spec = (*strides, pt, pl, pb, pr, False)
  _prepare(x.shape, kernel.shape, spec)
  return _call(x, kernel, spec)


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """lax's 'SAME' transposed conv (transpose_kernel=False). x [B, H, W, Cin] float32, kernel
  [kh, kw, Cin, Cout] -> [B, H * sh, W * sw, Cout]. oneDNN's deconvolution is PyTorch's
  ConvTranspose2d: the same product with the kernel flipped in space, and padding counted on
  the output (k - 1 - lax's padding of the dilated input)."""
  kh, kw = kernel.shape[:2]
  (at, ab), (al, ar) = padding.transposed(kh, strides[0]), padding.transposed(kw, strides[1])
  spec = (*strides, kh - 1 - at, kw - 1 - al, kh - 1 - ab, kw - 1 - ar, True)
  _prepare(x.shape, kernel.shape, spec)
  return _call(x, kernel[::-1, ::-1], spec)


@functools.lru_cache(maxsize=None)
def _prepare(x_shape, kernel_shape, spec) -> None:
  """Builds the layer's primitives while tracing, timing oneDNN's implementations that compute
  the same bits as its first choice and keeping the fastest (`fastest_equal` in the source):
  milliseconds to a second per layer shape, once per process."""
  b, h, w, cin = x_shape
  kh, kw, _, cout = kernel_shape
  _, oh, ow, _ = _out_shape(jax.ShapeDtypeStruct(x_shape, jnp.float32),
                            jax.ShapeDtypeStruct(kernel_shape, jnp.float32), spec).shape
  load().UnmixPrepareConv(b, h, w, cin, kh, kw, cout, oh, ow, *spec)


def _out_shape(x, kernel, spec) -> jax.ShapeDtypeStruct:
  b, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  sh, sw, pt, pl, pb, pr, transposed = spec
  if transposed:
    hw = ((h - 1) * sh - pt - pb + kh, (w - 1) * sw - pl - pr + kw)
  else:
    hw = ((h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1)
  return jax.ShapeDtypeStruct((b, *hw, cout), x.dtype)


def _attrs(spec) -> dict:
  sh, sw, pt, pl, pb, pr, transposed = spec
  return dict(sh=np.int64(sh), sw=np.int64(sw), pad_top=np.int64(pt), pad_left=np.int64(pl),
              pad_bottom=np.int64(pb), pad_right=np.int64(pr), transposed=bool(transposed))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _call(x, kernel, spec):
  return jax.ffi.ffi_call("unmix_onednn_conv_fwd", _out_shape(x, kernel, spec))(
      x, kernel, **_attrs(spec))


def _fwd(x, kernel, spec):
  return _call(x, kernel, spec), (x, kernel)


def _bwd(spec, residuals, dy):
  x, kernel = residuals
  # Two calls, so that XLA drops the input gradient where nothing reads it (the RGB input).
  dx = jax.ffi.ffi_call("unmix_onednn_conv_bwd_data", jax.ShapeDtypeStruct(x.shape, x.dtype))(
      x, kernel, dy, **_attrs(spec))
  dk = jax.ffi.ffi_call("unmix_onednn_conv_bwd_weights",
                        jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))(
      x, kernel, dy, **_attrs(spec))
  return dx, dk


_call.defvjp(_fwd, _bwd)


def batch_norm_relu(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """Training-mode relu(BatchNorm(x)) over the channels. x [B, H, W, C] float32, scale and
  bias [C] -> (out [B, H, W, C] >= 0, batch mean [C], biased batch variance [C], workspace:
  uint8 bytes of the ReLU mask that `batch_norm_relu_grads` reads; its size is asked of the
  library at trace time)."""
  eps = np.float32(epsilon)
  size = load().UnmixBnWorkspaceBytes(*x.shape, eps)
  if size < 0:
    raise ValueError(f"oneDNN has no batch normalisation for shape {x.shape}")
  channels = jax.ShapeDtypeStruct(x.shape[-1:], x.dtype)
  return jax.ffi.ffi_call("unmix_onednn_bn_fwd", (
      jax.ShapeDtypeStruct(x.shape, x.dtype), channels, channels,
      jax.ShapeDtypeStruct((size,), jnp.uint8)))(x, scale, bias, eps=eps)


def batch_norm_relu_grads(x, mean, var, scale, workspace, d_out, epsilon: float):
  """Gradients of `batch_norm_relu`'s output: (d_x [B, H, W, C], d_scale [C], d_bias [C])."""
  channels = jax.ShapeDtypeStruct(x.shape[-1:], x.dtype)
  return jax.ffi.ffi_call("unmix_onednn_bn_bwd", (
      jax.ShapeDtypeStruct(x.shape, x.dtype), channels, channels))(
          x, mean, var, scale, workspace, d_out, eps=np.float32(epsilon))
