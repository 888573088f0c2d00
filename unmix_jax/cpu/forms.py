"""Convolutions as matrix products, which XLA:CPU runs well (conv_impl='cpu').

XLA:CPU's stock conv emitter is slow for weight gradients, for the lhs-dilated convolutions
that strided and transposed convs become in the backward pass, and for many channels at tiny
resolutions, while dots go to a tuned GEMM. Each form gives lax's result for NHWC inputs, HWIO
kernels and 'SAME' padding (no dilation or groups):
  im2col       gather the kh*kw shifted (and strided) views of the padded input along channels
               -> [B*Ho*Wo, kh*kw*Cin] @ kernel.reshape(kh*kw*Cin, Cout).
  taps         sum over taps of view_t @ kernel[t]: no im2col copy, K = Cin per product.
  valid_taps   taps (stride 1), each product restricted to the outputs whose input it reads, so
               none multiplies the zero padding: the form for tiny resolutions.
  transposed   stride s splits the output into s*s phases; each phase is an ordinary conv of
               the input with a subset of the kernel's taps at small offsets. One product of the
               input's im2col over those offsets with a [n*n*Cin, s*s*Cout] weight built from the
               kernel (zeros where a tap does not reach a phase), then depth-to-space. For the
               U-Net's 2x2 stride-2 up-sampling the offsets are {0}: a plain matmul.
`conv_plan` picks a form per layer shape (docs/performance.md has the timings behind it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from unmix_jax.cpu import padding


def _patches(x: jax.Array, offsets_h, offsets_w, stride: tuple[int, int],
             out_hw: tuple[int, int]) -> jax.Array:
  """[B, H, W, C] (already padded) -> [B, Ho, Wo, len(oh) * len(ow) * C]: the view starting at
  each (offset_h, offset_w), strided, concatenated along channels in (h, w, c) order."""
  b, _, _, c = x.shape
  (sh, sw), (ho, wo) = stride, out_hw
  views = [jax.lax.slice(x, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                         (1, sh, sw, 1))
           for i in offsets_h for j in offsets_w]
  return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def conv_plan(x_shape, kernel_shape, strides: tuple[int, int]) -> str:
  """The fastest formulation on XLA:CPU (forward and backward together) of a 'SAME' conv of
  input [B, H, W, Cin] with kernel [kh, kw, Cin, Cout], from per-layer timings:
    "im2col"      strided and 1x1 convs, where the stock emitter is slowest, and convs of the
                  RGB input (Cin <= 4), where the copy is small;
    "valid_taps"  3x3 convs at 8x8 and below, where many of im2col's products would multiply
                  the zero padding;
    "taps"        3x3 convs at >= 16x16 with >= 38 channels: no im2col copy;
    "xla"         the rest (few channels at >= 16x16): the stock conv wins there."""
  _, h, w, _ = x_shape
  kh, kw, cin, cout = kernel_shape
  strides = tuple(strides)
  if (kh, kw) == (1, 1) or strides != (1, 1) or cin <= 4:
    return "im2col"  # for a 1x1 stride-1 conv, a plain matmul
  if h * w <= 64:
    return "valid_taps"
  if min(h, w) >= 16 and min(cin, cout) >= 38:
    return "taps"
  return "xla"


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           plan: str = "im2col") -> jax.Array:
  """'SAME' conv. x [B, H, W, Cin], kernel [kh, kw, Cin, Cout] -> [B, ceil(H / sh),
  ceil(W / sw), Cout]; `plan` is a formulation from `conv_plan`, all give the same result."""
  b, h, w, _ = x.shape
  kh, kw, cin, cout = kernel.shape
  (sh, sw) = strides
  if plan == "xla":
    return jax.lax.conv_general_dilated(x, kernel, strides, "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ph, pw = padding.same(h, kh, sh), padding.same(w, kw, sw)
  ho, wo = -(-h // sh), -(-w // sw)
  if kh == kw == 1 and sh == sw == 1:
    return (x.reshape(b * h * w, cin) @ kernel.reshape(cin, cout)).reshape(b, h, w, cout)
  if plan == "valid_taps":
    if (sh, sw) != (1, 1):
      raise ValueError(f"the 'valid_taps' plan is for stride-1 convs, not strides {strides}.")
    return _valid_taps(x, kernel, ph[0], pw[0])
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  if plan == "taps":
    taps = _kernel_taps(kernel)
    y = None
    for i in range(kh):
      for j in range(kw):
        view = _patches(xp, [i], [j], strides, (ho, wo)).reshape(b * ho * wo, cin)
        term = view @ taps[i * kw + j]
        y = term if y is None else y + term
    return y.reshape(b, ho, wo, cout)
  cols = _patches(xp, range(kh), range(kw), strides, (ho, wo))
  return (cols.reshape(b * ho * wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
          ).reshape(b, ho, wo, cout)


def _kernel_taps(kernel: jax.Array) -> list[jax.Array]:
  """[kh, kw, Cin, Cout] -> kh * kw taps [Cin, Cout] in (i, j) order. A split, not kh * kw
  index slices: the gradient of a split is one concatenate, that of slices kh * kw zero-padded
  kernels summed in a pass that tests every element against every tap."""
  kh, kw, cin, cout = kernel.shape
  return [t[0] for t in jnp.split(kernel.reshape(kh * kw, cin, cout), kh * kw)]


def _valid_taps(x: jax.Array, kernel: jax.Array, pad_top: int, pad_left: int) -> jax.Array:
  """Stride-1 conv as `taps`, but each tap multiplies only the output rows and columns where it
  reads the input, not the zero padding: at 2x2 a 3x3 kernel reaches 16 of the 36 (position,
  tap) pairs that im2col multiplies, at 4x4 100 of 144. The products are zero-padded to the
  output and summed (one fused pass)."""
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  taps = _kernel_taps(kernel)
  y = None
  for i in range(kh):
    top, bottom = max(0, pad_top - i), min(h, h + pad_top - i)
    for j in range(kw):
      left, right = max(0, pad_left - j), min(w, w + pad_left - j)
      if top >= bottom or left >= right:
        continue  # this tap only ever reads padding
      view = x[:, top + i - pad_top:bottom + i - pad_top, left + j - pad_left:right + j - pad_left]
      term = (view.reshape(-1, cin) @ taps[i * kw + j]).reshape(b, bottom - top, right - left,
                                                                 cout)
      term = jnp.pad(term, ((0, 0), (top, h - bottom), (left, w - right), (0, 0)))
      y = term if y is None else y + term
  return y  # never None: with 'SAME' padding the tap at (pad_top, pad_left) reads every output


@functools.lru_cache(maxsize=None)
def phase_taps(k: int, s: int) -> tuple[int, tuple[tuple[int | None, ...], ...]]:
  """For lax.conv_transpose(padding='SAME', transpose_kernel=False) along one axis: output
  o = s*i + a reads input i + d through kernel tap t when (a + t - pad) = s*d; t is unique
  for each (d, a). Returns (d_min, taps) with taps[d - d_min][a] = t, or None where no tap
  links offset d to phase a."""
  pad, _ = padding.transposed(k, s)
  triples = [(a, t, (a + t - pad) // s) for a in range(s) for t in range(k)
             if (a + t - pad) % s == 0]
  ds = [d for _, _, d in triples]
  d_min, n = min(ds), max(ds) - min(ds) + 1
  taps = [[None] * s for _ in range(n)]
  for a, t, d in triples:
    taps[d - d_min][a] = t
  return d_min, tuple(tuple(row) for row in taps)


def conv_transpose2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """'SAME' transposed conv (lax semantics, kernel not flipped) as one matmul + depth-to-space.
  x [B, H, W, Cin], kernel [kh, kw, Cin, Cout] -> [B, H * sh, W * sw, Cout]."""
  b, h, w, _ = x.shape
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  dh, taps_h = phase_taps(kh, sh)
  dw, taps_w = phase_taps(kw, sw)
  nh, nw = len(taps_h), len(taps_w)
  # [nh * nw, Cin, sh * sw, Cout]: the weight of input offset (p, q) for output phase (a, b),
  # stacked from the kernel's taps (an einsum with 0/1 selection matrices would cost a dense
  # product per step).
  zero = jnp.zeros((cin, cout), kernel.dtype)

  def tap(p, a, q, c):
    t, u = taps_h[p][a], taps_w[q][c]
    return zero if t is None or u is None else kernel[t, u]

  weight = jnp.stack([jnp.stack([tap(p, a, q, c) for a in range(sh) for c in range(sw)], axis=1)
                      for p in range(nh) for q in range(nw)])
  pad_h = (max(-dh, 0), max(dh + nh - 1, 0))
  pad_w = (max(-dw, 0), max(dw + nw - 1, 0))
  if nh == nw == 1 and dh == dw == 0:
    cols = x
  else:
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    cols = _patches(xp, [dh + pad_h[0] + p for p in range(nh)],
                    [dw + pad_w[0] + q for q in range(nw)], (1, 1), (h, w))
  y = cols.reshape(b * h * w, nh * nw * cin) @ weight.reshape(nh * nw * cin, sh * sw * cout)
  y = y.reshape(b, h, w, sh, sw, cout).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, h * sh, w * sw, cout)
