"""Each conv layer of a model alone, forward and backward, as each CPU form computes it: what
chose the forms `conv_impl='cpu'` and 'onednn' use per layer (`unmix benchmark --layers`;
docs/performance.md has the table)."""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from unmix_jax import backend, models
from unmix_jax.cpu import forms, onednn
from unmix_jax.models import layers as layers_lib


def conv_layers(config, batch: int | None = None) -> list[tuple[str, tuple, tuple, tuple]]:
  """(kind, input shape, kernel shape, strides) of every distinct conv the config's model runs,
  at `batch` (default: the config's batch size), in the order it runs them."""
  seen = []

  def recording(cls):
    class Recorded(cls):
      def __call__(self, x):
        strides = self.strides or (1, 1)
        entry = (cls.__name__, tuple(x.shape), tuple(self.kernel.shape),
                 (strides, strides) if isinstance(strides, int) else tuple(strides))
        if entry not in seen:
          seen.append(entry)
        return super().__call__(x)
    return Recorded

  xla = layers_lib.xla()
  model = models.build(config.model, config.seed, dataclasses.replace(
      xla, conv=recording(nnx.Conv), conv_transpose=recording(nnx.ConvTranspose)))
  m = jax.ShapeDtypeStruct((batch or config.train.batch_size, 32, 32, 3), jnp.float32)
  jax.eval_shape(lambda m: model(m, train=False)[:2], m)
  return seen


def layer_timings(config, repeats: int, torch_layer=None) -> list[dict]:
  """Forward + backward (input and kernel gradients) of each conv layer alone, stock lax conv vs
  the matrix-product form `conv_impl='cpu'` picks for it: median milliseconds over `repeats`
  calls. With conv_impl='onednn', oneDNN's form too (`onednn_ms`; `onednn_used`: whether the
  layer runs it). `torch_layer(kind, x_shape, kernel_shape, strides)` (the PyTorch reference's
  `layer_step`) adds the same layer in PyTorch; the forms' calls alternate so all see the same
  machine."""
  with_onednn = backend.resolve(config.train.conv_impl) == "onednn"
  rows = []
  for kind, x_shape, k_shape, strides in conv_layers(config):
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
    kernel = jax.random.normal(jax.random.PRNGKey(1), k_shape) * 0.1
    transposed = kind == "ConvTranspose"
    if transposed:
      plan = "phase-matmul"
      candidates = {"xla": lambda x, w: jax.lax.conv_transpose(
                    x, w, strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
                plan: lambda x, w: forms.conv_transpose2d(x, w, strides)}
    else:
      plan = forms.conv_plan(x_shape, k_shape, strides)
      candidates = {name: (lambda x, w, name=name: forms.conv2d(x, w, strides, name))
                for name in {"xla", plan}}
    if with_onednn:
      onednn_form = onednn.conv_transpose if transposed else onednn.conv
      candidates["onednn"] = lambda x, w, f=onednn_form: f(x, w, strides)
    calls = {}
    for name, f in candidates.items():
      grad = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
      calls[name] = lambda grad=grad: jax.block_until_ready(grad(x, kernel))
    if torch_layer is not None:
      calls["torch"] = torch_layer(kind, x_shape, k_shape, strides)
    for call in calls.values():
      call()  # compile / warm up
    times = {name: [] for name in calls}
    for _ in range(repeats):
      for name, call in calls.items():
        t0 = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - t0)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    row = {"layer": kind, "input": list(x_shape), "kernel": list(k_shape),
           "strides": list(strides), "plan": plan, "xla_ms": round(ms["xla"], 2),
           "cpu_ms": round(ms[plan], 2), "speedup": round(ms["xla"] / ms[plan], 2)}
    used = plan
    if with_onednn:
      row["onednn_ms"] = round(ms["onednn"], 2)
      row["onednn_used"] = onednn.handles(x_shape, k_shape, strides, x.dtype, transposed)
      used = "onednn" if row["onednn_used"] else plan
    if "torch" in ms:
      row.update(torch_ms=round(ms["torch"], 2), jax_over_torch=round(ms["torch"] / ms[used], 2))
    rows.append(row)
  return rows
