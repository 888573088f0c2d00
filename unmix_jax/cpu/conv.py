"""`nnx.Conv` and `nnx.ConvTranspose` computed by oneDNN or as matrix products.

The subclasses only change how the output is computed, so parameter names, shapes and
initialisation are Flax's: a checkpoint written with one backend restores into the other.
`impl="onednn"` runs oneDNN's direct convolution where `onednn.handles` the layer and the
matrix-product forms (`forms.py`) elsewhere; `impl="cpu"` runs the forms everywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unmix_jax.cpu import forms, onednn


def strides(layer) -> tuple[int, int]:
  s = layer.strides
  if s is None:
    return (1, 1)
  return (s, s) if isinstance(s, int) else tuple(s)


def _check_supported(layer, kind: str) -> None:
  """The forms (and oneDNN's calls) implement only what the models use."""
  if (layer.padding != "SAME" or layer.kernel_dilation not in (1, (1, 1), None)
      or getattr(layer, "feature_group_count", 1) != 1 or layer.mask is not None
      or len(layer.kernel_size) != 2 or len(strides(layer)) != 2):
    raise ValueError(f"conv_impl={layer.impl!r} {kind}s support 2-D 'SAME' convs without "
                     "dilation, groups or masks; build this layer with conv_impl='xla'.")


def operands(layer, inputs: jax.Array):
  """(x, kernel, bias) in the layer's compute dtype, as the Flax layers promote them; bias is
  0 for a layer built with use_bias=False."""
  bias = layer.bias[...] if layer.bias is not None else jnp.zeros((), layer.param_dtype)
  return layer.promote_dtype((inputs, layer.kernel[...], bias), dtype=layer.dtype)


class Conv(nnx.Conv):
  """`nnx.Conv` with `impl` ("cpu" or "onednn"); same parameters."""

  def __init__(self, *args, impl: str, **kwargs):
    super().__init__(*args, **kwargs)
    self.impl = impl
    _check_supported(self, "conv")

  def __call__(self, inputs: jax.Array) -> jax.Array:
    x, kernel, bias = operands(self, inputs)
    s = strides(self)
    if self.impl == "onednn" and onednn.handles(x.shape, kernel.shape, s, x.dtype):
      return onednn.conv(x, kernel, s) + bias
    return forms.conv2d(x, kernel, s, forms.conv_plan(x.shape, kernel.shape, s)) + bias


class ConvTranspose(nnx.ConvTranspose):
  """`nnx.ConvTranspose` (transpose_kernel=False) with `impl`; same parameters."""

  def __init__(self, *args, impl: str, **kwargs):
    super().__init__(*args, **kwargs)
    self.impl = impl
    if self.transpose_kernel:
      raise ValueError(f"conv_impl={impl!r} transposed convs follow transpose_kernel=False.")
    _check_supported(self, "transposed conv")

  def __call__(self, inputs: jax.Array) -> jax.Array:
    x, kernel, bias = operands(self, inputs)
    s = strides(self)
    if self.impl == "onednn" and onednn.handles(x.shape, kernel.shape, s, x.dtype,
                                                transposed=True):
      return onednn.conv_transpose(x, kernel, s) + bias
    return forms.conv_transpose2d(x, kernel, s) + bias
