"""Throughput of the real jitted train step: compile time, images/s, FLOPs, host overhead.

The step is the one `steps.make_train_step` builds (mixing, loss, gradients, optimizer), fed the
way the training loop feeds it: a slice of a shuffled pair order per step, sharded over the
devices, metrics summed on device. Images are random uint8 arrays, so no dataset is needed; the
step's cost does not depend on pixel values.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from unmix_jax import backend, parallel, steps

# Between JAX and PyTorch rounds: PyTorch's OpenMP workers spin for a while after each parallel
# region and would steal the two cores from the round that follows.
PAUSE_S = 1.0
HOST_CALLS = 200


def synthetic_batches(config, seed: int = 0):
  """uint8 images [N, 32, 32, 3] and a shuffled pair order [P, 2] the size of the config's."""
  rng = np.random.default_rng(seed)
  n = config.data.num_images
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  pairs = rng.integers(0, n, (max(config.data.num_train_pairs, config.train.batch_size), 2))
  return images, pairs.astype(np.int32)


# Dense peak TFLOP/s of one device (as JAX counts devices: a GPU, a TPU chip or core) by
# `device_kind` substring: (bfloat16, float32 as XLA runs it: TF32 tensor cores where the GPU
# has them, bfloat16 passes on TPUs). From the vendors' data sheets (NVIDIA SXM parts unless
# the kind says PCIe); the first match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, 378.0), ("H100", 989.4, 494.7), ("H200", 989.4, 494.7),
    ("A100", 312.0, 156.0), ("L4", 121.0, 60.0), ("A10G", 70.0, 35.0),
    ("V100", 125.0, 15.7), ("T4", 65.0, 8.1),
    ("TPU v6 lite", 918.0, 918.0), ("TPU v5 lite", 197.0, 197.0), ("TPU v5", 459.0, 459.0),
    ("TPU v4", 275.0, 275.0), ("TPU v3", 61.5, 61.5), ("TPU v2", 22.5, 22.5),
)


def peak_flops(device_kind: str, compute_dtype: str) -> float | None:
  """The device's dense peak FLOP/s for `compute_dtype` (PEAK_TFLOPS); None when unknown."""
  for kind, bf16, f32 in PEAK_TFLOPS:
    if kind.lower() in device_kind.lower():
      return (bf16 if compute_dtype == "bfloat16" else f32) * 1e12
  return None


