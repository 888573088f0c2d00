"""conv_impl='onednn': oneDNN's convolutions through XLA's FFI against lax and the cpu forms.
Skipped where g++ or oneDNN 3.x is missing (pyproject.toml installs oneDNN on Linux x86-64)."""

import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import ae, unet, vae
from tests.test_layers import rel_err, stock_conv, stock_conv_transpose, value_and_grads
from unmix_jax import models
from unmix_jax.models import layers, onednn, up_conv


@pytest.fixture(scope="module", autouse=True)
def built():
  try:
    onednn.load()
  except ValueError as e:
    pytest.skip(str(e))


# (batch, h, w, cin, cout, kernel, stride): odd and non-square sizes, 1x1 inputs and kernels.
CONVS = [(2, 8, 8, 6, 5, 3, 1), (3, 9, 7, 5, 6, 3, 1), (2, 1, 1, 4, 3, 3, 1),
         (2, 16, 12, 38, 76, 3, 1), (1, 5, 11, 7, 2, 3, 1), (2, 9, 7, 5, 6, 3, 2),
         (2, 32, 32, 3, 8, 3, 2), (2, 3, 3, 4, 4, 3, 2), (2, 6, 5, 8, 3, 1, 1),
         (2, 5, 6, 3, 4, 4, 2)]
TRANSPOSED = [(2, 4, 4, 6, 5, 3, 2), (2, 5, 3, 6, 5, 3, 2), (1, 1, 1, 3, 2, 3, 2),
              (2, 4, 4, 6, 5, 2, 2), (1, 3, 4, 2, 3, 3, 1), (2, 3, 2, 4, 3, 4, 2)]


@pytest.mark.parametrize("op,shape", [("conv", s) for s in CONVS]
                         + [("conv_transpose", s) for s in TRANSPOSED])
def test_equals_lax_in_value_and_gradients(op, shape):
  b, h, w, cin, cout, k, s = shape
  x = jax.random.normal(jax.random.PRNGKey(0), (b, h, w, cin))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout))
  fast = getattr(onednn, op)
  stock = (stock_conv if op == "conv" else stock_conv_transpose)((s, s))
  got = value_and_grads(jax.jit(lambda x, w: fast(x, w, (s, s))), x, kernel)
  want = value_and_grads(stock, x, kernel)
  assert got[0].shape == want[0].shape
  if op == "conv_transpose":
    assert got[0].shape == (b, h * s, w * s, cout)
  for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(a, b_) <= 1e-5, (op, shape)


@pytest.mark.parametrize("config", [unet.get_config("cpu"), ae.get_config(), vae.get_config()],
                         ids=["unet-cpu", "ae", "vae"])
def test_models_with_onednn_equal_the_cpu_forms_in_output_and_gradient(config):
  fast, ref = (models.build(config.model, 0, conv_impl=i) for i in ("onednn", "cpu"))
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3))

  def loss(model):
    return jnp.sum(jax.tree.leaves(model(x, key=jax.random.PRNGKey(3)))[0] ** 2)

  (l_fast, g_fast), (l_ref, g_ref) = (nnx.value_and_grad(loss)(m) for m in (fast, ref))
  assert rel_err(l_fast, l_ref) <= 1e-5
  for a, b in zip(jax.tree.leaves(nnx.state(g_fast)), jax.tree.leaves(nnx.state(g_ref))):
    assert rel_err(a, b) <= 1e-4


@pytest.mark.parametrize("b,h,w,cin,c,cout", [(2, 8, 8, 6, 5, 4), (1, 8, 12, 3, 7, 2),
                                                (2, 16, 16, 76, 38, 38)])
def test_the_composed_up_level_equals_up_sampling_concatenation_and_conv(b, h, w, cin, c, cout):
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  args = (jax.random.normal(keys[0], (b, h, w, cin)),
          jax.random.normal(keys[1], (b, 2 * h, 2 * w, c)),
          jax.random.normal(keys[2], (2, 2, cin, c)), jax.random.normal(keys[3], (c,)),
          jax.random.normal(keys[4], (3, 3, 2 * c, cout)), jax.random.normal(keys[5], (cout,)))

  def stock(x, skip, up_kernel, up_bias, conv_kernel, conv_bias):
    up = stock_conv_transpose((2, 2))(x, up_kernel) + up_bias
    return stock_conv((1, 1))(jnp.concatenate([up, skip], -1), conv_kernel) + conv_bias

  cotangent = jax.random.normal(keys[0], (b, 2 * h, 2 * w, cout))
  got, want = (jax.jit(lambda *a, f=f: (f(*a), jax.vjp(f, *a)[1](cotangent)))(*args)
               for f in (up_conv.up_concat_conv, stock))
  for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(a, b_) <= 1e-5


