"""The CPU backend: layers with Flax's parameters, computed the way a CPU runs them fastest.

  conv.py        `nnx.Conv` / `nnx.ConvTranspose` through oneDNN or matrix products
  forms.py       the matrix-product forms of a conv (conv_impl='cpu')
  onednn.py      oneDNN's convolution and BatchNorm + ReLU as XLA FFI custom calls, built from
                 `onednn_ops.cc` on first use (conv_impl='onednn')
  batchnorm.py   BatchNorm + ReLU as one op in training
  pool.py        2x2 max-pool with a one-pass gradient
  up_conv.py     a U-Net decoder's up-sampling and first conv as one transposed conv (oneDNN)
Nothing here is imported unless a run selects a CPU backend (`unmix_jax.backend`), and nothing
is compiled until `onednn.load()` runs.
"""

from __future__ import annotations

import functools

from flax import nnx

from unmix_jax.cpu import batchnorm, conv, pool, up_conv
from unmix_jax.models import layers as layers_lib


def layers(impl: str, dtype=None) -> layers_lib.Layers:
  """The CPU layers for `impl` ("cpu" or "onednn"; oneDNN must be loaded first), computing in
  `dtype` (None: float32)."""
  return layers_lib.Layers(
      conv=functools.partial(conv.Conv, impl=impl, dtype=dtype),
      conv_transpose=functools.partial(conv.ConvTranspose, impl=impl, dtype=dtype),
      batch_norm_relu=functools.partial(batchnorm.BatchNormReLU, impl=impl, dtype=dtype),
      group_norm=functools.partial(nnx.GroupNorm, dtype=dtype),
      linear=functools.partial(nnx.Linear, dtype=dtype),
      max_pool=pool.max_pool_2x2,
      up_concat_conv=up_conv.up_concat_conv,
  )