def flops_of(compiled) -> float | None:
  """XLA's FLOP count of one call of a compiled function (None where the backend has none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops else None


class JaxStep:
  """The config's train step, compiled once; `run(n)` times n steps the way training runs them
  (`config.train.steps_per_call` steps per call, the rest one by one) and `run_in_one_call(n)`
  times the same n steps as one call on batches already on the device."""

  def __init__(self, config):
    self.batch = config.train.batch_size
    self.per_call = config.train.steps_per_call
    self.conv_impl = backend.resolve(config.train.conv_impl)
    tx = steps.make_optimizer(config, total_steps=10_000)
    graphdef, state = steps.create_train_state(config, tx)
    self.mesh = parallel.make_mesh()
    self.state = parallel.replicate(state, self.mesh)
    images, self.order = synthetic_batches(config)
    self.images = parallel.replicate(images, self.mesh)
    self.key = jax.random.PRNGKey(config.seed)
    sample = self._idx(0)
    self.window = steps.zero_window(graphdef, config, tx, self.state, self.images, sample,
                                    self.key)
    step = steps.make_train_step(graphdef, config, tx)
    t0 = time.perf_counter()
    self.step = step.lower(self.state, self.window, self.images, sample, self.key).compile()
    self._stacked = steps.make_train_step(graphdef, config, tx, stacked=True)
    self._one_call = {}  # compiled calls of n > 1 steps, by n
    if self.per_call > 1:
      self._compile_stacked(self.per_call)
    # Both programs, as a training run compiles both (the single step runs the steps left
    # before a log line or an epoch's end).
    self.compile_seconds = time.perf_counter() - t0
    # Per step and device, as compiled: a scan's cost analysis counts its body once, and a
    # partitioned program's is one device's share.
    self.flops = flops_of(self.step)
    # The network's own FLOPs per step over all devices, counted on the program before it is
    # partitioned, with stock convs: the matrix-product forms multiply some zeros (padding taps
    # at tiny resolutions, kernel taps a transposed-conv phase does not use).
    stock = config.copy_and_resolve_references()
    stock.train.conv_impl = "xla"
    graphdef_x, state_x = steps.create_train_state(stock, tx)
    self.model_flops = flops_of(steps.make_train_step(graphdef_x, stock, tx).lower(
        state_x, self.window, self.images, sample, self.key))
    self.params = steps.count_params(state.params)
    self._i = 0

  def _compile_stacked(self, n: int):
    if n not in self._one_call:
      self._one_call[n] = self._stacked.lower(self.state, self.window, self.images,
                                              self._idx(0, n), self.key).compile()
    return self._one_call[n]

  def _idx(self, i: int, n: int = 1):
    """Index batches [B, 2] (n = 1) or [n, B, 2] for the call starting at step i."""
    start = (i * self.batch) % (len(self.order) - n * self.batch + 1)
    rows = self.order[start:start + n * self.batch]
    return parallel.shard_batch(rows if n == 1 else rows.reshape(n, self.batch, 2), self.mesh)

  def _calls(self, n: int) -> list[int]:
    return [self.per_call] * (n // self.per_call) + [1] * (n % self.per_call)

  def _loop(self, batches) -> float:
    window = self.window
    t0 = time.perf_counter()
    for idx in batches:
      call = self.step if idx.ndim == 2 else self._one_call[idx.shape[0]]
      self.state, window = call(self.state, window, self.images, idx, self.key)
    jax.block_until_ready((self.state, window))
    return time.perf_counter() - t0

  def run(self, n: int) -> float:
    """Seconds for n steps, each call's batches sliced and sharded on the host as in training."""
    def batches():
      for size in self._calls(n):
        yield self._idx(self._i, size)
        self._i += size
    return self._loop(batches())

  def run_in_one_call(self, n: int) -> float:
    """Seconds for n steps as one call on batches prepared beforehand: no host work, dispatch
    or hand-over between steps. Compiles that call on first use (n > 1)."""
    if n > 1:
      self._compile_stacked(n)
    idx = self._idx(self._i, n)
    self._i += n
    jax.block_until_ready(idx)
    return self._loop([idx])


class MatmulCeiling:
  """`run()`: GFLOP/s of one jitted float32 [n, n] @ [n, n] product, XLA's best case on this
  backend. Timed between the step's rounds: on a shared machine the CPU's speed drifts (it
  halved within minutes on ours), so a share of a ceiling measured at another time misleads."""

  def __init__(self, n: int = 2048):
    key = jax.random.PRNGKey(0)
    self.a, self.b = jax.random.normal(key, (n, n)), jax.random.normal(key, (n, n))
    self.product = jax.jit(jnp.matmul)
    self.flops = 2.0 * n ** 3
    jax.block_until_ready(self.product(self.a, self.b))

  def run(self, calls: int = 3) -> float:
    best = float("inf")
    for _ in range(calls):
      t0 = time.perf_counter()
      jax.block_until_ready(self.product(self.a, self.b))
      best = min(best, time.perf_counter() - t0)
    return self.flops / best / 1e9


def summary(name: str, images_per_step: int, seconds: list[float], steps: int) -> dict:
  rates = sorted(images_per_step * steps / s for s in seconds)
  return {f"{name}images_per_s_min": round(rates[0], 2),
          f"{name}images_per_s_median": round(statistics.median(rates), 2),
          f"{name}images_per_s_max": round(rates[-1], 2)}


