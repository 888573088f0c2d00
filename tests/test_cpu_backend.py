"""The CPU backend (unmix_jax.cpu) against Flax's layers and lax: the same parameters, the same
values and gradients to float32 rounding, for every layer the models run. oneDNN's tests are
skipped where g++ or oneDNN 3.x is missing (pyproject.toml installs oneDNN on Linux x86-64)."""

import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import rel_err, value_and_grads
from unmix_jax import backend, checkpoint, cpu, models, steps
from unmix_jax.cpu import layer_timings
from unmix_jax.configs import ae, unet, vae
from unmix_jax.cpu import batchnorm, forms, onednn, pool, up_conv
from unmix_jax.models import layers as layers_lib

CONFIGS = {"unet": unet, "ae": ae, "vae": vae}
ONEDNN = pytest.mark.skipif(onednn.unavailable() is not None, reason=f"{onednn.unavailable()}")
IMPLS = ["cpu", pytest.param("onednn", marks=ONEDNN)]


def stock_conv(strides):
  return lambda x, k: jax.lax.conv_general_dilated(x, k, strides, "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))


def stock_conv_transpose(strides):
  return lambda x, k: jax.lax.conv_transpose(x, k, strides, "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))


def assert_same(got, want, tol=1e-5):
  assert got[0].shape == want[0].shape
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(a, b) <= tol


# The matrix-product forms (conv_impl='cpu').

@pytest.mark.parametrize("plan", ["im2col", "taps", "valid_taps", "xla"])
@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (1, 1), (2, 2), (5, 1)])
@pytest.mark.parametrize("hw", [1, 5, 9])
def test_conv_forms_equal_lax_in_value_and_gradient(plan, k, s, hw):
  if plan == "valid_taps" and s != 1:
    with pytest.raises(ValueError, match="stride-1"):
      forms.conv2d(jnp.zeros((1, hw, hw, 2)), jnp.zeros((k, k, 2, 3)), (s, s), plan)
    return
  x = jax.random.normal(jax.random.PRNGKey(0), (3, hw, hw + 1, 5))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, 5, 7))
  assert_same(value_and_grads(lambda x, w: forms.conv2d(x, w, (s, s), plan), x, kernel),
              value_and_grads(stock_conv((s, s)), x, kernel))


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 1), (4, 2), (3, 3)])
@pytest.mark.parametrize("hw", [1, 4, 7])
def test_the_transposed_form_equals_lax_in_value_and_gradient(k, s, hw):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, hw, hw + 1, 6))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, 6, 4))
  got = value_and_grads(lambda x, w: forms.conv_transpose2d(x, w, (s, s)), x, kernel)
  assert got[0].shape == (2, hw * s, (hw + 1) * s, 4)
  assert_same(got, value_and_grads(stock_conv_transpose((s, s)), x, kernel))


@pytest.mark.parametrize("name,preset", [("unet", None), ("unet", "cpu"), ("unet", "cpu10"),
                                         ("ae", None), ("vae", None)])
@pytest.mark.slow
def test_every_layer_of_every_model_matches_lax_at_its_shape(name, preset):
  """Each conv the models run (batch 2), in the form the CPU layers pick for it."""
  shapes = layer_timings.conv_layers(CONFIGS[name].get_config(preset), batch=2)
  assert {kind for kind, *_ in shapes} == {"Conv", "ConvTranspose"}
  for i, (kind, x_shape, k_shape, strides) in enumerate(shapes):
    x = jax.random.normal(jax.random.PRNGKey(i), x_shape)
    kernel = jax.random.normal(jax.random.PRNGKey(100 + i), k_shape)
    if kind == "ConvTranspose":
      fast, stock = (lambda x, w: forms.conv_transpose2d(x, w, strides),
                     stock_conv_transpose(strides))
    else:
      plan = forms.conv_plan(x_shape, k_shape, strides)
      fast, stock = lambda x, w: forms.conv2d(x, w, strides, plan), stock_conv(strides)
    assert_same(value_and_grads(fast, x, kernel), value_and_grads(stock, x, kernel))


