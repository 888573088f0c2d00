"""Settings shared by every architecture; each `configs/<model>.py` changes a few of them.

A preset is chosen with `--config=<model>:<preset>` (`PRESETS` says what each one is). The three
recipes train on every training image but a holdout split (what their checkpoints are chosen
on), draw fresh pairs every step, flip images, and evaluate a moving average of the weights
with flip averaging.
"""

import ml_collections

PRESETS = {
    "default": "the reference study: 1000 images, 45,000 training pairs; sized for a GPU",
    "cpu": "the study's protocol, smaller: finishes in minutes on a 2-core CPU",
    "cpu10": "the recipe that separates unseen images best in <= 10 minutes on 2 CPU cores",
    "cpu60": "the same recipe in <= 60 minutes (the shipped model)",
    "gpu": "the recommended recipe on a GPU/TPU",
    "smoke": "a few steps on a handful of images, for tests",
}
RECIPES = ("cpu10", "cpu60", "gpu")


def get_base_config(preset: str | None) -> ml_collections.ConfigDict:
  preset = preset or "default"
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0  # initial weights, image choice and data order
  c.loss = "pit"  # "pit" or "fixed" (the reference study's fixed-order MSE)

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""  # "" = $TFDS_DATA_DIR, else tfds' default (~/tensorflow_datasets)
  c.data.download = True  # let tfds download and prepare CIFAR-10 when it is missing
  c.data.num_images = 1000  # CIFAR-10 train images the pairs are made of
  c.data.num_train_pairs = 45_000  # pairs an epoch trains on
  c.data.num_val_pairs = 5_000  # pairs of the training images, never trained on as pairs
  c.data.num_test_images = 1000  # CIFAR-10 test images (unseen) the test pairs are made of
  c.data.num_test_pairs = 5_000  # pairs of unseen images, the headline score
  c.data.test_seed = 0  # fixed: every run is scored on the same unseen pairs
  # Train-split images never trained on, to choose recipes and checkpoints on (0: none; then the
  # best checkpoint is chosen on val, pairs of the training images).
  c.data.num_holdout_images = 0
  c.data.num_holdout_pairs = 0  # pairs of the holdout images
  c.data.holdout_seed = 0  # fixed, like test_seed
  c.data.resample_pairs = False  # fresh training pairs every epoch
  c.data.stream_pairs = False  # pairs drawn on the device every step: no pair table
  c.data.augment = False  # left-right flips of each image before mixing
  c.data.translate = 0  # random shifts of each image by up to this many pixels (reflected)

  c.model = ml_collections.ConfigDict()
  c.model.name = ""
  c.model.mixture_consistent = True  # outputs (m + d, m - d): they average to the mixture
  c.model.bounded = False  # d = tanh(y) * min(m, 1 - m): both outputs inside [0, 1]

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # pairs per step, over all devices
  c.train.epochs = 30  # each one trains, then scores every split and saves a checkpoint
  c.train.lr = 1e-3  # peak learning rate (AdamW, warm-up then cosine decay)
  c.train.warmup_steps = 500  # linear warm-up from 0 to lr
  c.train.end_lr_factor = 0.01  # cosine decay ends at lr * end_lr_factor
  c.train.weight_decay = 1e-4  # AdamW's decoupled weight decay
  c.train.grad_clip = 1.0  # clip the gradients' global norm to this
  c.train.log_every = 50  # steps per train line of metrics.jsonl
  # Train steps per jitted call (a lax.scan, the same numbers): > 1 saves the host's dispatch
  # between steps (configs/ae.py); it must divide an epoch's steps and log_every.
  c.train.steps_per_call = 1
  c.train.eval_batch_size = 500  # pairs per evaluation batch
  c.train.keep_checkpoints = 3  # the newest kept, and the best one besides
  c.train.skip_nonfinite = False  # True: drop updates with a non-finite loss or gradient
  c.train.ema_decay = 0.0  # > 0: evaluate a moving average of the weights (e.g. 0.999)
  # "bfloat16": activations and matmuls in bf16; parameters and optimizer state stay float32.
  c.train.compute_dtype = "float32"
  # How convs are computed: "onednn" (oneDNN's CPU convolutions, needs g++ and oneDNN 3),
  # "cpu" (matrix-product forms XLA:CPU runs well), "xla" (lax convs, right for GPU/TPU) or
  # "auto" (onednn where it builds, else cpu; xla off the CPU). Parameters are the same either
  # way, so checkpoints move between them.
  c.train.conv_impl = "auto"

  c.eval = ml_collections.ConfigDict()
  # Average the outputs for the mixture and its mirror image (matched by the better assignment).
  c.eval.flip_average = False

  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = -1  # >= 0: trace the num_steps steps after this one (workdir/profile)
  c.profile.num_steps = 5  # steps traced
  c.profile.dump_hlo = False  # write the optimised HLO of the train step

  if preset == "cpu" or preset in RECIPES:  # sized for a 2-core CPU
    c.data.num_train_pairs = 20_000
    c.data.num_val_pairs = 1000
    c.data.num_test_pairs = 1000
    c.train.batch_size = 32
    c.train.warmup_steps = 100
    c.train.log_every = 20
  if preset in RECIPES:
    c.data.num_images = 45_000
    c.data.num_holdout_images = 5_000
    c.data.num_holdout_pairs = 1000
    c.data.stream_pairs = True  # num_train_pairs is then the steps between evaluations
    c.data.augment = True
    c.train.warmup_steps = 200
    c.train.log_every = 125
    c.train.ema_decay = 0.999
    c.eval.flip_average = True
  if preset == "gpu":
    c.data.num_train_pairs = 102_400  # 800 steps of 128
    c.data.num_test_pairs = 5_000
    c.train.batch_size = 128
    c.train.lr = 2e-3
    c.train.log_every = 100
  if preset == "smoke":
    c.data.num_images = 32
    c.data.num_train_pairs = 64
    c.data.num_val_pairs = 16
    c.data.num_test_images = 16
    c.data.num_test_pairs = 16
    c.train.batch_size = 16
    c.train.epochs = 2
    c.train.warmup_steps = 2
    c.train.log_every = 2
    c.train.steps_per_call = 2
    c.train.eval_batch_size = 8
  return c