def measure(config, *, steps: int, repeats: int, warmup: int, other=None) -> dict:
  """Times `repeats` rounds of `steps` steps after `warmup` steps. With `other` (an object with
  `run(n)` and `name`, e.g. the PyTorch reference), its rounds alternate with the JAX rounds so
  both see the same machine state, and the ratio of medians is reported."""
  jstep = JaxStep(config)
  jstep.run_in_one_call(steps)  # compiles the reference for outside_step_share
  jstep.run(max(warmup, jstep.per_call))  # at least one call of several steps
  if other is not None:
    other.run(warmup)
  ceiling = MatmulCeiling()
  loop, one_call, theirs, ceilings = [], [], [], []
  for r in range(repeats):
    # The first round after a pause runs a few % slower (cold caches, sleeping threads); with a
    # fixed order that showed up as host overhead, so the two JAX rounds swap places each time.
    if r % 2:
      one_call.append(jstep.run_in_one_call(steps))
      loop.append(jstep.run(steps))
    else:
      loop.append(jstep.run(steps))
      one_call.append(jstep.run_in_one_call(steps))
    ceilings.append(ceiling.run())
    if other is not None:
      time.sleep(PAUSE_S)
      theirs.append(other.run(steps))
      time.sleep(PAUSE_S)
  out = {
      "model": config.model.name, "preset": config.preset, "params": jstep.params,
      "batch": jstep.batch, "backend": jax.default_backend(), "devices": jstep.mesh.size,
      "conv_impl": jstep.conv_impl, "compute_dtype": config.train.compute_dtype,
      **({"onednn_version": _onednn().version()} if jstep.conv_impl == "onednn" else {}),
      "steps": steps, "steps_per_call": jstep.per_call, "repeats": repeats,
      "compile_s": round(jstep.compile_seconds, 2),
  }
  out.update(summary("", jstep.batch, loop, steps))
  median_step = statistics.median(loop) / steps
  if jstep.flops:
    # As compiled (what the CPU executes) and the network's own (stock-conv count): the
    # second is the honest measure of useful work per second.
    out["gflop_per_step"] = round(jstep.flops / 1e9, 3)
    out["gflop_per_s"] = round(jstep.flops / median_step / 1e9, 1)
  out["matmul_ceiling_gflop_per_s"] = round(statistics.median(ceilings), 1)
  if jstep.model_flops:
    out["model_gflop_per_step"] = round(jstep.model_flops / 1e9, 3)
    out["model_gflop_per_s"] = round(jstep.model_flops / median_step / 1e9, 1)
    out["model_share_of_ceiling"] = round(
        out["model_gflop_per_s"] / out["matmul_ceiling_gflop_per_s"], 3)
    if jax.default_backend() != "cpu":  # model FLOP utilisation against the devices' peak
      kind = jax.devices()[0].device_kind
      peak = peak_flops(kind, config.train.compute_dtype)
      out["device_kind"] = kind
      out["peak_tflop_per_s"] = peak / 1e12 if peak else None
      out["mfu"] = (round(jstep.model_flops / median_step / (peak * jstep.mesh.size), 4)
                    if peak else None)
  # Everything outside the jitted computation (slicing and sharding batches, dispatching each
  # call, the hand-over between executions) shows as the loop's extra time over the same steps
  # run as one call on resident batches. Paired rounds, so the host's drift cancels; a round
  # pair still swings by a few % on the AE's ~35 ms step.
  out["outside_step_share"] = round(
      max(0.0, 1.0 - statistics.median(o / t for o, t in zip(one_call, loop))), 4)
  # The host's own batch work per step (slicing and sharding), timed alone, over the step: a
  # steadier bound on that part.
  t0 = time.perf_counter()
  jax.block_until_ready([jstep._idx(k, jstep.per_call) for k in range(HOST_CALLS)])
  out["host_batch_share"] = round(
      (time.perf_counter() - t0) / (HOST_CALLS * jstep.per_call) / median_step, 4)
  if other is not None:
    out.update(summary(f"{other.name}_", jstep.batch, theirs, steps))
    out[f"jax_over_{other.name}"] = round(
        out["images_per_s_median"] / out[f"{other.name}_images_per_s_median"], 3)
    out.update(other.describe())
  return out


def _onednn():
  from unmix_jax.cpu import onednn

  return onednn
