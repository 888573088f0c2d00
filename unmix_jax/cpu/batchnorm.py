"""BatchNorm + ReLU in training as one op with a hand-written backward pass.

XLA:CPU compiles `relu(norm(y))` and its autodiff into many passes over the activation (the
statistics, the centred copy, normalise, ReLU, and as many again backward). The fused op
computes the same function with fewer:
  impl="cpu"     XLA ops in four passes: one for the sums of y and y^2, one to normalise and
                 rectify; backward, one for the two reductions (sum g, sum g * yhat) and one for
                 the input gradient, the ReLU mask read from the saved output.
  impl="onednn"  oneDNN's batch normalisation with the ReLU fused (`onednn.batch_norm_relu`):
                 one call forward, one backward, the ReLU mask in oneDNN's workspace.
Statistics, the running-average update and the parameters are flax's (`use_fast_variance`:
var = E[y^2] - E[y]^2, clipped at 0; oneDNN centres first, which differs only by rounding), so
the result equals flax's layer to float32 rounding and checkpoints do not change.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from unmix_jax.cpu import onednn
from unmix_jax.models import layers


class BatchNormReLU(layers.BatchNormReLU):
  """`layers.BatchNormReLU` whose training step runs the fused op with `impl`'s kernels ("cpu"
  or "onednn") where it applies (`fusable`); flax's layer otherwise. Same parameters."""

  def __init__(self, *args, impl: str, **kwargs):
    super().__init__(*args, **kwargs)
    self.impl = impl

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not (train and fusable(self, x)):
      return super().__call__(x, train=train)
    impl = self.impl if x.ndim == 4 else "cpu"  # oneDNN's op takes [B, H, W, C] only
    out, mean, var = _bn_relu(x, self.scale[...], self.bias[...], self.epsilon, impl)
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    return out


def fusable(norm: nnx.BatchNorm, x: jax.Array) -> bool:
  """Whether the fused op can stand in for this layer: float32, features last, scale and bias
  on, statistics over this device's batch (no axis_name, no mask)."""
  f32 = jnp.dtype(jnp.float32)
  return (x.dtype == f32 and norm.dtype in (None, f32) and norm.param_dtype == f32
          and norm.axis in (-1, x.ndim - 1) and norm.axis_name is None
          and norm.use_fast_variance and norm.scale is not None and norm.bias is not None)


def _axes(x):
  return tuple(range(x.ndim - 1))


def _forward(x, scale, bias, epsilon):
  axes = _axes(x)
  mean = jnp.mean(x, axes)
  var = jnp.maximum(0.0, jnp.mean(x * x, axes) - mean * mean)
  rstd = jax.lax.rsqrt(var + epsilon)
  out = jnp.maximum((x - mean) * (rstd * scale) + bias, 0.0)
  return out, mean, var, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_relu(x, scale, bias, epsilon, impl):
  """(relu(batch-normalised x), batch mean of x [C], batch variance [C]); mean and variance
  feed the running averages and are not differentiated."""
  return _bn_relu_fwd(x, scale, bias, epsilon, impl)[0]


def _bn_relu_fwd(x, scale, bias, epsilon, impl):
  if impl == "onednn":
    out, mean, var, workspace = onednn.batch_norm_relu(x, scale, bias, epsilon)
    return (out, mean, var), (x, mean, var, scale, workspace)
  out, mean, var, rstd = _forward(x, scale, bias, epsilon)
  return (out, mean, var), (x, out, mean, rstd, scale)


def _bn_relu_bwd(epsilon, impl, residuals, cotangents):
  d_out = cotangents[0]  # the statistics' cotangents are zero: they only feed running averages
  if impl == "onednn":
    x, mean, var, scale, workspace = residuals
    return onednn.batch_norm_relu_grads(x, mean, var, scale, workspace, d_out, epsilon)
  x, out, mean, rstd, scale = residuals
  axes = _axes(x)
  n = x.size // x.shape[-1]
  g = jnp.where(out > 0, d_out, 0.0)
  xhat = (x - mean) * rstd
  d_bias = jnp.sum(g, axes)
  d_scale = jnp.sum(g * xhat, axes)
  d_x = (scale * rstd) * (g - (d_bias + xhat * d_scale) / n)
  return d_x, d_scale, d_bias


_bn_relu.defvjp(_bn_relu_fwd, _bn_relu_bwd)
