"""CIFAR-10 images and the pair sets of the un-mixing protocol.

Images stay uint8 `[N, 32, 32, 3]`; a pair set is an int32 index array `[P, 2]` into one image
array. Mixing (`m = (x1 + x2) / 2`), scaling to [0, 1] and augmentation happen inside the jitted
steps (see `mix_batch`), so the host only hands over indices.

Protocol (all sizes in `config.data`):
  * `num_images` train-split images chosen by `seed`;
  * `train`: `num_train_pairs` distinct unordered pairs of them, no self pairs, each in random order
    (with `resample_pairs`, fresh ones every epoch; with `stream_pairs`, pairs are drawn on the
    device every step instead, and `num_train_pairs` only sets the length of an epoch);
  * `val`: `num_val_pairs` further pairs of the same images, disjoint from `train` ("seen images");
  * `holdout`: `num_holdout_pairs` pairs of `num_holdout_images` further train-split images that
    are never trained on, fixed by `holdout_seed` ("unseen images" to choose recipes and
    checkpoints on, so the test pairs are only ever reported);
  * `test`: `num_test_pairs` pairs of `num_test_images` test-split images, chosen by the fixed
    `test_seed` so that every run is scored on the same pairs ("unseen images").
"""

from __future__ import annotations

import dataclasses
import os
import socket

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SHAPE = (32, 32, 3)
SPLIT_SIZES = {"train": 50_000, "test": 10_000}


class DataError(ValueError):
  """A data setting that cannot work; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class PairData:
  """Everything training and evaluation read, as host numpy arrays.

  train_images: uint8 [num_images, 32, 32, 3]; train/val pairs index into it.
  test_images: uint8 [num_test_images, 32, 32, 3]; test pairs index into it.
  holdout_images: uint8 [num_holdout_images, 32, 32, 3]; holdout pairs index into it.
  train_pairs, val_pairs, test_pairs, holdout_pairs: int32 [P, 2].
  val_linear: int64 [num_val_pairs], the val pairs as linear indices (see `pair_from_linear`),
    which `resample_pairs` must never draw.
  """

  train_images: np.ndarray
  test_images: np.ndarray
  holdout_images: np.ndarray
  train_pairs: np.ndarray
  val_pairs: np.ndarray
  test_pairs: np.ndarray
  holdout_pairs: np.ndarray
  val_linear: np.ndarray

  def eval_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The pair sets scored after every epoch, {split: (images, pairs indexing them)}: val,
    test, and holdout where the config sets one aside."""
    splits = {"val": (self.train_images, self.val_pairs),
              "test": (self.test_images, self.test_pairs)}
    if len(self.holdout_pairs):
      splits["holdout"] = (self.holdout_images, self.holdout_pairs)
    return splits


def num_pairs(n: int) -> int:
  """Distinct unordered pairs of n items, no self pairs."""
  return n * (n - 1) // 2


def pair_from_linear(k: np.ndarray, n: int) -> np.ndarray:
  """Maps linear indices in [0, n(n-1)/2) to pairs (i, j), i < j < n: `[K] -> [K, 2]`.

  Row i holds the pairs (i, i+1..n-1); it starts at offset i*n - i(i+1)/2.
  """
  k = np.asarray(k, dtype=np.int64)
  # Invert the row offset with the quadratic formula, then fix float rounding by one step.
  b = 2 * n - 1
  i = np.floor((b - np.sqrt(b * b - 8.0 * k)) / 2).astype(np.int64)
  start = lambda r: r * n - r * (r + 1) // 2
  i = np.where(start(i) > k, i - 1, i)
  i = np.where(start(i + 1) <= k, i + 1, i)
  j = k - start(i) + i + 1
  return np.stack([i, j], axis=-1)


