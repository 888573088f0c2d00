"""The U-Net decoder's 2x2 stride-2 up-sampling, skip concatenation and first 3x3 conv, computed
as one 4x4 stride-2 transposed conv of the low-resolution input plus one conv of the skip
(conv_impl='onednn', outputs of 16x16 and larger): `up_concat_conv` of the CPU layers.

Nothing nonlinear lies between the up-sampling and the conv, and a conv of a concatenation is the
sum of the convs of its parts, so

  conv3x3(concat(up(x) + b_up, skip), A) = convT4x4(x, K) + conv3x3(skip, A_skip) + M

with K (`composed_kernel`) the up-sampling kernel U multiplied into the up half of A, and M
(`bias_map`) what that half makes of the up-sampling's bias (less at the border, where A reads
zero padding). Per output pixel the composed transposed conv does 4 * Cin * Cout multiply-adds
where the two layers did Cin * C + 9 * C * Cout, and the concatenation is never written, so
the forward pass and both gradients skip work and copies. Building K costs a [4 Cin, C] x
[C, 9 Cout] product per step, independent of the batch: small at 16x16 and 32x32, as much as it
saves at 8x8 and below. Same parameters, same function: equal to the layers to float32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unmix_jax.cpu import conv as conv_layers
from unmix_jax.cpu import forms, onednn

# Along one axis, output pixel 2m + e of conv3x3(up(x)) reads up-sampled pixel 2m + e + d
# (tap offset d in {-1, 0, 1}), which is x[m + (e + d) // 2] through up-sampling phase
# (e + d) % 2. As a transposed conv with kernel 4, stride 2 and padding 1 (oneDNN's and
# PyTorch's convention), that is tap t = 1 + e - 2 * ((e + d) // 2) of the composed kernel.
# _PAIRS[t]: the (d, phase) pairs summed into tap t.
_PAIRS = {0: [(1, 0)], 1: [(0, 0), (1, 1)], 2: [(-1, 0), (0, 1)], 3: [(-1, 1)]}


def _selection() -> np.ndarray:
  """[16, 36] 0/1: composed tap (t, s) <- (row phase, column phase, row offset, column offset)."""
  sel = np.zeros((16, 36), np.float32)
  for t, rows in _PAIRS.items():
    for s, cols in _PAIRS.items():
      for di, a in rows:
        for dj, b in cols:
          sel[4 * t + s, ((2 * a + b) * 3 + di + 1) * 3 + dj + 1] = 1.0
  return sel


_SELECTION = _selection()


def used(x_shape, up_kernel_shape, up_strides, dtype) -> bool:
  """Whether `Up` computes this level composed: kernel = stride = 2 up-sampling of an input of
  at least 8x8, float32, where oneDNN runs the transposed conv."""
  _, h, w, _ = x_shape
  return (tuple(up_kernel_shape[:2]) == (2, 2) and tuple(up_strides) == (2, 2)
          and min(h, w) >= 8 and jnp.dtype(dtype) == jnp.float32)


def composed_kernel(up_kernel: jax.Array, conv_kernel: jax.Array) -> jax.Array:
  """up_kernel [2, 2, Cin, C] (lax.conv_transpose's, transpose_kernel=False), conv_kernel
  [3, 3, C, Cout] -> [4, 4, Cin, Cout], the kernel of `onednn.conv_transpose` (stride 2) equal to
  the conv after the up-sampling."""
  _, phase_taps = forms.phase_taps(2, 2)
  cin, c = up_kernel.shape[2:]
  cout = conv_kernel.shape[-1]
  phases = jnp.stack([up_kernel[phase_taps[0][a], phase_taps[0][b]]
                      for a in range(2) for b in range(2)])  # [4, Cin, C]
  # Every (phase, tap) product in one matmul: [4 Cin, C] @ [C, 9 Cout].
  products = phases.reshape(4 * cin, c) @ conv_kernel.transpose(2, 0, 1, 3).reshape(c, 9 * cout)
  products = products.reshape(4, cin, 9, cout).transpose(0, 2, 1, 3).reshape(36, cin * cout)
  # A product with the 0/1 selection, not 36 sliced sums: the transpose of sliced sums is a
  # pass that tests every element against every slice.
  kernel = (jnp.asarray(_SELECTION) @ products).reshape(4, 4, cin, cout)
  return kernel[::-1, ::-1]  # lax's orientation, which `onednn.conv_transpose` expects


def bias_map(up_bias: jax.Array, conv_kernel: jax.Array, h: int, w: int) -> jax.Array:
  """[h, w, Cout]: the conv [3, 3, C, Cout] of an image equal to up_bias [C] everywhere, with
  zero padding ('SAME')."""
  valid = np.zeros((3, 3, h, w), np.float32)
  for i in range(3):
    for j in range(3):
      valid[i, j, max(0, 1 - i):min(h, h + 1 - i), max(0, 1 - j):min(w, w + 1 - j)] = 1.0
  per_tap = jnp.einsum("c,ijco->ijo", up_bias, conv_kernel)
  return jnp.einsum("ijhw,ijo->hwo", valid, per_tap)


@jax.custom_vjp
def _add_map(y: jax.Array, m: jax.Array) -> jax.Array:
  """y [B, H, W, C] + m [H, W, C]."""
  return y + m


def _add_map_fwd(y, m):
  return y + m, None


def _add_map_bwd(_, dy):
  b = dy.shape[0]
  # The batch sum as a product with ones: XLA:CPU's reduction over the leading axis alone is
  # many times slower.
  return dy, (jnp.ones((b,), dy.dtype) @ dy.reshape(b, -1)).reshape(dy.shape[1:])


_add_map.defvjp(_add_map_fwd, _add_map_bwd)


def composed(x, skip, up_kernel, up_bias, conv_kernel, conv_bias) -> jax.Array:
  """conv(concat(conv_transpose(x, up_kernel, 2) + up_bias, skip), conv_kernel) + conv_bias,
  'SAME', before the ReLU. x [B, H, W, Cin], skip [B, 2H, 2W, C], up_kernel [2, 2, Cin, C],
  conv_kernel [3, 3, 2C, Cout] -> [B, 2H, 2W, Cout]; float32, `onednn.load()` first."""
  c = up_kernel.shape[-1]
  up_half, skip_half = conv_kernel[:, :, :c], conv_kernel[:, :, c:]
  # The barriers move this level's work later in XLA's schedule (a small gain on the `cpu`
  # preset's U-Net). They do not hold back the run: XLA:CPU's executor orders work by the
  # buffers it reads and writes, and starts the skip's conv as soon as its input exists.
  x, up_kernel, up_half = jax.lax.optimization_barrier((x, up_kernel, up_half))
  y = onednn.conv_transpose(x, composed_kernel(up_kernel, up_half), (2, 2))
  y, skip = jax.lax.optimization_barrier((y, skip))
  y = y + onednn.conv(skip, skip_half, (1, 1))
  return _add_map(y, bias_map(up_bias, up_half, *skip.shape[1:3])) + conv_bias


def up_concat_conv(up, conv, x: jax.Array, skip: jax.Array) -> jax.Array:
  """`conv(concat([up(x), skip]))` for the CPU layers `up` (a ConvTranspose) and `conv`: composed
  where `used`, with oneDNN, else the two layers as they are."""
  x_, up_kernel, up_bias = conv_layers.operands(up, x)
  if (up.impl == conv.impl == "onednn"
      and used(x_.shape, up_kernel.shape, conv_layers.strides(up), x_.dtype)):
    skip, conv_kernel, conv_bias = conv_layers.operands(conv, skip)
    up_bias = jnp.broadcast_to(up_bias, up_kernel.shape[-1:])
    return composed(x_, skip, up_kernel, up_bias, conv_kernel, conv_bias)
  return conv(jnp.concatenate([up(x), skip], axis=-1))
