"""Data parallel across (simulated) devices, bfloat16 compute, XLA profiles."""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import unet
from tests.conftest import ROOT
from tests.test_end_to_end import records, run_train
from tests.test_train import random_images, single_step
from unmix_jax import runs, train
from unmix_jax.models import layers

TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def test_two_devices_match_one_device(tmp_path, tfds_data_dir):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  steps = ("--config.train.epochs=2",)  # 8 steps
  first = run_train(one, *steps, data_dir=tfds_data_dir)
  second = run_train(two, *steps, data_dir=tfds_data_dir, env=TWO_DEVICES)
  assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
  assert "data parallel over 1 device" in first.stdout
  assert "data parallel over 2 devices" in second.stdout
  for a, b in zip(records(one), records(two)):
    assert (a["split"], a["step"]) == (b["split"], b["step"])
    for key in ("loss", "mse", "psnr"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"{a['split']} {key}")
  _, _, state_one, _ = runs.restore(one, "latest")
  _, _, state_two, _ = runs.restore(two, "latest")
  for a, b in zip(jax.tree.leaves(state_one.params), jax.tree.leaves(state_two.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_batch_is_split_across_devices():
  code = (
      "import numpy as np\n"
      "from unmix_jax import parallel\n"
      "mesh = parallel.make_mesh()\n"
      "x = parallel.shard_batch(np.zeros((16, 2), np.int32), mesh)\n"
      "print(len(x.addressable_shards), [s.data.shape for s in x.addressable_shards])\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", **TWO_DEVICES)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "2 [(8, 2), (8, 2)]"


def fixed_batch_losses(dtype, steps=25):
  config = unet.get_config("smoke")
  config.model.features = (16, 32)
  config.train.compute_dtype = dtype
  config.train.lr = 3e-3
  config.train.warmup_steps = 0
  tx = train.make_optimizer(config, 1000)
  graphdef, state = train.create_train_state(config, tx)
  step = single_step(graphdef, config, tx)
  idx = jnp.array([[i, (i + 1) % 16] for i in range(4)], jnp.int32)
  losses = []
  for _ in range(steps):
    state, parts = step(state, random_images(), idx, jax.random.PRNGKey(0))
    losses.append(float(parts["loss"]))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state)
             if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating))
  return np.array(losses)


def test_bfloat16_trains_and_stays_close_to_float32():
  f32 = fixed_batch_losses("float32")
  bf16 = fixed_batch_losses("bfloat16")
  assert bf16[-1] < 0.8 * bf16[0]
  np.testing.assert_allclose(bf16[:5], f32[:5], rtol=0.03)
  assert abs(bf16[-1] - f32[-1]) / f32[-1] < 0.1


def test_profile_writes_a_trace_and_the_hlo(tmp_path, tfds_data_dir):
  workdir = str(tmp_path / "run")
  result = run_train(workdir, "--config.profile.start_step=2", "--config.profile.num_steps=2",
                     "--config.profile.dump_hlo=True", data_dir=tfds_data_dir)
  assert result.returncode == 0, result.stderr[-2000:]
  traces = glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"), recursive=True)
  assert traces and os.path.getsize(traces[0]) > 0
  with open(os.path.join(workdir, "profile", "train_step.hlo.txt")) as f:
    hlo = f.read()
  convs = "unmix_onednn_conv_fwd" if layers.resolve("auto") == "onednn" else "convolution"
  assert hlo.startswith("HloModule") and convs in hlo
