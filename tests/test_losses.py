import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unmix_jax import losses, metrics


def batch(seed, n=4):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  return [jax.random.uniform(key, (n, 32, 32, 3)) for key in k]


def test_pit_is_symmetric_in_the_targets_and_matches_fixed_when_order_is_right():
  a, b, x1, x2 = batch(0)
  pit = losses.reconstruction_loss("pit", a, b, x1, x2)
  np.testing.assert_allclose(pit, losses.reconstruction_loss("pit", a, b, x2, x1), rtol=1e-6)
  # Outputs near the targets in the given order: PIT equals the fixed loss.
  near1, near2 = x1 + 0.01 * a, x2 + 0.01 * b
  np.testing.assert_allclose(losses.reconstruction_loss("pit", near1, near2, x1, x2),
                             losses.reconstruction_loss("fixed", near1, near2, x1, x2), rtol=1e-6)
  # Swapped outputs: PIT is ~0 while the fixed loss is large.
  assert float(jnp.max(losses.reconstruction_loss("pit", x2, x1, x1, x2))) == 0.0
  assert float(jnp.min(losses.reconstruction_loss("fixed", x2, x1, x1, x2))) > 0.01


def test_unknown_loss_names_the_field():
  a, b, x1, x2 = batch(1)
  with pytest.raises(ValueError, match="config.loss"):
    losses.reconstruction_loss("l1", a, b, x1, x2)


def test_kl_zero_for_standard_normal_and_matches_monte_carlo():
  z = jnp.zeros((3, 8))
  np.testing.assert_allclose(losses.gaussian_kl(z, z), 0.0, atol=1e-7)
  key_mu, key_lv, key_eps = jax.random.split(jax.random.PRNGKey(0), 3)
  mu = jax.random.normal(key_mu, (2, 4))
  logvar = 0.5 * jax.random.normal(key_lv, (2, 4))
  eps = jax.random.normal(key_eps, (200_000, 2, 4))
  sample = mu + jnp.exp(0.5 * logvar) * eps
  log_q = -0.5 * (jnp.square(eps) + logvar + jnp.log(2 * jnp.pi))
  log_p = -0.5 * (jnp.square(sample) + jnp.log(2 * jnp.pi))
  monte_carlo = jnp.mean(jnp.sum(log_q - log_p, axis=-1), axis=0)
  np.testing.assert_allclose(losses.gaussian_kl(mu, logvar), monte_carlo, rtol=0.03, atol=0.01)


def test_kl_weight_warms_up_linearly():
  assert float(losses.kl_weight(0.5, 100, jnp.array(50))) == pytest.approx(0.25)
  assert float(losses.kl_weight(0.5, 100, jnp.array(500))) == pytest.approx(0.5)
  assert float(losses.kl_weight(0.5, 0, jnp.array(0))) == pytest.approx(0.5)


def test_metrics_use_the_better_assignment_and_baseline_returns_the_mixture():
  _, _, x1, x2 = batch(2)
  m = (x1 + x2) / 2
  perfect = metrics.pair_metrics(x2, x1, m, x1, x2)  # swapped but exact
  np.testing.assert_allclose(perfect["mse"], 0.0, atol=1e-12)
  assert float(jnp.min(perfect["psnr"])) == pytest.approx(100.0)
  baseline_mse = (losses.mse_per_example(m, x1) + losses.mse_per_example(m, x2)) / 2
  np.testing.assert_allclose(perfect["baseline_mse"], baseline_mse, rtol=1e-6)
  # Outputs are clipped to [0, 1] before scoring.
  clipped = metrics.pair_metrics(x1 + 5.0, x2 - 5.0, m, x1, x2)
  assert float(jnp.max(clipped["mse"])) <= 1.0


def test_ssim_is_one_for_exact_outputs_and_lower_for_the_baseline():
  _, _, x1, x2 = batch(3)
  m = (x1 + x2) / 2
  out = metrics.pair_metrics(x2, x1, m, x1, x2)
  np.testing.assert_allclose(out["ssim"], 1.0, atol=1e-4)
  assert float(jnp.max(out["baseline_ssim"])) < 0.9
