"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

State flows through pure, jitted functions:
  train_step(state, window, images, idx, key) -> (state, window)    (state donated)
  eval_step(params, model_state, images, idx) -> per-pair metrics
The model's graph definition and the config live in closures, never as traced arguments. Data
order is a function of (seed, epoch) and randomness of fold_in(key, step), so a resumed run
continues exactly where an unbroken one would be.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from unmix_jax import (checkpoint, config_checks, data, logs, losses, metrics, models, parallel,
                       plotting, profiling)
from unmix_jax.models import layers, onednn


class NonFiniteLossError(FloatingPointError):
  pass


class Preempted(Exception):
  """Training stopped on SIGTERM / SIGINT after writing a checkpoint of the current step."""

  def __init__(self, signum: int, step: int, directory: str):
    self.exit_code = 128 + signum
    super().__init__(
        f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written to "
        f"{directory}. Run the same command again to resume.")


class StopRequests:
  """Context manager: the first SIGTERM / SIGINT only sets `signum`, so the loop can finish its
  step and save; a second one exits at once (checkpoints are written to a temporary directory
  and renamed when complete, so the last complete one survives)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      os._exit(128 + signum)
    self.signum = signum
    print(f"\n{signal.Signals(signum).name} received: finishing the current step and saving a "
          "checkpoint (send it again to exit at once).", file=sys.stderr, flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Python only allows it there.
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far
  # Nested dicts of arrays (`nnx.to_pure_dict`), not nnx.State: every jitted call flattens its
  # arguments and rebuilds its outputs on the host, and with ~140 nnx.Variable objects that took
  # 1.3-4 ms per AE step instead of 0.5-1. `nnx.merge(graphdef, params, model_state)` takes them.
  params: dict  # trainable parameters (nnx.Param)
  model_state: dict  # everything else the model carries, e.g. BatchNorm statistics
  opt_state: optax.OptState


def steps_per_epoch(config) -> int:
  return config.data.num_train_pairs // config.train.batch_size


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on a warm-up + cosine schedule.

  The learning rate is an injected hyperparameter so it can be logged from the optimizer state.
  """
  t = config.train
  warmup = min(t.warmup_steps, max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=t.lr * t.end_lr_factor)
  return optax.chain(
      clip_by_global_norm(t.grad_clip),
      optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, weight_decay=t.weight_decay),
  )


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm (same empty state) as one multiply by min(1, max_norm / norm).
  optax's per-element `g / norm * max_norm` is a divide, which XLA:CPU will not copy into each
  of Adam's moment updates, so it wrote the clipped gradient out first: a pass over every
  gradient (U-Net CPU step 1.8% faster without it, in-process A/B)."""

  def update(updates, state, params=None):
    del params
    factor = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def current_lr(opt_state) -> jax.Array:
  return opt_state[1].hyperparams["learning_rate"]


def create_train_state(config, tx) -> tuple[nnx.GraphDef, TrainState]:
  model = models.build(config.model, config.seed, dtype=jnp.dtype(config.train.compute_dtype),
                       conv_impl=config.train.conv_impl)
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  params, model_state = nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params))
  return graphdef, state


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def model_summary(config, state: TrainState) -> str:
  """Parameter count per top-level submodule and in total, one line each."""
  lines = [f"model {config.model.name}: {count_params(state.params):,} trainable parameters"]
  for name, sub in sorted(state.params.items(), key=lambda kv: str(kv[0])):
    lines.append(f"  {name!s:<12} {count_params(sub):>12,}")
  n_other = count_params(state.model_state)
  if n_other:
    lines.append(f"  (+ {n_other:,} non-trainable: normalisation statistics)")
  return "\n".join(lines)


def _step_function(graphdef, config, tx) -> Callable:
  def train_step(state: TrainState, images, idx, key):
    """images uint8 [N, 32, 32, 3]; idx int32 [B, 2]; key: the run's training key."""
    step_key = jax.random.fold_in(key, state.step)
    aug_key = jax.random.fold_in(step_key, 1) if config.data.augment else None
    m, x1, x2 = data.mix_batch(images, idx, aug_key)

    def loss_fn(params):
      # Fresh Variable objects inside this trace: NNX refuses to update BatchNorm statistics
      # held by Variables that were created at the outer (jit) trace level.
      model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, state.model_state))
      out = model(m, train=True, key=jax.random.fold_in(step_key, 0))
      loss, parts = losses.total_loss(config, out, x1, x2, state.step)
      _, _, model_state = nnx.split(model, nnx.Param, ...)
      return loss, (parts, nnx.to_pure_dict(model_state))

    grads, (parts, model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    parts = dict(parts, grad_norm=optax.tree.norm(grads), lr=current_lr(state.opt_state))
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    if config.train.skip_nonfinite:
      # Keep the old weights, optimizer and statistics; count the step but zero its metrics so
      # the logged means cover the applied steps only.
      ok = jnp.isfinite(parts["loss"]) & jnp.isfinite(parts["grad_norm"])
      pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
      new_state = pick(new_state, state.replace(step=state.step + 1))
      parts = {k: jnp.where(ok, v, 0.0) for k, v in parts.items()}
      parts["skipped"] = 1.0 - ok.astype(jnp.float32)
    return new_state, parts

  return train_step


def make_train_step(graphdef, config, tx, stacked: bool = False) -> Callable:
  """The jitted `train_step(state, window, images, idx, key) -> (state, window)`.

  `window` holds the running sums of the step's scalar metrics (loss parts, grad_norm, lr, ...)
  since the last log line; start one with `zero_window`. Summing inside the step keeps the host
  from dispatching one tiny add per metric per step. `state` is donated, `window` is not (the
  zeros are reused to start each window).

  `stacked=True`: idx is [K, B, 2] and one call runs K steps in order (`lax.scan`), with the
  same numbers as K calls (bit for bit on the CPU, tests/test_train.py). Each call costs the
  host ~0.4 ms of dispatch for the state's ~150 arrays, plus a hand-over between executions:
  on 2 CPU cores the AE's ~35 ms steps ran ~5% faster as one call per 20 steps.
  """
  step = _step_function(graphdef, config, tx)

  def train_step(state: TrainState, window, images, idx, key):
    state, parts = step(state, images, idx, key)
    return state, jax.tree.map(jnp.add, window, parts)

  if stacked:
    one = train_step

    def train_step(state: TrainState, window, images, idx, key):
      return jax.lax.scan(lambda carry, i: (one(*carry, images, i, key), None),
                          (state, window), idx)[0]

  return jax.jit(train_step, donate_argnums=0)


def call_size(config, done: int, left: int) -> int:
  """Steps the next train-step call runs, `done` steps into training with `left` left in the
  epoch: `config.train.steps_per_call` when that many fit before the next log line, the
  epoch's end and the profiled steps, else 1. The boundaries depend on the step count only,
  so a resumed run makes the same calls as an unbroken one."""
  k = config.train.steps_per_call
  p = config.profile
  to_log = config.train.log_every - done % config.train.log_every
  profiled = p.start_step >= 0 and done < p.start_step + p.num_steps and done + k > p.start_step
  return k if k <= min(to_log, left) and not profiled else 1


def call_indices(rows: np.ndarray, n: int, batch_size: int, mesh) -> jax.Array:
  """The index pairs of one call of n steps (`call_size`), rows [n * B, 2], sharded as the call
  takes them: [B, 2] for the single step, [n, B, 2] for the stacked one."""
  return parallel.shard_batch(rows if n == 1 else rows.reshape(n, batch_size, 2), mesh)


def zero_window(graphdef, config, tx, state, images, idx, key) -> dict[str, jax.Array]:
  """Zeros shaped like the train step's metrics (found by tracing it, no compute)."""
  _, parts = jax.eval_shape(_step_function(graphdef, config, tx), state, images, idx, key)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), parts)


