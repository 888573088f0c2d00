"""The jitted functions of training and evaluation, pure functions of pytrees.

  train_step(state, window, images, idx, key) -> (state, window)    (state donated)
  eval_step(params, model_state, images, idx) -> per-pair metrics
The model's graph definition and the config live in closures, never as traced arguments.
Randomness comes from fold_in(key, step), so a resumed run continues the same stream.
"""

from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from unmix_jax import backend, data, losses, metrics, models


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far
  # Nested dicts of arrays (`nnx.to_pure_dict`), not nnx.State: every jitted call flattens its
  # arguments and rebuilds its outputs on the host, which costs several times more with
  # nnx.Variable objects. `nnx.merge(graphdef, params, model_state)` takes them.
  params: dict  # trainable parameters (nnx.Param)
  model_state: dict  # everything else the model carries, e.g. BatchNorm statistics
  opt_state: optax.OptState
  # An exponential moving average of `params` (config.train.ema_decay > 0), which evaluation,
  # checkpoint choice and pictures use; None without.
  ema_params: dict | None = None


def eval_params(state: TrainState) -> dict:
  """The parameters evaluation uses: the moving average where the run keeps one."""
  return state.params if state.ema_params is None else state.ema_params


def weights_only(state: TrainState) -> TrainState:
  """What separating needs: the evaluation parameters (the moving average where the run keeps
  one) and the normalisation statistics; no optimizer state."""
  return TrainState(step=state.step, params=eval_params(state), model_state=state.model_state,
                    opt_state=None)


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
  of Adam's moment updates, so it writes the clipped gradient out first: a pass over every
  gradient."""

  def update(updates, state, params=None):
    del params
    factor = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def current_lr(opt_state) -> jax.Array:
  """The learning rate the optimizer applies next (its injected hyperparameter)."""
  return optax.tree_utils.tree_get(opt_state, "learning_rate",
                                   filtering=lambda _, value: isinstance(value, jax.Array))


def create_train_state(config, tx) -> tuple[nnx.GraphDef, TrainState]:
  layers = backend.layers(config.train.conv_impl, config.train.compute_dtype)
  model = models.build(config.model, config.seed, layers)
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  params, model_state = nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)
  ema = jax.tree.map(jnp.array, params) if config.train.ema_decay > 0 else None
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params), ema_params=ema)
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
  d = config.data

  def train_step(state: TrainState, images, idx, key):
    """images uint8 [N, 32, 32, 3]; idx int32 [B, 2], or None to draw the pairs here
    (`config.data.stream_pairs`); key: the run's training key."""
    step_key = jax.random.fold_in(key, state.step)
    if idx is None:
      idx = data.draw_pairs(jax.random.fold_in(step_key, 2), config.train.batch_size,
                            images.shape[0])
    aug_key = jax.random.fold_in(step_key, 1) if d.augment or d.translate else None
    m, x1, x2 = data.mix_batch(images, idx, aug_key, flip=d.augment, translate=d.translate)

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
                              opt_state=opt_state,
                              ema_params=_ema(config.train.ema_decay, state, params))
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


def _ema(decay: float, state: TrainState, params: dict) -> dict | None:
  """The moving average after `state.step + 1` updates; its decay ramps up as
  (1 + t) / (10 + t) towards `decay`, so early averages are not held back by the initial
  weights."""
  if state.ema_params is None:
    return None
  t = state.step.astype(jnp.float32)
  rate = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, state.ema_params, params)


def make_train_step(graphdef, config, tx, stacked: bool = False) -> Callable:
  """The jitted `train_step(state, window, images, idx, key) -> (state, window)`.

  `window` holds the running sums of the step's scalar metrics (loss parts, grad_norm, lr, ...)
  since the last log line; start one with `zero_window`. Summing inside the step keeps the host
  from dispatching one tiny add per metric per step. `state` is donated, `window` is not (the
  zeros are reused to start each window).

  `stacked=True`: one call runs K = `config.train.steps_per_call` steps in order (`lax.scan`;
  idx [K, B, 2] or None), with the same numbers as K calls. Each call costs the host a
  dispatch of the state's arrays plus a hand-over between executions, which counts for short
  steps (the AE's).
  """
  step = _step_function(graphdef, config, tx)

  def train_step(state: TrainState, window, images, idx, key):
    state, parts = step(state, images, idx, key)
    return state, jax.tree.map(jnp.add, window, parts)

  if stacked:
    one = train_step

    def train_step(state: TrainState, window, images, idx, key):
      return jax.lax.scan(lambda carry, i: (one(*carry, images, i, key), None),
                          (state, window), idx,
                          length=config.train.steps_per_call if idx is None else None)[0]

  return jax.jit(train_step, donate_argnums=0)


def zero_window(graphdef, config, tx, state, images, idx, key) -> dict[str, jax.Array]:
  """Zeros shaped like the train step's metrics (found by tracing it, no compute)."""
  _, parts = jax.eval_shape(_step_function(graphdef, config, tx), state, images, idx, key)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), parts)


def make_separate(graphdef, config) -> Callable:
  """`separate(params, model_state, m) -> (x1_hat, x2_hat, aux)`, the model in evaluation mode
  (the VAE at its posterior mean). With `config.eval.flip_average`, averaged with its outputs
  for the left-right mirrored mixture, mirrored back and matched to the first pair by the
  better assignment."""

  def separate(params, model_state, m):
    model = nnx.merge(graphdef, params, model_state)
    x1_hat, x2_hat, aux = model(m, train=False)
    if config.eval.flip_average:
      f1, f2, _ = model(m[:, :, ::-1], train=False)
      f1, f2 = metrics.best_assignment(f1[:, :, ::-1], f2[:, :, ::-1], x1_hat, x2_hat)
      x1_hat, x2_hat = (x1_hat + f1) / 2, (x2_hat + f2) / 2
    return x1_hat, x2_hat, aux

  return separate


def make_eval_step(graphdef, config) -> Callable:
  separate = make_separate(graphdef, config)

  def eval_step(params, model_state, images, idx):
    """Per-pair metrics [B] of one batch (`make_separate`)."""
    m, x1, x2 = data.mix_batch(images, idx)
    x1_hat, x2_hat, aux = separate(params, model_state, m)
    out = metrics.pair_metrics(x1_hat, x2_hat, m, x1, x2)
    loss = losses.reconstruction_loss(config.loss, x1_hat, x2_hat, x1, x2)
    if "mu" in aux:
      out["kl"] = losses.gaussian_kl(aux["mu"], aux["logvar"])
      loss = loss + config.model.beta * out["kl"]
    out["loss"] = loss
    return out

  return jax.jit(eval_step)


def make_predict(graphdef, config) -> Callable:
  """Jitted `predict(state, m) -> (x1_hat, x2_hat)` with the state's evaluation parameters."""
  separate = make_separate(graphdef, config)

  @jax.jit
  def predict(params, model_state, m):
    return separate(params, model_state, m)[:2]

  return lambda state, m: predict(eval_params(state), state.model_state, m)


