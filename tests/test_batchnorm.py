"""Conv bias + BatchNorm + ReLU as one op (the CPU impls) against flax's BatchNorm then ReLU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import ae
from tests.test_layers import rel_err
from unmix_jax import models
from unmix_jax.models import batchnorm, onednn

IMPLS = ["cpu", pytest.param("onednn", marks=pytest.mark.skipif(
    onednn.unavailable() is not None, reason=f"{onednn.unavailable()}"))]


def make_norm(c: int, seed: int = 0) -> nnx.BatchNorm:
  norm = nnx.BatchNorm(c, momentum=0.9, rngs=nnx.Rngs(seed))
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  norm.scale[...] = 1 + 0.5 * jax.random.normal(keys[0], (c,))
  norm.bias[...] = 0.3 * jax.random.normal(keys[1], (c,))
  norm.mean[...] = jax.random.normal(keys[2], (c,))
  norm.var[...] = jax.random.uniform(keys[3], (c,), minval=0.5, maxval=2)
  return norm


def run(norm: nnx.BatchNorm, x, shift, probe, fused: str | None):
  """Output, gradients w.r.t. (x, scale, bias) of sum(out * probe), the updated running
  statistics, and the gradient w.r.t. shift, of one training-mode call; `fused`: the impl of
  batch_norm_relu, or None for flax's layers."""
  graphdef, params, stats = nnx.split(norm, nnx.Param, nnx.BatchStat)

  def loss(x, params, shift):
    # Fresh statistics variables inside the trace, which mutates them (as train.py does).
    model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, stats))
    if fused:
      out = batchnorm.batch_norm_relu(model, x, shift, train=True, impl=fused)
    else:
      out = nnx.relu(model(x + shift, use_running_average=False))
    return jnp.sum(out * probe), (out, nnx.state(model, nnx.BatchStat))

  (_, (out, new_stats)), (d_x, d_params, d_shift) = jax.value_and_grad(
      loss, argnums=(0, 1, 2), has_aux=True)(x, params, shift)
  return (out, (d_x, d_params), new_stats), d_shift


# Odd sizes, one channel, and a mean far from zero against the std (the E[x^2] - E[x]^2 form).
@pytest.mark.parametrize("shape,offset", [((2, 3, 5, 6), 0.0), ((4, 8, 8, 1), 0.0),
                                          ((8, 4, 4, 16), 3.0), ((3, 7, 1, 5), -2.0)])
@pytest.mark.parametrize("impl", IMPLS)
def test_fused_equals_flax_batchnorm_then_relu(shape, offset, impl):
  x = offset + jax.random.normal(jax.random.PRNGKey(1), shape)
  shift = 0.5 * jax.random.normal(jax.random.PRNGKey(3), shape[-1:])
  probe = jax.random.normal(jax.random.PRNGKey(2), shape)
  got, d_shift = run(make_norm(shape[-1]), x, shift, probe, fused=impl)
  want, d_shift_flax = run(make_norm(shape[-1]), x, shift, probe, fused=None)
  assert float(jnp.mean(want[0] > 0)) not in (0.0, 1.0)  # the ReLU mask matters here
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(a, b) <= 1e-5
  # The shift's gradient is zero: exactly here, up to rounding through flax's layers.
  np.testing.assert_array_equal(d_shift, np.zeros_like(d_shift))
  assert float(jnp.max(jnp.abs(d_shift_flax))) <= 1e-5 * float(jnp.max(jnp.abs(want[1][0])))


def test_evaluation_and_other_dtypes_take_flax_path():
  norm = make_norm(4)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 4))
  assert batchnorm.fusable(norm, x)
  assert not batchnorm.fusable(norm, x.astype(jnp.bfloat16))
  assert not batchnorm.fusable(nnx.BatchNorm(4, use_scale=False, rngs=nnx.Rngs(0)), x)
  np.testing.assert_array_equal(
      batchnorm.batch_norm_relu(norm, x, 0.0, train=False),
      nnx.relu(norm(x, use_running_average=True)))
  x16 = x.astype(jnp.bfloat16)  # not fusable: flax's own path, statistics updated by flax
  want = nnx.relu(make_norm(4)(x16, use_running_average=False))
  np.testing.assert_array_equal(
      batchnorm.batch_norm_relu(norm, x16, 0.0, train=True), want)


@pytest.mark.parametrize("impl", IMPLS)
def test_autoencoder_trains_the_same_as_with_flax_layers(impl):
  """Train-mode loss gradients and updated BatchNorm statistics of the whole AE: `impl` (fused
  BatchNorm + ReLU; matrix-product or oneDNN convs) against 'xla' (flax's layers)."""
  config = ae.get_config("smoke")
  m = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
  probe = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  results = []
  for conv_impl in (impl, "xla"):
    model = models.build(config.model, 0, conv_impl=conv_impl)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
      model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))
      x1, x2, _ = model(m, train=True)
      return jnp.sum((x1 - x2) * probe), nnx.state(model, nnx.BatchStat)

    grads, stats = jax.jit(jax.grad(loss, has_aux=True))(params)
    results.append((grads, stats))
  got, want = jax.tree.leaves(results[0]), jax.tree.leaves(results[1])
  # The conv biases before BatchNorm get gradients that are 0 up to rounding; measure each leaf
  # against a hundredth of the largest entry of its tree half, not against its own noise.
  scale = {half: max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(results[1][half]))
           for half in (0, 1)}
  n_grads = len(jax.tree.leaves(results[1][0]))
  for i, (a, b) in enumerate(zip(got, want)):
    floor = 1e-2 * scale[0 if i < n_grads else 1]
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * max(float(jnp.max(jnp.abs(b))), floor), i