def test_the_unet_composes_its_up_levels_from_8x8_inputs():
  # Measured on the default U-Net (README, Performance): the 8 -> 16 and 16 -> 32 levels gain,
  # at 4 -> 8 building the composed kernel costs what the composition saves.
  f32 = jnp.float32
  assert up_conv.used((64, 16, 16, 76), (2, 2, 76, 38), (2, 2), f32)
  assert up_conv.used((64, 8, 8, 152), (2, 2, 152, 76), (2, 2), f32)
  assert not up_conv.used((64, 4, 4, 304), (2, 2, 304, 152), (2, 2), f32)
  assert not up_conv.used((64, 16, 16, 76), (2, 2, 76, 38), (2, 2), jnp.bfloat16)
  assert not up_conv.used((64, 16, 16, 76), (3, 3, 76, 38), (2, 2), f32)
  config = unet.get_config("cpu")
  model = models.build(config.model, 0, conv_impl="onednn")
  hlo = jax.jit(lambda m: model(m)[0]).lower(jnp.zeros((2, 32, 32, 3))).as_text()
  assert hlo.count("unmix_onednn_conv_fwd") > 0 and hlo.count("transposed = true") == 2


def test_handles_only_the_shapes_it_wins_on():
  f32 = jnp.float32
  assert onednn.handles((64, 32, 32, 38), (3, 3, 38, 38), (1, 1), f32)
  assert onednn.handles((64, 32, 32, 38), (1, 1, 38, 3), (1, 1), f32)
  assert onednn.handles((64, 32, 32, 3), (3, 3, 3, 32), (2, 2), f32)  # AE's first conv
  assert onednn.handles((64, 4, 4, 64), (3, 3, 64, 56), (2, 2), f32, transposed=True)
  assert onednn.handles((64, 32, 32, 3), (3, 3, 3, 38), (1, 1), f32)  # U-Net's first conv
  assert onednn.handles((64, 4, 4, 304), (3, 3, 304, 304), (1, 1), f32)
  assert not onednn.handles((64, 2, 2, 608), (3, 3, 608, 608), (1, 1), f32)
  assert not onednn.handles((64, 8, 8, 152), (2, 2, 152, 76), (2, 2), f32, transposed=True)
  assert not onednn.handles((64, 32, 32, 38), (3, 3, 38, 38), (1, 1), jnp.bfloat16)


def test_the_input_gradient_is_computed_only_where_it_is_read():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))

  def targets(argnums):
    loss = lambda x, w: jnp.sum(onednn.conv(x, w, (1, 1)) ** 2)
    hlo = jax.jit(jax.grad(loss, argnums=argnums)).lower(x, kernel).compile().as_text()
    return {t for t in ("conv_fwd", "conv_bwd_data", "conv_bwd_weights")
            if f'custom_call_target="unmix_onednn_{t}"' in hlo}

  assert targets(1) == {"conv_fwd", "conv_bwd_weights"}  # a first layer: x is data
  assert targets((0, 1)) == {"conv_fwd", "conv_bwd_data", "conv_bwd_weights"}


_RESULT_DIGEST = textwrap.dedent("""
    import hashlib, sys
    import jax, numpy as np
    from unmix_jax.models import onednn
    onednn.load()
    if sys.argv[1] == "first":
      onednn._prepare = lambda *shapes: None  # primitives built at run time: oneDNN's first choice
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 38))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 38, 38))
    loss = lambda x, w: (onednn.conv(x, w, (1, 1)) ** 2).sum()
    out = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)
    print(hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in jax.tree.leaves(out)))
          .hexdigest())
    """)


def test_the_implementations_picked_by_time_compute_the_same_bits():
  # Tracing times oneDNN's implementations of each layer and keeps the fastest of those equal
  # to its first choice bit for bit: a 38-channel 32x32 conv runs AVX2 kernels on a Zen 4.
  digests = {subprocess.run([sys.executable, "-c", _RESULT_DIGEST, mode], capture_output=True,
                            text=True, check=True).stdout for mode in ("first", "fastest")}
  assert len(digests) == 1 and len(digests.pop()) == 65


def test_auto_picks_onednn_where_it_builds():
  assert onednn.unavailable() is None
  assert layers.resolve("auto") == "onednn"


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                    reason="pyproject.toml installs oneDNN only on Linux x86-64")
def test_builds_against_the_onednn_pyproject_installs():
  # Not the system's: Debian 12's libdnnl-dev is 2.6, with slower AVX2 kernels (onednn.py).
  assert onednn.version() == "3.2.0"


def _fake_onednn(root):
  (root / "include" / "oneapi" / "dnnl").mkdir(parents=True)
  (root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").touch()
  (root / "lib").mkdir()
  (root / "lib" / "libdnnl.so.3").touch()


def test_the_build_finds_the_wheels_in_the_environment_then_under_the_user_base(
    tmp_path, monkeypatch):
  env, user = tmp_path / "env", tmp_path / "user"
  monkeypatch.setattr(sys, "prefix", str(env))
  monkeypatch.setattr(onednn.site, "getuserbase", lambda: str(user))
  assert onednn._onednn_flags() == ["-ldnnl"]  # neither: the system's
  _fake_onednn(user)  # pip install --user
  assert onednn._onednn_flags()[:2] == [f"-I{user / 'include'}", f"-L{user / 'lib'}"]
  _fake_onednn(env)  # the environment's wins
  assert onednn._onednn_flags()[:2] == [f"-I{env / 'include'}", f"-L{env / 'lib'}"]
