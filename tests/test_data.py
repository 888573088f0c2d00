import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unmix_jax.configs import unet
from unmix_jax import data


def small_cfg(**overrides):
  c = unet.get_config("smoke").data
  for k, v in overrides.items():
    c[k] = v
  return c


def as_set(pairs):
  return {tuple(sorted(p)) for p in pairs.tolist()}


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_pair_from_linear_enumerates_every_pair_once(n):
  got = data.pair_from_linear(np.arange(data.num_pairs(n)), n)
  assert [tuple(p) for p in got.tolist()] == list(itertools.combinations(range(n), 2))


def test_pair_from_linear_large_n_has_no_rounding_error():
  n = 50_000
  k = np.array([0, 1, n - 2, n - 1, data.num_pairs(n) - 1, 123_456_789])
  pairs = data.pair_from_linear(k, n)
  i, j = pairs[:, 0], pairs[:, 1]
  assert np.all(i < j) and np.all(j < n)
  np.testing.assert_array_equal(i * n - i * (i + 1) // 2 + (j - i - 1), k)


def test_pairs_are_distinct_unordered_and_splits_disjoint():
  cfg = small_cfg(num_images=40, num_train_pairs=500, num_val_pairs=200, num_test_images=30,
                  num_test_pairs=300)
  p = data.make_pairs(cfg, seed=3)
  for name, n_images in (("train", 40), ("val", 40), ("test", 30)):
    pairs = p[name]
    assert pairs.dtype == np.int32 and pairs.shape[1] == 2
    assert np.all(pairs[:, 0] != pairs[:, 1]), f"{name} has a self pair"
    assert len(as_set(pairs)) == len(pairs), f"{name} repeats a pair"
    assert pairs.min() >= 0 and pairs.max() < n_images
  assert not as_set(p["train"]) & as_set(p["val"])
  # Random order inside a pair: both orders occur.
  assert 0.3 < np.mean(p["train"][:, 0] < p["train"][:, 1]) < 0.7
  assert len(p["train_ids"]) == 40 and len(set(p["train_ids"].tolist())) == 40
  assert p["test_ids"].max() < data.SPLIT_SIZES["test"]


def test_same_seed_same_pairs_and_test_set_independent_of_seed():
  cfg = small_cfg()
  a, b, c = data.make_pairs(cfg, 0), data.make_pairs(cfg, 0), data.make_pairs(cfg, 1)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["train_ids"], c["train_ids"])
  np.testing.assert_array_equal(a["test_ids"], c["test_ids"])
  np.testing.assert_array_equal(a["test"], c["test"])


def fake_pair_data(cfg, seed=0):
  p = data.make_pairs(cfg, seed)
  images = np.zeros((cfg.num_images, 32, 32, 3), np.uint8)
  return data.PairData(images, images[:cfg.num_test_images], images[:cfg.num_holdout_images],
                       p["train"], p["val"], p["test"], p["holdout"], p["val_linear"])


def test_epoch_order_is_a_seeded_permutation_of_the_training_pairs():
  cfg = small_cfg()
  d = fake_pair_data(cfg)
  e0, e0_again, e1 = (data.epoch_pairs(d, cfg, 0, e) for e in (0, 0, 1))
  np.testing.assert_array_equal(e0, e0_again)
  assert not np.array_equal(e0, e1)
  assert sorted(map(tuple, e0.tolist())) == sorted(map(tuple, d.train_pairs.tolist()))


def test_resampled_pairs_never_include_val_pairs():
  cfg = small_cfg(num_images=20, num_train_pairs=150, num_val_pairs=30, resample_pairs=True)
  d = fake_pair_data(cfg)
  val = as_set(d.val_pairs)
  seen = set()
  for epoch in range(5):
    pairs = data.epoch_pairs(d, cfg, 0, epoch)
    assert len(pairs) == 150 and len(as_set(pairs)) == 150
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert not as_set(pairs) & val
    seen |= as_set(pairs)
  assert len(seen) > 150  # fresh pairs were drawn, not the fixed set again