def _random_order(pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Swaps each pair with probability 1/2, so neither slot means anything."""
  swap = rng.random(len(pairs)) < 0.5
  return np.where(swap[:, None], pairs[:, ::-1], pairs).astype(np.int32)


def check_sizes(data_cfg) -> None:
  """Raises DataError, naming the field, for pair counts the protocol cannot satisfy."""
  d = data_cfg
  for field in ("num_images", "num_train_pairs", "num_val_pairs", "num_test_images", "num_test_pairs"):
    if d[field] < 1:
      raise DataError(f"config.data.{field}={d[field]} must be >= 1.")
  for field in ("num_holdout_images", "num_holdout_pairs", "translate"):
    if d[field] < 0:
      raise DataError(f"config.data.{field}={d[field]} must be >= 0.")
  if bool(d.num_holdout_images) != bool(d.num_holdout_pairs):
    raise DataError(
        f"config.data.num_holdout_images={d.num_holdout_images} and num_holdout_pairs="
        f"{d.num_holdout_pairs} must both be 0 (no holdout split) or both >= 1.")
  if d.num_holdout_pairs > num_pairs(d.num_holdout_images):
    raise DataError(
        f"config.data.num_holdout_pairs={d.num_holdout_pairs} exceeds the "
        f"{num_pairs(d.num_holdout_images)} distinct pairs of num_holdout_images="
        f"{d.num_holdout_images}; lower it or raise num_holdout_images.")
  if d.num_images + d.num_holdout_images > SPLIT_SIZES["train"]:
    raise DataError(
        f"config.data.num_images + num_holdout_images = {d.num_images + d.num_holdout_images} is "
        f"larger than the CIFAR-10 train split ({SPLIT_SIZES['train']} images); lower one.")
  if d.translate > 16:
    raise DataError(f"config.data.translate={d.translate} pixels is more than half an image; "
                    "choose 0 (off) to 16.")
  if d.stream_pairs and d.resample_pairs:
    raise DataError("config.data.stream_pairs=True draws pairs every step: set "
                    "config.data.resample_pairs=False.")
  for field, split in (("num_images", "train"), ("num_test_images", "test")):
    if d[field] > SPLIT_SIZES[split]:
      raise DataError(
          f"config.data.{field}={d[field]} is larger than the CIFAR-10 {split} split "
          f"({SPLIT_SIZES[split]} images); choose at most {SPLIT_SIZES[split]}.")
  available = num_pairs(d.num_images)
  if d.num_train_pairs + d.num_val_pairs > available:
    raise DataError(
        f"config.data.num_train_pairs + num_val_pairs = {d.num_train_pairs + d.num_val_pairs} "
        f"exceeds the {available} distinct pairs of num_images={d.num_images} images; "
        "lower the pair counts or raise num_images.")
  if d.num_test_pairs > num_pairs(d.num_test_images):
    raise DataError(
        f"config.data.num_test_pairs={d.num_test_pairs} exceeds the "
        f"{num_pairs(d.num_test_images)} distinct pairs of num_test_images={d.num_test_images}; "
        "lower num_test_pairs or raise num_test_images.")


def make_pairs(data_cfg, seed: int) -> dict[str, np.ndarray]:
  """Chooses images and pairs. Pure function of the sizes, `seed`, `data_cfg.test_seed` and
  `data_cfg.holdout_seed`.

  Returns image indices into each split (`train_ids` [num_images], `holdout_ids`
  [num_holdout_images] of the train split, `test_ids` [num_test_images]), the pair sets `train`,
  `val`, `holdout`, `test` (int32 [P, 2], indices into those id arrays), and `val_linear`.
  """
  check_sizes(data_cfg)
  d = data_cfg
  rng = np.random.default_rng([seed, 0])
  holdout_ids, holdout = np.zeros(0, np.int64), np.zeros((0, 2), np.int32)
  if d.num_holdout_images:
    holdout_rng = np.random.default_rng([d.holdout_seed, 2])
    holdout_ids = np.sort(holdout_rng.choice(SPLIT_SIZES["train"], d.num_holdout_images,
                                             replace=False))
    linear = holdout_rng.choice(num_pairs(d.num_holdout_images), d.num_holdout_pairs,
                                replace=False)
    holdout = _random_order(pair_from_linear(linear, d.num_holdout_images), holdout_rng)
    rest = np.setdiff1d(np.arange(SPLIT_SIZES["train"]), holdout_ids)
    train_ids = np.sort(rest[rng.choice(len(rest), d.num_images, replace=False)])
  else:  # the study's protocol, image for image
    train_ids = np.sort(rng.choice(SPLIT_SIZES["train"], d.num_images, replace=False))
  n_all = num_pairs(d.num_images)
  chosen = rng.choice(n_all, d.num_train_pairs + d.num_val_pairs, replace=False)
  train = _random_order(pair_from_linear(chosen[:d.num_train_pairs], d.num_images), rng)
  val_linear = chosen[d.num_train_pairs:]
  val = _random_order(pair_from_linear(val_linear, d.num_images), rng)

  test_rng = np.random.default_rng([d.test_seed, 1])
  test_ids = np.sort(test_rng.choice(SPLIT_SIZES["test"], d.num_test_images, replace=False))
  test_linear = test_rng.choice(num_pairs(d.num_test_images), d.num_test_pairs, replace=False)
  test = _random_order(pair_from_linear(test_linear, d.num_test_images), test_rng)
  return dict(train_ids=train_ids, holdout_ids=holdout_ids, test_ids=test_ids, train=train,
              val=val, holdout=holdout, test=test, val_linear=val_linear)


def epoch_pairs(data: PairData, data_cfg, seed: int, epoch: int) -> np.ndarray | None:
  """The training pairs of one epoch, shuffled: int32 [num_train_pairs, 2]; None with
  `stream_pairs`, where the train step draws its own (`draw_pairs`).

  A pure function of (seed, epoch), so a resumed run sees the same order as an unbroken one.
  With `resample_pairs` each epoch draws fresh distinct pairs of the training images, never a
  val pair.
  """
  if data_cfg.stream_pairs:
    return None
  rng = np.random.default_rng([seed, 1, epoch])
  if data_cfg.resample_pairs:
    # Drawing len(val) extra pairs without replacement leaves >= num_train_pairs after dropping
    # the val ones, without materialising all n(n-1)/2 candidates.
    k = data_cfg.num_train_pairs
    linear = rng.choice(num_pairs(data_cfg.num_images), k + len(data.val_linear), replace=False)
    linear = linear[~np.isin(linear, data.val_linear)][:k]
    return _random_order(pair_from_linear(linear, data_cfg.num_images), rng)
  return data.train_pairs[rng.permutation(len(data.train_pairs))]


def resolve_data_dir(data_cfg) -> str | None:
  """config.data.data_dir, else $TFDS_DATA_DIR, else None (tfds' own default)."""
  return data_cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or None


def _online(host: str = "www.cs.toronto.edu", port: int = 443, timeout: float = 3.0) -> bool:
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def open_cifar10(data_cfg):
  """tfds data sources {'train', 'test'} for CIFAR-10; downloads and prepares it if allowed.

  Fails fast with one line instead of tfds' minutes of download retries when offline.
  """
  import tensorflow_datasets as tfds  # Slow import; only runs that read data pay it.

  data_dir = resolve_data_dir(data_cfg)
  builder = tfds.builder("cifar10", data_dir=data_dir)
  if not builder.is_prepared():
    where = builder.data_dir
    if not data_cfg.download:
      raise DataError(
          f"No prepared CIFAR-10 under {where} and config.data.download=False; set "
          "config.data.data_dir (or TFDS_DATA_DIR) to a tfds data dir holding cifar10, or allow "
          "config.data.download=True.")
    try:
      import tensorflow  # noqa: F401  tfds encodes images with tf.image while preparing.
    except ImportError:
      raise DataError(
          f"CIFAR-10 is not prepared under {where}, and preparing it needs TensorFlow: "
          "pip install 'unmix_jax[prepare]' (or tensorflow-cpu), or point config.data.data_dir "
          "at a prepared copy.") from None
    if not _online():
      raise DataError(
          f"CIFAR-10 is not prepared under {where} and its download host cannot be reached; "
          "connect to the internet or point config.data.data_dir at a prepared copy.")
    builder.download_and_prepare()
  return tfds.data_source("cifar10", data_dir=data_dir, download=False)


def _read_images(source, ids: np.ndarray) -> np.ndarray:
  if not len(ids):
    return np.zeros((0, *IMAGE_SHAPE), np.uint8)
  records = source.__getitems__([int(i) for i in ids])
  return np.stack([r["image"] for r in records]).astype(np.uint8)


def load(config, test_only: bool = False) -> PairData:
  """Reads the chosen CIFAR-10 images and builds the pair sets for `config`; with `test_only`,
  only the test images are read (the others are empty arrays)."""
  pairs = make_pairs(config.data, config.seed)
  sources = open_cifar10(config.data)
  read = lambda split, ids: _read_images(sources[split], ids[:0] if test_only else ids)
  return PairData(
      train_images=read("train", pairs["train_ids"]),
      test_images=_read_images(sources["test"], pairs["test_ids"]),
      holdout_images=read("train", pairs["holdout_ids"]),
      train_pairs=pairs["train"], val_pairs=pairs["val"], test_pairs=pairs["test"],
      holdout_pairs=pairs["holdout"], val_linear=pairs["val_linear"])


def draw_pairs(key: jax.Array, batch_size: int, num_images: int) -> jax.Array:
  """int32 [B, 2]: B ordered pairs (i, j), i != j, uniform over the num_images training images:
  a fresh stream of mixtures every step, with no pair table."""
  first_key, offset_key = jax.random.split(key)
  i = jax.random.randint(first_key, (batch_size,), 0, num_images)
  j = (i + jax.random.randint(offset_key, (batch_size,), 1, num_images)) % num_images
  return jnp.stack([i, j], axis=-1).astype(jnp.int32)


def augment(x: jax.Array, key: jax.Array, flip: bool, translate: int) -> jax.Array:
  """Each image of x [..., H, W, C] flipped left-right with probability 1/2 (`flip`) and shifted
  by up to `translate` pixels along each axis, the border filled by reflection. Applied to the
  images before mixing, so m = (x1 + x2) / 2 stays exact."""
  if flip:
    coin = jax.random.bernoulli(key, 0.5, x.shape[:-3])
    x = jnp.where(coin[..., None, None, None], x[..., :, ::-1, :], x)
  if translate:
    *lead, h, w, c = x.shape
    flat = x.reshape(-1, h, w, c)
    t = translate
    padded = jnp.pad(flat, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
    shifts = jax.random.randint(jax.random.fold_in(key, 1), (len(flat), 2), 0, 2 * t + 1)
    crop = lambda image, s: jax.lax.dynamic_slice(image, (s[0], s[1], 0), (h, w, c))
    x = jax.vmap(crop)(padded, shifts).reshape(x.shape)
  return x


def mix_batch(images: jax.Array, idx: jax.Array, key: jax.Array | None = None, *,
              flip: bool = True, translate: int = 0):
  """Gathers a batch of pairs and mixes it, on the device.

  Args:
    images: uint8 [N, 32, 32, 3].
    idx: int32 [B, 2] indices into `images`.
    key: if given, the images are augmented before mixing (`augment`: flips, and shifts of up to
      `translate` pixels).
  Returns:
    (m, x1, x2), float32 [B, 32, 32, 3] in [0, 1], with m = (x1 + x2) / 2.
  """
  x = images[idx].astype(jnp.float32) / 255.0  # [B, 2, H, W, C]
  if key is not None:
    x = augment(x, key, flip, translate)
  x1, x2 = x[:, 0], x[:, 1]
  return (x1 + x2) / 2, x1, x2
