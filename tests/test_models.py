import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unmix_jax import models
from unmix_jax.configs import ae, unet, vae

CONFIGS = {"unet": unet, "ae": ae, "vae": vae}
# The reference study's Keras summaries ("Total params", trainable + BatchNorm statistics).
REFERENCE_PARAMS = {"unet": 10_809_638, "ae": 161_190, "vae": 161_190}


def param_count(model, kind=nnx.Variable):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, kind)))


def abstract_model(model_cfg):
  """The model's structure and shapes, without computing its initial values."""
  return nnx.eval_shape(lambda: models.build(model_cfg, 0))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_default_parameter_count_within_5_percent_of_reference(name):
  n = param_count(abstract_model(CONFIGS[name].get_config().model), (nnx.Param, nnx.BatchStat))
  assert abs(n / REFERENCE_PARAMS[name] - 1) < 0.05, n


def test_ae_has_batchnorm_statistics_like_the_reference():
  model = abstract_model(ae.get_config().model)
  # The reference summary lists 768 non-trainable parameters (BatchNorm mean and variance).
  assert 600 <= param_count(model, nnx.BatchStat) <= 900


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("preset", [None, "cpu", "cpu10", "cpu60", "gpu", "smoke"])
def test_every_config_preset_builds_and_runs(name, preset):
  from unmix_jax import config_checks

  config = CONFIGS[name].get_config(preset)
  assert config.model.name == name and config.preset == (preset or "default")
  config_checks.validate(config)
  m = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
  run = lambda model, m: model(m, train=True, key=jax.random.PRNGKey(1))
  if preset in (None, "gpu", "cpu60"):  # GPU-sized models, and cpu10's again: shapes only
    x1_hat, x2_hat, aux = nnx.eval_shape(run, abstract_model(config.model), m)
  else:
    x1_hat, x2_hat, aux = nnx.jit(run)(models.build(config.model, 0), m)
    assert bool(jnp.all(jnp.isfinite(x1_hat)) & jnp.all(jnp.isfinite(x2_hat)))
  assert x1_hat.shape == x2_hat.shape == (2, 32, 32, 3)
  assert set(aux) == ({"mu", "logvar"} if name == "vae" else set())


@pytest.mark.parametrize("name", ["ae", "vae"])
@pytest.mark.parametrize("consistent", [True, False])
def test_two_decoder_models_output_options(name, consistent):
  cfg = CONFIGS[name].get_config("smoke").model
  cfg.mixture_consistent = consistent
  model = models.build(cfg, 0)
  m = jax.random.uniform(jax.random.PRNGKey(0), (3, 32, 32, 3))
  x1_hat, x2_hat, _ = model(m, train=False)
  average_error = float(jnp.max(jnp.abs((x1_hat + x2_hat) / 2 - m)))
  assert (average_error < 1e-6) == consistent


def vae_model():
  return models.build(vae.get_config("smoke").model, 0)


def test_vae_same_key_same_sample_and_eval_uses_the_mean():
  model = vae_model()
  m = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
  a = model(m, train=True, key=jax.random.PRNGKey(5))[0]
  b = model(m, train=True, key=jax.random.PRNGKey(5))[0]
  c = model(m, train=True, key=jax.random.PRNGKey(6))[0]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  mean_1 = model(m, train=False)[0]
  mu, _ = model.encode(m)
  np.testing.assert_allclose(mean_1, model.decode(mu)[0], rtol=1e-6)
  with pytest.raises(ValueError, match="PRNG key"):
    model(m, train=True)


def test_gradients_flow_through_the_reparameterised_sample():
  model = vae_model()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  m = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))

  def loss(params):
    x1_hat, _, aux = nnx.merge(graphdef, params, rest)(m, train=True, key=jax.random.PRNGKey(1))
    return jnp.mean(x1_hat)

  grads = jax.grad(loss)(params)
  # The encoder is reached only through z = mu + sigma * eps.
  encoder_grads = jax.tree.leaves(grads["posterior"])
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in encoder_grads)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in encoder_grads) > 0


@pytest.mark.parametrize("field,value", [("beta", -0.1), ("latent_dim", 0)])
def test_vae_rejects_bad_settings(field, value):
  cfg = vae.get_config("smoke").model
  cfg[field] = value
  with pytest.raises(ValueError, match=f"config.model.{field}"):
    models.build(cfg, 0)


def test_ae_rejects_mismatched_stage_counts():
  cfg = ae.get_config("smoke").model
  cfg.decoder_widths = (8, 8, 8)
  with pytest.raises(ValueError, match="config.model.decoder_widths"):
    models.build(cfg, 0)


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


def test_max_pool_takes_the_maximum_of_each_window():
  from unmix_jax.models import layers

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 4, 5))
  want = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  np.testing.assert_array_equal(layers.max_pool_2x2(x), want)


def test_model_files_know_no_backend():
  """How a layer is computed enters through `layers` alone (models/layers.py)."""
  import pathlib
  import re

  folder = pathlib.Path(models.__file__).parent
  for name in ("unet.py", "ae.py", "vae.py", "conv_stacks.py"):
    text = (folder / name).read_text()
    assert not re.search(r"onednn|\bimpl\b|conv_impl", text, re.IGNORECASE), name


def residual_cfg(**fields):
  cfg = unet.get_config("smoke").model
  cfg.update(dict(block="residual", features=(8, 16)), **fields)
  return cfg


@pytest.mark.parametrize("attention_levels,blocks,norm", [(0, 1, "group"), (2, 2, "batch")])
def test_the_residual_unet_starts_at_the_mixture_and_trains(attention_levels, blocks, norm):
  cfg = residual_cfg(attention_levels=attention_levels, blocks_per_level=blocks, norm=norm)
  model = models.build(cfg, 0)
  params = nnx.state(model, nnx.Param)
  assert ("attention" in str(jax.tree_util.tree_structure(params))) == (attention_levels > 0)
  m = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
  x1_hat, x2_hat, aux = jax.jit(lambda m: model(m))(m)
  assert x1_hat.shape == (2, 32, 32, 3) and aux == {}
  np.testing.assert_array_equal(x1_hat, m)  # zero head: the mixture baseline at first
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(m)[0] ** 2 * m))(params)
  assert float(jnp.sum(jnp.abs(grads["head"]["kernel"]))) > 0


@pytest.mark.parametrize("field,value", [("block", "dense"), ("norm_groups", 0),
                                         ("attention_levels", 3), ("blocks_per_level", 0),
                                         ("norm", "layer")])
def test_the_unet_rejects_bad_block_settings(field, value):
  with pytest.raises(ValueError, match=f"config.model.{field}"):
    models.build(residual_cfg(**{field: value}), 0)


def test_flip_averaging_makes_the_separation_mirror_symmetric():
  from unmix_jax import metrics, steps

  config = unet.get_config("smoke")
  config.model.features = (8, 16)
  config.eval.flip_average = True
  model = models.build(config.model, 0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  separate = jax.jit(steps.make_separate(graphdef, config))
  m = jax.random.uniform(jax.random.PRNGKey(0), (3, 32, 32, 3))
  a1, a2, _ = separate(params, rest, m)
  b1, b2, _ = separate(params, rest, m[:, :, ::-1])
  b1, b2 = metrics.best_assignment(b1[:, :, ::-1], b2[:, :, ::-1], a1, a2)
  np.testing.assert_allclose(b1, a1, atol=1e-5)
  np.testing.assert_allclose(b2, a2, atol=1e-5)
  np.testing.assert_allclose((a1 + a2) / 2, m, atol=1e-6)  # still mixture-consistent