def make_eval_step(graphdef, config) -> Callable:
  def eval_step(params, model_state, images, idx):
    """Per-pair metrics [B] of one batch; the VAE uses its posterior mean (train=False)."""
    m, x1, x2 = data.mix_batch(images, idx)
    model = nnx.merge(graphdef, params, model_state)
    x1_hat, x2_hat, aux = model(m, train=False)
    out = metrics.pair_metrics(x1_hat, x2_hat, m, x1, x2)
    loss = losses.reconstruction_loss(config.loss, x1_hat, x2_hat, x1, x2)
    if "mu" in aux:
      out["kl"] = losses.gaussian_kl(aux["mu"], aux["logvar"])
      loss = loss + config.model.beta * out["kl"]
    out["loss"] = loss
    return out

  return jax.jit(eval_step)


def make_predict(graphdef) -> Callable:
  def predict(params, model_state, m):
    x1_hat, x2_hat, _ = nnx.merge(graphdef, params, model_state)(m, train=False)
    return x1_hat, x2_hat

  return jax.jit(predict)


def evaluate(eval_step, state: TrainState, images, pairs: np.ndarray, batch_size: int,
             mesh=None) -> dict[str, np.ndarray]:
  """Per-pair metrics over a whole pair set, [P] each.

  The last batch is padded by repeating pairs so every batch has one shape (one compilation);
  the padding is dropped before anything is averaged. With a `mesh` each batch is split over
  its devices (the batch size rounded up to a multiple of their number).
  """
  n = len(pairs)
  batch_size = min(batch_size, n)
  if mesh is not None:
    batch_size = -(-batch_size // mesh.size) * mesh.size
  chunks = []
  for start in range(0, n, batch_size):
    idx = pairs[start:start + batch_size]
    pad = batch_size - len(idx)
    if pad:
      idx = np.concatenate([idx, np.resize(pairs, (pad, 2))])
    if mesh is not None:
      idx = parallel.shard_batch(idx, mesh)
    chunks.append(eval_step(state.params, state.model_state, images, idx))
  per_pair = jax.device_get(chunks)
  return {k: np.concatenate([c[k] for c in per_pair])[:n] for k in per_pair[0]}


def summarize(per_pair: dict[str, np.ndarray]) -> dict[str, float]:
  """Means over pairs; psnr_gain = model PSNR minus baseline PSNR on the same pairs."""
  out = {k: float(np.mean(v)) for k, v in per_pair.items()}
  out["psnr_gain"] = out["psnr"] - out["baseline_psnr"]
  return out


def save_pictures(workdir, config, predict, state, pair_data: data.PairData, records) -> None:
  images = jnp.asarray(pair_data.test_images)
  idx = pair_data.test_pairs[:8]
  m, x1, x2 = data.mix_batch(images, jnp.asarray(idx))
  x1_hat, x2_hat = predict(state.params, state.model_state, m)
  x1_hat, x2_hat = metrics.best_assignment(x1_hat, x2_hat, x1, x2)
  name = f"{config.model.name}, loss={config.loss}, preset={config.preset}"
  plotting.reconstructions(os.path.join(workdir, "reconstructions.png"), m, x1, x2,
                           x1_hat, x2_hat, title=f"{name}: unseen test mixtures")
  plotting.loss_curves(os.path.join(workdir, "loss_curves.png"), records, title=name)


def _progress(total: int, initial: int):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)


