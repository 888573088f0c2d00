"""Data parallel across (simulated) devices and bfloat16 compute."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from tests.conftest import ROOT, random_images, records, single_step, train_smoke
from unmix_jax import runs, steps
from unmix_jax.configs import unet

# A smoke run on two simulated devices (where 'auto' picks the matrix-product convs), with the
# shards of one index batch.
TWO_DEVICE_RUN = """
import json, sys
import numpy as np
from unmix_jax import parallel
from tests.conftest import train_smoke
mesh = parallel.make_mesh()
x = parallel.shard_batch(np.zeros((16, 2), np.int32), mesh)
print(json.dumps([list(s.data.shape) for s in x.addressable_shards]))
train_smoke(sys.argv[1])
"""


def test_two_devices_match_one_device(tmp_path, tfds_data_dir):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, "-c", TWO_DEVICE_RUN, two], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.splitlines()[0]) == [[8, 2], [8, 2]]  # the batch is split
  assert "data parallel over 2 devices" in out.stdout and "convs as cpu (auto)" in out.stdout
  train_smoke(one, **{"train.conv_impl": "cpu"})  # the same convs on one device
  assert [(r["split"], r["step"]) for r in records(one)] == [
      (r["split"], r["step"]) for r in records(two)]
  for a, b in zip(records(one), records(two)):
    for key in ("loss", "mse", "psnr"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"{a['split']} {key}")
  _, _, state_one, _ = runs.restore(one, "latest")
  _, _, state_two, _ = runs.restore(two, "latest")
  for a, b in zip(jax.tree.leaves(state_one.params), jax.tree.leaves(state_two.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def fixed_batch_losses(dtype, num_steps=25):
  config = unet.get_config("smoke")
  config.model.features = (16, 32)
  config.train.compute_dtype = dtype
  config.train.lr = 3e-3
  config.train.warmup_steps = 0
  tx = steps.make_optimizer(config, 1000)
  graphdef, state = steps.create_train_state(config, tx)
  step = single_step(graphdef, config, tx)
  idx = jnp.array([[i, (i + 1) % 16] for i in range(4)], jnp.int32)
  losses = []
  for _ in range(num_steps):
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