@pytest.mark.parametrize("field,value,needle", [
    ("num_images", 50_001, "num_images"),
    ("num_test_images", 10_001, "num_test_images"),
    ("num_train_pairs", 10_000, "num_train_pairs"),
    ("num_test_pairs", 10_000, "num_test_pairs"),
    ("num_val_pairs", 0, "num_val_pairs"),
    ("num_holdout_images", 10, "num_holdout_pairs"),
    ("translate", 17, "config.data.translate"),
    ("resample_pairs", True, "config.data.stream_pairs"),
])
def test_impossible_sizes_name_the_field(field, value, needle):
  cfg = small_cfg(**{field: value})
  if field == "resample_pairs":
    cfg.stream_pairs = True
  with pytest.raises(data.DataError, match=needle):
    data.check_sizes(cfg)


def test_the_holdout_split_is_fixed_and_never_trained_on():
  cfg = small_cfg(num_images=40, num_holdout_images=30, num_holdout_pairs=50)
  a, b = data.make_pairs(cfg, seed=0), data.make_pairs(cfg, seed=1)
  np.testing.assert_array_equal(a["holdout_ids"], b["holdout_ids"])  # fixed by holdout_seed
  np.testing.assert_array_equal(a["holdout"], b["holdout"])
  for p in (a, b):
    assert not set(p["holdout_ids"].tolist()) & set(p["train_ids"].tolist())
    assert len(as_set(p["holdout"])) == 50 and p["holdout"].max() < 30
  without = data.make_pairs(small_cfg(num_images=40), seed=0)
  assert len(without["holdout"]) == 0  # the study's protocol: no images set aside...
  np.testing.assert_array_equal(  # ...and the same training images as before there was one
      without["train_ids"], np.sort(np.random.default_rng([0, 0]).choice(50_000, 40, replace=False)))


def test_streamed_pairs_are_uniform_distinct_and_leave_no_epoch_table():
  idx = np.asarray(data.draw_pairs(jax.random.PRNGKey(0), 20_000, 7))
  assert idx.dtype == np.int32 and idx.shape == (20_000, 2)
  assert np.all(idx[:, 0] != idx[:, 1]) and idx.min() == 0 and idx.max() == 6
  counts = np.bincount(idx[:, 0] * 7 + idx[:, 1], minlength=49).reshape(7, 7)
  off_diagonal = counts[~np.eye(7, dtype=bool)]
  assert off_diagonal.min() > 0.8 * 20_000 / 42 and off_diagonal.max() < 1.2 * 20_000 / 42
  cfg = small_cfg(stream_pairs=True)
  assert data.epoch_pairs(fake_pair_data(cfg), cfg, 0, 0) is None


def test_mix_batch_averages_and_scales():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), np.uint8))
  idx = jnp.array([[0, 1], [3, 2]], jnp.int32)
  m, x1, x2 = data.mix_batch(images, idx)
  np.testing.assert_allclose(x1, images[jnp.array([0, 3])] / 255.0, rtol=1e-6)
  np.testing.assert_allclose(m, (x1 + x2) / 2, rtol=1e-6)
  assert m.dtype == jnp.float32 and 0 <= m.min() and m.max() <= 1


def test_augment_flips_images_left_right():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8))
  idx = jnp.tile(jnp.array([[0, 1]], jnp.int32), (64, 1))
  _, x1, _ = data.mix_batch(images, idx, jax.random.PRNGKey(0))
  plain = images[0] / 255.0
  flipped = np.asarray(x1[:, :, ::-1, :])
  is_plain = np.all(np.isclose(x1, plain), axis=(1, 2, 3))
  is_flipped = np.all(np.isclose(flipped, plain), axis=(1, 2, 3))
  assert np.all(is_plain | is_flipped)
  assert 10 < is_flipped.sum() < 54


def test_translation_shifts_each_image_and_keeps_the_mixture_exact():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8))
  idx = jnp.tile(jnp.array([[0, 1]], jnp.int32), (64, 1))
  m, x1, x2 = data.mix_batch(images, idx, jax.random.PRNGKey(0), flip=False, translate=2)
  np.testing.assert_array_equal(m, (x1 + x2) / 2)
  plain = np.asarray(images[0] / 255.0, np.float32)
  # Each output is the image shifted by (dy, dx) in [-2, 2]: its interior matches a window.
  shifts = set()
  for k in range(64):
    found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
             if np.allclose(np.asarray(x1[k])[2:-2, 2:-2], plain[2 + dy:30 + dy, 2 + dx:30 + dx])]
    assert found, k
    shifts.add(found[0])
  assert len(shifts) > 10
