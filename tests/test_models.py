import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import unet
from unmix_jax import models, train

REFERENCE_PARAMS = {"unet": 10_809_638}


def param_count(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_default_unet_parameter_count_within_5_percent_of_reference():
  n = param_count(models.build(unet.get_config().model, 0))
  assert abs(n / REFERENCE_PARAMS["unet"] - 1) < 0.05, n


@pytest.mark.parametrize("consistent", [True, False])
def test_unet_shapes_and_mixture_consistency(consistent):
  cfg = unet.get_config("smoke").model
  cfg.features = (4, 8, 16)
  cfg.mixture_consistent = consistent
  model = models.build(cfg, 0)
  m = jax.random.uniform(jax.random.PRNGKey(0), (3, 32, 32, 3))
  x1_hat, x2_hat, aux = model(m, train=False)
  assert x1_hat.shape == x2_hat.shape == (3, 32, 32, 3)
  assert bool(jnp.all(jnp.isfinite(x1_hat)))
  average_error = float(jnp.max(jnp.abs((x1_hat + x2_hat) / 2 - m)))
  if consistent:
    assert average_error < 1e-6
  else:
    assert average_error > 1e-3


def test_unknown_model_lists_known_names():
  with pytest.raises(ValueError, match="unet") as e:
    models.get("resnet")
  assert "config.model.name" in str(e.value)


def test_unet_rejects_too_many_levels():
  cfg = unet.get_config("smoke").model
  cfg.features = (2, 2, 2, 2, 2, 2, 2)
  with pytest.raises(ValueError, match="config.model.features"):
    models.build(cfg, 0)


def test_same_seed_same_parameters():
  cfg = unet.get_config("smoke").model
  a = nnx.state(models.build(cfg, 0), nnx.Param)
  b = nnx.state(models.build(cfg, 0), nnx.Param)
  c = nnx.state(models.build(cfg, 1), nnx.Param)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