# The layers: same parameters, same outputs, checkpoints move between backends.

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_backend_builds_the_same_parameters_and_outputs(name, impl):
  config = CONFIGS[name].get_config("cpu")
  fast = models.build(config.model, 0, backend.layers(impl))
  stock = models.build(config.model, 0, layers_lib.xla())
  p_fast, p_stock = nnx.state(fast, nnx.Param), nnx.state(stock, nnx.Param)
  assert jax.tree.structure(p_fast) == jax.tree.structure(p_stock)
  for a, b in zip(jax.tree.leaves(p_fast), jax.tree.leaves(p_stock)):
    np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
  m = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
  run = nnx.jit(lambda model, m: model(m, train=False)[:2])
  for a, b in zip(run(fast, m), run(stock, m)):
    assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_backend_trains_like_flax_layers(name, impl):
  """Train-mode loss gradients (and the AE's updated BatchNorm statistics) of a whole model."""
  config = CONFIGS[name].get_config("smoke" if name != "unet" else "cpu")
  m = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
  probe = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  results = []
  for layers in (backend.layers(impl), layers_lib.xla()):
    graphdef, params, rest = nnx.split(models.build(config.model, 0, layers), nnx.Param, ...)

    def loss(params, graphdef=graphdef, rest=rest):
      model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))
      x1, x2, _ = model(m, train=True, key=jax.random.PRNGKey(3))
      return jnp.sum((x1 - x2) * probe), nnx.state(model, nnx.BatchStat)

    results.append(jax.jit(jax.grad(loss, has_aux=True))(params))
  # Conv biases right before a BatchNorm get gradients that are 0 up to rounding: measure each
  # leaf against a hundredth of the largest entry of its half (gradients, statistics).
  for got, want in zip(results[0], results[1]):
    scale = max([float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(want)] or [0.0])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      floor = 1e-2 * scale
      assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * max(float(jnp.max(jnp.abs(b))), floor)


@pytest.mark.parametrize("saved_with,restored_with", [("xla", "cpu"), ("cpu", "xla")])
def test_a_checkpoint_moves_between_backends(tmp_path, saved_with, restored_with):
  from tests.conftest import single_step

  config = ae.get_config("smoke")  # BatchNorm statistics too
  config.train.conv_impl = saved_with
  tx = steps.make_optimizer(config, 10)
  graphdef, state = steps.create_train_state(config, tx)
  images = jax.random.randint(jax.random.PRNGKey(0), (8, 32, 32, 3), 0, 256).astype(jnp.uint8)
  idx = jnp.array([[0, 1], [2, 3], [4, 5], [6, 7]], jnp.int32)
  step = single_step(graphdef, config, tx)
  for _ in range(3):
    state, _ = step(state, images, idx, jax.random.PRNGKey(0))
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  ckpts.save(3, state, {"epoch": 1}, 0.1)
  ckpts.close()

  config.train.conv_impl = restored_with
  graphdef2, fresh = steps.create_train_state(config, tx)
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  _, restored, _ = ckpts.restore(fresh)
  ckpts.close()
  m = images[:4].astype(jnp.float32) / 255
  before = nnx.merge(graphdef, state.params, state.model_state)(m, train=False)
  after = nnx.merge(graphdef2, restored.params, restored.model_state)(m, train=False)
  for a, b in zip(after[:2], before[:2]):
    assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("cls,k,s", [(nnx.Conv, 3, 1), (nnx.ConvTranspose, 2, 2)])
