"""The CPU formulations of the conv layers against the stock Flax / lax layers."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import ae, unet, vae
from tests.conftest import ROOT
from unmix_jax import benchmark, checkpoint, models, train
from unmix_jax.models import layers

CONFIGS = {"unet": unet, "ae": ae, "vae": vae}


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def value_and_grads(f, x, kernel):
  """f(x, kernel) and the gradients of a random projection of it, w.r.t. both inputs."""
  y = f(x, kernel)
  probe = jax.random.normal(jax.random.PRNGKey(9), y.shape)
  grads = jax.grad(lambda x, k: jnp.sum(f(x, k) * probe), argnums=(0, 1))(x, kernel)
  return y, grads


def stock_conv(strides):
  return lambda x, k: jax.lax.conv_general_dilated(x, k, strides, "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))


def stock_conv_transpose(strides):
  return lambda x, k: jax.lax.conv_transpose(x, k, strides, "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("plan", ["im2col", "taps", "valid_taps", "xla"])
@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (1, 1), (2, 2), (2, 1), (5, 1)])
@pytest.mark.parametrize("hw", [1, 2, 5, 8, 9])
def test_conv_plans_equal_lax_conv_in_value_and_gradient(plan, k, s, hw):
  if plan == "valid_taps" and s != 1:
    with pytest.raises(ValueError, match="stride-1"):
      layers.conv2d(jnp.zeros((1, hw, hw, 2)), jnp.zeros((k, k, 2, 3)), (s, s), plan)
    return
  x = jax.random.normal(jax.random.PRNGKey(0), (3, hw, hw + 1, 5))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, 5, 7))
  got = value_and_grads(lambda x, w: layers.conv2d(x, w, (s, s), plan), x, kernel)
  want = value_and_grads(stock_conv((s, s)), x, kernel)
  assert got[0].shape == want[0].shape
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 1), (4, 2), (3, 3)])
@pytest.mark.parametrize("hw", [1, 2, 4, 7])
def test_transposed_conv_equals_lax_conv_transpose_in_value_and_gradient(k, s, hw):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, hw, hw + 1, 6))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, 6, 4))
  got = value_and_grads(lambda x, w: layers.conv_transpose2d(x, w, (s, s)), x, kernel)
  want = value_and_grads(stock_conv_transpose((s, s)), x, kernel)
  assert got[0].shape == want[0].shape == (2, hw * s, (hw + 1) * s, 4)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(a, b) <= 1e-5


def test_the_plan_covers_every_formulation_on_the_default_unet_shapes():
  plans = [layers.conv_plan((64, hw, hw, cin), (3, 3, cin, cout), (1, 1))
           for hw, cin, cout in [(32, 3, 38), (32, 38, 38), (8, 152, 152), (2, 608, 608)]]
  assert plans == ["im2col", "taps", "valid_taps", "valid_taps"]
  assert layers.conv_plan((64, 32, 32, 16), (3, 3, 16, 3), (1, 1)) == "xla"  # the AE's last


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("preset", [None, "cpu", "smoke"])
def test_every_layer_of_every_model_matches_the_stock_layer(name, preset):
  """Each conv a model runs, at the shape it runs it (batch 2), in value and gradient."""
  shapes = benchmark.conv_layers(CONFIGS[name].get_config(preset), batch=2)
  assert {kind for kind, *_ in shapes} == {"Conv", "ConvTranspose"}
  for i, (kind, x_shape, k_shape, strides) in enumerate(shapes):
    x = jax.random.normal(jax.random.PRNGKey(i), x_shape)
    kernel = jax.random.normal(jax.random.PRNGKey(100 + i), k_shape)
    if kind == "ConvTranspose":
      fast = lambda x, w: layers.conv_transpose2d(x, w, strides)
      stock = stock_conv_transpose(strides)
    else:
      plan = layers.conv_plan(x_shape, k_shape, strides)
      fast = lambda x, w, plan=plan: layers.conv2d(x, w, strides, plan)
      stock = stock_conv(strides)
    got, want = value_and_grads(fast, x, kernel), value_and_grads(stock, x, kernel)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert rel_err(a, b) <= 1e-5, (kind, x_shape, k_shape, strides)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_both_implementations_have_the_same_parameters_and_outputs(name):
  config = CONFIGS[name].get_config("cpu")
  fast, stock = (models.build(config.model, 0, conv_impl=i) for i in ("cpu", "xla"))
  p_fast, p_stock = nnx.state(fast, nnx.Param), nnx.state(stock, nnx.Param)
  assert jax.tree.structure(p_fast) == jax.tree.structure(p_stock)
  for a, b in zip(jax.tree.leaves(p_fast), jax.tree.leaves(p_stock)):
    np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
  m = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
  for a, b in zip(fast(m, train=False)[:2], stock(m, train=False)[:2]):
    assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("saved_with,restored_with", [("xla", "cpu"), ("cpu", "xla")])
def test_a_checkpoint_moves_between_implementations(tmp_path, saved_with, restored_with):
  config = ae.get_config("smoke")  # BatchNorm statistics too
  config.train.conv_impl = saved_with
  tx = train.make_optimizer(config, 10)
  graphdef, state = train.create_train_state(config, tx)
  step = train.make_train_step(graphdef, config, tx)
  images = jax.random.randint(jax.random.PRNGKey(0), (8, 32, 32, 3), 0, 256).astype(jnp.uint8)
  idx = jnp.array([[0, 1], [2, 3], [4, 5], [6, 7]], jnp.int32)
  key = jax.random.PRNGKey(0)
  window = train.zero_window(graphdef, config, tx, state, images, idx, key)
  for _ in range(3):
    state, _ = step(state, window, images, idx, key)
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  ckpts.save(3, state, {"epoch": 1}, 0.1)
  ckpts.close()

  config.train.conv_impl = restored_with
  graphdef2, fresh = train.create_train_state(config, tx)
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  restored, _ = ckpts.restore_latest(fresh)
  ckpts.close()
  m = images[:4].astype(jnp.float32) / 255
  before = nnx.merge(graphdef, state.params, state.model_state)(m, train=False)
  after = nnx.merge(graphdef2, restored.params, restored.model_state)(m, train=False)
  for a, b in zip(after[:2], before[:2]):
    assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_benchmark_runs_on_the_smoke_presets_and_prints_its_keys(name):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", f"--config=configs/{name}.py:smoke",
       "--steps=2", "--repeats=2", "--warmup=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  for key in ("compile_s", "images_per_s_min", "images_per_s_median", "images_per_s_max",
              "gflop_per_step", "gflop_per_s", "model_gflop_per_s", "outside_step_share",
              "host_batch_share",
              "conv_impl", "matmul_ceiling_gflop_per_s", "model_share_of_ceiling"):
    assert key in result, key
  assert result["matmul_ceiling_gflop_per_s"] > 0
  assert result["model_share_of_ceiling"] == pytest.approx(
      result["model_gflop_per_s"] / result["matmul_ceiling_gflop_per_s"], abs=1e-3)
  assert result["model"] == name and result["conv_impl"] == layers.resolve("auto")
  assert ("onednn_version" in result) == (result["conv_impl"] == "onednn")
  assert result["images_per_s_min"] <= result["images_per_s_median"] <= result["images_per_s_max"]
  assert 0 <= result["outside_step_share"] < 1
  assert 0 < result["host_batch_share"] < 1


def test_benchmark_compares_with_pytorch_when_it_is_installed():
  pytest.importorskip("torch")
  out = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--config=configs/ae.py:smoke",
       "--steps=2", "--repeats=2", "--warmup=1", "--compare=torch"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["torch_params"] == result["params"]  # the same network
  assert result["jax_over_torch"] > 0


def test_layer_timings_cover_every_conv_of_the_model():
  config = ae.get_config("smoke")
  rows = benchmark.layer_timings(config, repeats=1)
  assert [(r["layer"], tuple(r["input"]), tuple(r["kernel"])) for r in rows] == [
      (kind, x, k) for kind, x, k, _ in benchmark.conv_layers(config)]
  for row in rows:
    assert row["xla_ms"] > 0 and row["cpu_ms"] > 0 and "torch_ms" not in row
    assert row["plan"] in {"xla", "im2col", "taps", "valid_taps", "phase-matmul"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pytorch_layers_have_the_output_shapes_of_ours(name):
  """--layers --compare=torch times PyTorch layers of the same size: same output shape as the
  JAX layer (so the same FLOPs) for every conv of every preset."""
  pytest.importorskip("torch")
  from experiments import torch_reference
  for preset in (None, "cpu", "smoke"):
    for kind, x_shape, k_shape, strides in benchmark.conv_layers(
        CONFIGS[name].get_config(preset), batch=2):
      x, kernel = jnp.zeros(x_shape), jnp.zeros(k_shape)
      if kind == "ConvTranspose":
        y = layers.conv_transpose2d(x, kernel, strides)
      else:
        y = layers.conv2d(x, kernel, strides, "xla")
      b, h, w, c = y.shape
      assert torch_reference.layer_step(kind, x_shape, k_shape, strides)() == (b, c, h, w), (
          kind, x_shape, k_shape, strides)


def test_layer_timings_beside_pytorch():
  pytest.importorskip("torch")
  from experiments import torch_reference
  rows = benchmark.layer_timings(unet.get_config("smoke"), 1, torch_reference.layer_step)
  assert rows and all(r["torch_ms"] > 0 and r["jax_over_torch"] > 0 for r in rows)


def test_benchmark_refuses_bad_counts_in_one_line():
  out = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--config=configs/ae.py:smoke",
       "--repeats=0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: --steps=")
  assert "Traceback" not in out.stderr


@pytest.mark.parametrize("cls,k,s", [(layers.Conv, 3, 1), (layers.ConvTranspose, 2, 2)])
def test_layers_without_bias_match_the_stock_layer(cls, k, s):
  kw = dict(strides=(s, s), use_bias=False)
  fast = cls(4, 6, (k, k), impl="cpu", rngs=nnx.Rngs(0), **kw)
  stock = cls(4, 6, (k, k), impl="xla", rngs=nnx.Rngs(0), **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
  assert rel_err(fast(x), stock(x)) <= 1e-5
