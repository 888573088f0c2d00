"""experiments.benchmark: what it measures and prints (its figures are never asserted)."""

import pytest

from tests.conftest import assert_one_line_error, run_module
from unmix_jax import backend, benchmark
from unmix_jax.cpu import layer_timings
from unmix_jax.configs import ae, unet, vae

CONFIGS = {"unet": unet, "ae": ae, "vae": vae}


@pytest.mark.parametrize("name", ["ae"])
def test_measure_reports_every_figure_on_the_smoke_presets(name):
  result = benchmark.measure(CONFIGS[name].get_config("smoke"), steps=2, repeats=2, warmup=1)
  for key in ("compile_s", "images_per_s_min", "images_per_s_median", "images_per_s_max",
              "gflop_per_step", "gflop_per_s", "model_gflop_per_s", "outside_step_share",
              "host_batch_share", "conv_impl", "matmul_ceiling_gflop_per_s",
              "model_share_of_ceiling"):
    assert key in result, key
  assert result["matmul_ceiling_gflop_per_s"] > 0
  assert result["model_share_of_ceiling"] == pytest.approx(
      result["model_gflop_per_s"] / result["matmul_ceiling_gflop_per_s"], abs=1e-3)
  assert result["model"] == name and result["conv_impl"] == backend.resolve("auto")
  assert ("onednn_version" in result) == (result["conv_impl"] == "onednn")
  assert result["images_per_s_min"] <= result["images_per_s_median"] <= result["images_per_s_max"]
  assert 0 <= result["outside_step_share"] < 1
  assert 0 < result["host_batch_share"] < 1


@pytest.mark.slow
def test_the_command_prints_one_json_line_and_refuses_bad_counts():
  out = run_module("experiments.benchmark", "--config=configs/ae.py:smoke", "--steps=2",
                   "--repeats=1", "--warmup=0")
  assert out.returncode == 0, out.stderr[-2000:]
  assert '"model": "ae"' in out.stdout.strip().splitlines()[-1]
  assert_one_line_error(run_module("experiments.benchmark", "--config=configs/ae.py:smoke",
                                   "--repeats=0"), "--steps=")


def test_layer_timings_cover_every_conv_of_the_model():
  config = ae.get_config("smoke")
  rows = layer_timings.layer_timings(config, repeats=1)
  assert [(r["layer"], tuple(r["input"]), tuple(r["kernel"])) for r in rows] == [
      (kind, x, k) for kind, x, k, _ in layer_timings.conv_layers(config)]
  for row in rows:
    assert row["xla_ms"] > 0 and row["cpu_ms"] > 0 and "torch_ms" not in row
    assert row["plan"] in {"xla", "im2col", "taps", "valid_taps", "phase-matmul"}


def test_the_pytorch_reference_has_our_shapes_and_times_beside_us():
  """--compare=torch times PyTorch layers and steps of the same size (where torch is installed:
  `pip install -e '.[torch]'`)."""
  pytest.importorskip("torch")
  import jax.numpy as jnp

  from experiments import torch_reference
  from unmix_jax.cpu import forms

  for name, module in CONFIGS.items():
    for kind, x_shape, k_shape, strides in layer_timings.conv_layers(module.get_config(), batch=2):
      x, kernel = jnp.zeros(x_shape), jnp.zeros(k_shape)
      y = (forms.conv_transpose2d(x, kernel, strides) if kind == "ConvTranspose"
           else forms.conv2d(x, kernel, strides, "xla"))
      b, h, w, c = y.shape
      assert torch_reference.layer_step(kind, x_shape, k_shape, strides)() == (b, c, h, w)
  rows = layer_timings.layer_timings(unet.get_config("smoke"), 1, torch_reference.layer_step)
  assert rows and all(r["torch_ms"] > 0 and r["jax_over_torch"] > 0 for r in rows)
  out = run_module("experiments.benchmark", "--config=configs/ae.py:smoke", "--steps=2",
                   "--repeats=2", "--warmup=1", "--compare=torch")
  assert out.returncode == 0, out.stderr[-2000:]
  assert '"jax_over_torch"' in out.stdout and '"torch_params": ' in out.stdout


def test_peak_flops_by_device_kind_and_dtype():
  assert benchmark.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
  assert benchmark.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756.0e12  # not the SXM part
  assert benchmark.peak_flops("NVIDIA A100-SXM4-40GB", "float32") == 156.0e12  # TF32
  assert benchmark.peak_flops("TPU v5 lite", "float32") == 197.0e12
  assert benchmark.peak_flops("cpu", "float32") is None