def test_layers_without_bias_match_flax(cls, k, s):
  kw = dict(strides=(s, s), use_bias=False)
  layers = cpu.layers("cpu")
  fast = (layers.conv if cls is nnx.Conv else layers.conv_transpose)(4, 6, (k, k),
                                                                     rngs=nnx.Rngs(0), **kw)
  stock = cls(4, 6, (k, k), rngs=nnx.Rngs(0), **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
  assert rel_err(fast(x), stock(x)) <= 1e-5


def test_the_one_pass_max_pool_gradient():
  """Equal to autodiff of `max` without ties; at ties every tied input gets the gradient."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 4, 5))
  probe = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 2, 5))
  np.testing.assert_array_equal(pool.max_pool_2x2(x), layers_lib.max_pool_2x2(x))
  grads = [jax.grad(lambda x: jnp.sum(f(x) * probe))(x)
           for f in (pool.max_pool_2x2, layers_lib.max_pool_2x2)]
  np.testing.assert_array_equal(grads[0], grads[1])
  flat = jnp.ones((1, 2, 2, 1))
  assert float(jnp.sum(jax.grad(lambda x: jnp.sum(pool.max_pool_2x2(x)))(flat))) == 4.0


# BatchNorm + ReLU as one op.

def make_norm(c: int, impl: str | None, seed: int = 0):
  kw = dict(momentum=0.9, rngs=nnx.Rngs(seed))
  norm = batchnorm.BatchNormReLU(c, impl=impl, **kw) if impl else layers_lib.BatchNormReLU(c, **kw)
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  norm.scale[...] = 1 + 0.5 * jax.random.normal(keys[0], (c,))
  norm.bias[...] = 0.3 * jax.random.normal(keys[1], (c,))
  norm.mean[...] = jax.random.normal(keys[2], (c,))
  norm.var[...] = jax.random.uniform(keys[3], (c,), minval=0.5, maxval=2)
  return norm


def run_norm(norm, x, probe):
  """Output, gradients w.r.t. (x, scale, bias) of sum(out * probe) and the updated running
  statistics, of one training-mode call."""
  graphdef, params, stats = nnx.split(norm, nnx.Param, nnx.BatchStat)

  def loss(x, params):
    model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, stats))
    out = model(x, train=True)
    return jnp.sum(out * probe), (out, nnx.state(model, nnx.BatchStat))

  (_, (out, new_stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, params)
  return out, grads, new_stats


# Odd sizes, one channel, and a mean far from zero against the std (the E[x^2] - E[x]^2 form).
@pytest.mark.parametrize("shape,offset", [((2, 3, 5, 6), 0.0), ((4, 8, 8, 1), 0.0),
                                          ((8, 4, 4, 16), 3.0), ((3, 7, 5), -2.0)])
@pytest.mark.parametrize("impl", IMPLS)
def test_fused_batchnorm_relu_equals_flax(shape, offset, impl):
  x = offset + jax.random.normal(jax.random.PRNGKey(1), shape)
  probe = jax.random.normal(jax.random.PRNGKey(2), shape)
  got = run_norm(make_norm(shape[-1], impl), x, probe)
  want = run_norm(make_norm(shape[-1], None), x, probe)
  assert float(jnp.mean(want[0] > 0)) not in (0.0, 1.0)  # the ReLU mask matters here
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel_err(a, b) <= 1e-5


def test_evaluation_and_other_dtypes_take_flax_path():
  norm = make_norm(4, "cpu")
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 4))
  assert batchnorm.fusable(norm, x)
  assert not batchnorm.fusable(norm, x.astype(jnp.bfloat16))
  np.testing.assert_array_equal(norm(x, train=False),
                                nnx.relu(nnx.BatchNorm.__call__(norm, x, use_running_average=True)))
  x16 = x.astype(jnp.bfloat16)
  np.testing.assert_array_equal(norm(x16, train=True), make_norm(4, None)(x16, train=True))


# oneDNN's calls.

# (batch, h, w, cin, cout, kernel, stride): odd and non-square sizes, 1x1 inputs and kernels.
CONVS = [(3, 9, 7, 5, 6, 3, 1), (2, 1, 1, 4, 3, 3, 1), (2, 16, 12, 38, 76, 3, 1),
         (2, 9, 7, 5, 6, 3, 2), (2, 32, 32, 3, 8, 3, 2), (2, 6, 5, 8, 3, 1, 1),
         (2, 5, 6, 3, 4, 4, 2)]
TRANSPOSED = [(2, 5, 3, 6, 5, 3, 2), (1, 1, 1, 3, 2, 3, 2), (2, 4, 4, 6, 5, 2, 2),
              (1, 3, 4, 2, 3, 3, 1), (2, 3, 2, 4, 3, 4, 2)]


@ONEDNN
@pytest.mark.parametrize("op,shape", [("conv", s) for s in CONVS]
                         + [("conv_transpose", s) for s in TRANSPOSED])
def test_onednn_equals_lax_in_value_and_gradients(op, shape):
  b, h, w, cin, cout, k, s = shape
  x = jax.random.normal(jax.random.PRNGKey(0), (b, h, w, cin))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout))
  fast = getattr(onednn, op)
  stock = (stock_conv if op == "conv" else stock_conv_transpose)((s, s))
  got = value_and_grads(jax.jit(lambda x, w: fast(x, w, (s, s))), x, kernel)
  if op == "conv_transpose":
    assert got[0].shape == (b, h * s, w * s, cout)
  assert_same(got, value_and_grads(stock, x, kernel))


@ONEDNN
@pytest.mark.parametrize("b,h,w,cin,c,cout", [(1, 8, 12, 3, 7, 2), (2, 16, 16, 76, 38, 38)])
def test_the_composed_up_level_equals_up_sampling_concatenation_and_conv(b, h, w, cin, c, cout):
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  x = jax.random.normal(keys[0], (b, h, w, cin))
  skip = jax.random.normal(keys[1], (b, 2 * h, 2 * w, c))
  k_up, b_up = jax.random.normal(keys[2], (2, 2, cin, c)), jax.random.normal(keys[3], (c,))
  k_conv, b_conv = (jax.random.normal(keys[4], (3, 3, 2 * c, cout)),
                    jax.random.normal(keys[5], (cout,)))

  def stock(x, skip, k_up, k_conv):
    y = stock_conv_transpose((2, 2))(x, k_up) + b_up
    return stock_conv((1, 1))(jnp.concatenate([y, skip], -1), k_conv) + b_conv

  composed = lambda x, skip, k_up, k_conv: up_conv.composed(x, skip, k_up, b_up, k_conv, b_conv)
  args = (x, skip, k_up, k_conv)
  assert_same(value_and_grads(composed, *args), value_and_grads(stock, *args))
  # The CPU layers' up_concat_conv takes this path for such a level.
  layers = cpu.layers("onednn")
  up = layers.conv_transpose(cin, c, (2, 2), strides=(2, 2), rngs=nnx.Rngs(0))
  conv = layers.conv(2 * c, cout, (3, 3), rngs=nnx.Rngs(1))
  up.kernel[...], up.bias[...], conv.kernel[...], conv.bias[...] = k_up, b_up, k_conv, b_conv
  assert up_conv.used(x.shape, k_up.shape, (2, 2), x.dtype)
  np.testing.assert_array_equal(up_conv.up_concat_conv(up, conv, x, skip),
                                composed(x, skip, k_up, k_conv))


@ONEDNN
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
    from unmix_jax.cpu import onednn
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


@ONEDNN
def test_the_implementations_picked_by_time_compute_the_same_bits():
  # Tracing times oneDNN's implementations of each layer and keeps the fastest of those equal
  # to its first choice bit for bit.
  digests = {subprocess.run([sys.executable, "-c", _RESULT_DIGEST, mode], capture_output=True,
                            text=True, check=True).stdout for mode in ("first", "fastest")}
  assert len(digests) == 1 and len(digests.pop()) == 65


@ONEDNN
def test_auto_picks_onednn_on_one_cpu_device_where_it_builds():
  assert backend.resolve("auto") == "onednn"
  assert backend.describe("auto").startswith("onednn (auto), oneDNN 3.")


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                    reason="pyproject.toml installs oneDNN only on Linux x86-64")
def test_builds_against_the_onednn_pyproject_installs():
  # Not the system's: Debian 12's libdnnl-dev is 2.6, with slower kernels (onednn.py).
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
