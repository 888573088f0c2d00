"""Which layers compute a run's convolutions: `config.train.conv_impl` -> `models.layers.Layers`.

  "xla"     Flax's layers, lax convolutions: right for GPU/TPU.
  "cpu"     the CPU backend's matrix-product forms, which XLA:CPU runs faster than its convs
            (they run on any backend).
  "onednn"  the CPU backend with oneDNN's convolutions (one CPU device; needs g++ and oneDNN 3,
            built on first use).
  "auto"    "onednn" on one CPU device where it builds, else "cpu"; "xla" off the CPU.
Parameters are the same whichever runs, so checkpoints move between them. The CPU backend
(`unmix_jax.cpu`) is imported only when one of its implementations is chosen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unmix_jax.models import layers as layers_lib

IMPLS = ("auto", "xla", "cpu", "onednn")


class BackendError(ValueError):
  """A `config.train.conv_impl` that cannot run here; the message names the field and the fix."""


def check(conv_impl: str) -> None:
  """BackendError, naming the field, where `conv_impl` cannot run here; builds nothing."""
  if conv_impl not in IMPLS:
    raise BackendError(f"config.train.conv_impl={conv_impl!r} is not known; choose one of "
                     f"{', '.join(IMPLS)}.")
  if conv_impl == "onednn" and jax.default_backend() != "cpu":
    raise BackendError("config.train.conv_impl='onednn' runs on the CPU backend only; use "
                       "'auto'.")
  if conv_impl == "onednn" and jax.device_count() > 1:
    # XLA's partitioner cannot split the custom calls over a batch-sharded mesh.
    raise BackendError(f"config.train.conv_impl='onednn' runs on one CPU device, not "
                     f"{jax.device_count()}; use 'cpu' or 'auto'.")


def resolve(conv_impl: str) -> str:
  """'auto' -> the implementation for the default backend; 'onednn' is built and loaded here
  (BackendError naming the field when it cannot be)."""
  check(conv_impl)
  if conv_impl == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    return "cpu" if jax.device_count() > 1 or onednn_unavailable() else "onednn"
  if conv_impl == "onednn":
    from unmix_jax.cpu import onednn

    try:
      onednn.load()
    except ValueError as e:
      raise BackendError(str(e)) from None
  return conv_impl


def onednn_unavailable() -> str | None:
  """None when oneDNN's custom calls build and load here; else why not, in one line."""
  from unmix_jax.cpu import onednn

  return onednn.unavailable()


def layers(conv_impl: str, compute_dtype: str = "float32") -> layers_lib.Layers:
  """The layers of `conv_impl` (resolved here) computing in `compute_dtype`."""
  impl = resolve(conv_impl)
  dtype = jnp.dtype(compute_dtype)
  if impl == "xla":
    return layers_lib.xla(dtype)
  from unmix_jax import cpu

  return cpu.layers(impl, dtype)


def describe(conv_impl: str) -> str:
  """How convs run, for a run's log: e.g. "onednn (auto), oneDNN 3.2.0"."""
  impl = resolve(conv_impl)
  text = impl + (" (auto)" if conv_impl == "auto" else "")
  if impl == "onednn":
    from unmix_jax.cpu import onednn

    text += f", oneDNN {onednn.version()}"
  elif conv_impl == "auto" and impl == "cpu" and jax.device_count() == 1:
    text += f"; 'onednn' would be faster but is unavailable: {onednn_unavailable()}"
  return text
