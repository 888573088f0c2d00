"""conv_impl='onednn': oneDNN's direct 3x3 conv through XLA's FFI against lax and the cpu forms.
Skipped where g++ or oneDNN 2.x (libdnnl-dev) is missing; .ci/run installs it where apt can."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import unet
from tests.test_layers import rel_err, stock_conv, value_and_grads
from unmix_jax import models
from unmix_jax.models import onednn


@pytest.fixture(scope="module", autouse=True)
def built():
  try:
    onednn.load()
  except ValueError as e:
    pytest.skip(str(e))


@pytest.mark.parametrize("shape", [(2, 8, 8, 6, 5), (3, 9, 7, 5, 6), (2, 1, 1, 4, 3),
                                   (2, 16, 12, 38, 76), (1, 5, 11, 7, 2)])
def test_conv3x3_equals_lax_in_value_and_gradients(shape):
  b, h, w, cin, cout = shape
  x = jax.random.normal(jax.random.PRNGKey(0), (b, h, w, cin))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, cin, cout))
  got = value_and_grads(jax.jit(onednn.conv3x3), x, kernel)
  want = value_and_grads(stock_conv((1, 1)), x, kernel)
  for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(a, b_) <= 1e-5, shape


def test_unet_with_onednn_equals_the_cpu_forms_in_output_and_gradient():
  config = unet.get_config("cpu")
  fast, ref = (models.build(config.model, 0, conv_impl=i) for i in ("onednn", "cpu"))
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3))

  def loss(model):
    return jnp.sum(jax.tree.leaves(model(x))[0] ** 2)

  (l_fast, g_fast), (l_ref, g_ref) = (nnx.value_and_grad(loss)(m) for m in (fast, ref))
  assert rel_err(l_fast, l_ref) <= 1e-5
  for a, b in zip(jax.tree.leaves(nnx.state(g_fast)), jax.tree.leaves(nnx.state(g_ref))):
    assert rel_err(a, b) <= 1e-4


def test_handles_only_the_shapes_it_wins_on():
  assert onednn.handles((64, 32, 32, 38), (3, 3, 38, 38), (1, 1), jnp.float32)
  assert not onednn.handles((64, 4, 4, 304), (3, 3, 304, 304), (1, 1), jnp.float32)
  assert not onednn.handles((64, 32, 32, 3), (3, 3, 3, 38), (1, 1), jnp.float32)
  assert not onednn.handles((64, 32, 32, 38), (3, 3, 38, 38), (2, 2), jnp.float32)
  assert not onednn.handles((64, 32, 32, 38), (3, 3, 38, 38), (1, 1), jnp.bfloat16)