def train_and_evaluate(config, workdir: str, *, show_progress: bool = True) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final
  summary (also written to `workdir/summary.json`)."""
  config_checks.validate(config)
  config_checks.check_workdir(workdir, config)
  ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints)
  try:
    return _train_and_evaluate(config, workdir, ckpts, show_progress)
  finally:
    ckpts.close()  # also on errors: Orbax's background threads must stop before exit


def _train_and_evaluate(config, workdir: str, ckpts: checkpoint.Checkpoints,
                        show_progress: bool) -> dict[str, Any]:
  spe = steps_per_epoch(config)
  total_steps = spe * config.train.epochs
  tx = make_optimizer(config, total_steps)
  graphdef, state = create_train_state(config, tx)
  print(model_summary(config, state), flush=True)

  model_meta = json.loads(config.model.to_json())
  restored = ckpts.restore_latest(state, model=model_meta)
  if restored is not None:
    state, meta = restored
    print(f"resuming from step {int(state.step)} (epoch {meta['epoch']:g}) in "
          f"{ckpts.directory}", flush=True)
  start_step = int(state.step)
  main_process = parallel.is_main_process()  # only it writes logs, pictures and summaries
  if main_process:  # only once the workdir is known to belong to this model
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  mesh = parallel.make_mesh()
  conv_impl = layers.resolve(config.train.conv_impl)
  if config.train.conv_impl == "auto":
    if conv_impl == "cpu" and jax.device_count() == 1 and onednn.unavailable():
      print(f"conv_impl='auto' uses 'cpu' here, 1.2-1.9x slower than 'onednn' would be: "
            f"{onednn.unavailable()}", flush=True)
    conv_impl += " (auto)"
  if conv_impl.startswith("onednn"):
    conv_impl += f", oneDNN {onednn.version()}"
  print(f"data parallel over {mesh.size} device{'s' if mesh.size > 1 else ''} "
        f"({jax.default_backend()}, {jax.process_count()} process(es)): global batch "
        f"{config.train.batch_size}, {config.train.batch_size // mesh.size} per device; "
        f"compute dtype {config.train.compute_dtype}, convs as "
        f"{conv_impl}", flush=True)
  state = parallel.replicate(state, mesh)
  pair_data = data.load(config)
  train_images = parallel.replicate(pair_data.train_images, mesh)
  test_images = parallel.replicate(pair_data.test_images, mesh)
  train_step = make_train_step(graphdef, config, tx)
  train_steps = make_train_step(graphdef, config, tx, stacked=True)
  eval_step = make_eval_step(graphdef, config)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  writer = logs.MetricWriter(workdir, resume_step=start_step, enabled=main_process)

  def run_evals(state, step: int, epoch: int) -> dict[str, dict[str, float]]:
    results = {}
    for split, images, pairs in (("val", train_images, pair_data.val_pairs),
                                 ("test", test_images, pair_data.test_pairs)):
      results[split] = summarize(
          evaluate(eval_step, state, images, pairs, config.train.eval_batch_size, mesh))
      writer.write(step, split, results[split], epoch=epoch)
    return results

  def log_train(step: int, window: dict, n_steps: int, since: float, bar) -> float:
    """Logs a finished window; returns when its last step finished (here: when its metrics
    arrived), where the next window's time starts. Timed between finishes, not dispatches:
    the host dispatches ahead of the steps."""
    sums = {k: float(v) for k, v in jax.device_get(window).items()}
    done = time.time()
    seconds = done - since
    applied = n_steps - sums.get("skipped", 0.0)
    means = {k: v / applied if applied else math.nan for k, v in sums.items()}
    if "skipped" in sums:
      means["skipped"] = sums["skipped"]  # a count, not a mean
    if not math.isfinite(means["loss"]):
      last = ckpts.latest_step()
      raise NonFiniteLossError(
          f"training loss is {means['loss']} at step {step} (mean of the last {n_steps} steps); "
          f"last good checkpoint: step {last} in {ckpts.directory}; lower config.train.lr "
          f"(now {config.train.lr}), tighten config.train.grad_clip, or set "
          "config.train.skip_nonfinite=True to skip such updates.")
    means["images_per_s"] = n_steps * config.train.batch_size / max(seconds, 1e-9)
    writer.write(step, "train", means, epoch=step / spe)
    if bar is not None:
      bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{means['images_per_s']:.0f}",
                      refresh=False)
    return done

  t_start = time.time()
  train_seconds = 0.0
  results = None
  # A window of train metrics carried over from a mid-epoch (preempted) checkpoint, so the
  # resumed run logs the same means as an unbroken one.
  carried = restored[1].get("window") if restored is not None else None
  bar = _progress(total_steps, start_step) if show_progress and main_process else None
  profiler = profiling.StepProfiler(config.profile, workdir)
  sample_idx = parallel.shard_batch(pair_data.train_pairs[:config.train.batch_size], mesh)
  # Replicated like the windows the step returns: a window on one device only would make jit
  # compile the step a second time at step 2 (a different input sharding).
  zeros = parallel.replicate(
      zero_window(graphdef, config, tx, state, train_images, sample_idx, key), mesh)
  if profiler.dump_hlo_enabled:
    profiler.dump_hlo(train_step, state, zeros, train_images, sample_idx, key)
  # Compile both programs now (jit reuses the result), so that no log window's images/s
  # includes a compile: with several steps per call the single step first runs at an epoch's end.
  # (This lowering and `zeros` must match the loop's arguments in sharding for jit to reuse it.)
  train_step.lower(state, zeros, train_images, sample_idx, key).compile()
  if config.train.steps_per_call > 1:
    stack = np.tile(pair_data.train_pairs[:config.train.batch_size],
                    (config.train.steps_per_call, 1, 1))
    train_steps.lower(state, zeros, train_images, parallel.shard_batch(stack, mesh),
                      key).compile()
  try:
    with StopRequests() as stop:
      for epoch in range(start_step // spe, config.train.epochs):
        order = data.epoch_pairs(pair_data, config.data, config.seed, epoch)
        first = start_step - epoch * spe if epoch == start_step // spe else 0
        window, n_window = zeros, 0
        if carried and first:
          window = parallel.replicate(
              {k: np.asarray(v, np.float32) for k, v in carried["sums"].items()}, mesh)
          n_window = carried["n"]
        t_mark = time.time()  # when the current window's steps started running
        pending = None  # a finished window, fetched only after the next step is dispatched
        t_epoch = time.time()
        i = first
        while i < spe:
          n = call_size(config, epoch * spe + i, spe - i)
          rows = order[i * config.train.batch_size:(i + n) * config.train.batch_size]
          idx = call_indices(rows, n, config.train.batch_size, mesh)
          step = epoch * spe + i + n
          i += n
          with profiler.step(step):
            state, window = (train_step if n == 1 else train_steps)(
                state, window, train_images, idx, key)
          profiler.finish_step(step, state)
          if pending is not None:
            t_mark = log_train(*pending, t_mark, bar)
            pending = None
          n_window += n
          if step % config.train.log_every == 0 or i == spe:
            pending = (step, window, n_window)
            window, n_window = zeros, 0
          if bar is not None:
            bar.update(n)
          if stop.signum is not None and i < spe:
            if pending is not None:
              log_train(*pending, t_mark, bar)
            sums = {k: float(v) for k, v in jax.device_get(window).items()}
            ckpts.save(step, state, dict(epoch=step / spe, step=step, model=model_meta,
                                         window=dict(n=n_window, sums=sums)), None)
            raise Preempted(stop.signum, step, ckpts.directory)
        if pending is not None:
          log_train(*pending, t_mark, bar)
        jax.block_until_ready(state)
        train_seconds += time.time() - t_epoch
        step = (epoch + 1) * spe
        results = run_evals(state, step, epoch + 1)
        ckpts.save(step, state, dict(epoch=epoch + 1, step=step, model=model_meta),
                   results["val"]["loss"])
        if bar is not None:
          bar.write(f"epoch {epoch + 1}/{config.train.epochs} step {step}: "
                    f"val loss {results['val']['loss']:.4f} psnr {results['val']['psnr']:.2f} | "
                    f"test psnr {results['test']['psnr']:.2f} "
                    f"(baseline {results['test']['baseline_psnr']:.2f})")
        if stop.signum is not None and epoch + 1 < config.train.epochs:
          raise Preempted(stop.signum, step, ckpts.directory)
  finally:
    profiler.close()
    if bar is not None:
      bar.close()
    writer.close()

  final = results["test"] if results is not None else summarize(evaluate(
      eval_step, state, test_images, pair_data.test_pairs, config.train.eval_batch_size, mesh))
  if main_process:
    save_pictures(workdir, config, make_predict(graphdef), state, pair_data,
                  logs.read_metrics(workdir))
  trained = int(state.step) - start_step
  summary = dict(
      model=config.model.name, loss=config.loss, preset=config.preset,
      params=count_params(state.params), step=int(state.step),
      wall_seconds=time.time() - t_start,
      train_images_per_s=(trained * config.train.batch_size / train_seconds
                          if train_seconds else None),
      test=final)
  if main_process:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary
