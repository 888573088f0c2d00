"""The training loop: `train_and_evaluate(config, workdir)`.

Each epoch runs its train steps, `config.train.steps_per_call` per jitted call (a divisor of the
epoch and of `log_every`, so one compiled program serves every call and every epoch logs
alike), writes the metric window every `log_every` steps, then scores the val, test (and
holdout) pairs, saves a checkpoint, ranked by its holdout loss where the run has that split,
else by its val loss, and refreshes the run's pictures. Data order is a function of (seed,
epoch) and randomness of fold_in(key, step), so a run resumed from its latest checkpoint
continues exactly where an unbroken one would be.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unmix_jax import (backend, checkpoint, config_checks, data, evaluation, logs, metrics,
                       parallel, plotting, preemption, profiling, steps, window)
from unmix_jax import workdir as workdir_lib


def train_and_evaluate(config, workdir, *, show_progress: bool = True) -> dict[str, Any]:
  """Trains `config` in `workdir` (a local path or a gs:// URL), resuming from its latest
  checkpoint; returns the final summary (also written to `workdir/summary.json`). Every process
  of a multi-process run calls it alike."""
  config_checks.validate(config)
  workdir = workdir_lib.path(workdir)
  config_checks.check_workdir(workdir, config)
  lock = workdir_lib.Lock(workdir)
  parallel.check_same_run(config, workdir)
  parallel.check_shared(workdir)
  with (preemption.StopRequests(agree=parallel.StopAgreement(),
                                idle_exit=jax.process_count() == 1) as stop,
        parallel.held_by_main(lock),
        checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints) as ckpts):
    stop.at_exit.append(lock.release)
    stop.directory = ckpts.directory
    try:
      return _train(config, workdir, ckpts, stop, show_progress and parallel.is_main_process())
    except Exception as e:
      if parallel.lost_process(e):
        raise parallel.ProcessLost(e, stop.saved_step, ckpts.directory) from None
      if isinstance(e, workdir_lib.StorageError):
        raise e.resumable(ckpts.latest_step(), ckpts.directory) from None
      raise


def _train(config, workdir, ckpts, stop, show_progress: bool) -> dict[str, Any]:
  t_start, main = time.time(), parallel.is_main_process()
  mesh = parallel.make_mesh()
  put = lambda tree: parallel.replicate(tree, mesh)  # noqa: E731
  spe, epochs, k = steps.steps_per_epoch(config), config.train.epochs, config.train.steps_per_call
  tx = steps.make_optimizer(config, spe * epochs)
  graphdef, state = steps.create_train_state(config, tx)
  _say(steps.model_summary(config, state))
  state, start, first_epoch, carried = _resume(ckpts, put(state), config, stop)
  if main:  # only once the workdir is known to belong to this model
    workdir_lib.write_json(workdir / "config.json", json.loads(config.to_json()))
  _say(_layout(config, mesh))
  # Process 0 first: where tfds must download and prepare CIFAR-10, it does so alone.
  pair_data = parallel.main_first("data", lambda: data.load(config))
  images = put(pair_data.train_images)
  splits = {split: (images if split == "val" else put(split_images), pairs)
            for split, (split_images, pairs) in pair_data.eval_splits().items()}
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  train_call, zeros = _compile_train_call(graphdef, config, tx, state, images, pair_data, key,
                                          mesh)
  eval_step, predict = steps.make_eval_step(graphdef, config), steps.make_predict(graphdef, config)
  profiler = profiling.StepProfiler(config.profile, workdir, enabled=main)
  profiler.dump_hlo(train_call, state, zeros, images, _sample(config, pair_data, mesh), key)
  writer = logs.MetricWriter(workdir, resume_step=start, enabled=main)
  sums = window.MetricWindow(zeros, carried, put)
  bar = _progress(spe * epochs, start, show_progress)
  in_flight, results, train_seconds = window.InFlight(), None, 0.0
  try:
    for epoch in range(first_epoch, epochs):
      step, end = max(start, epoch * spe), (epoch + 1) * spe
      sums.restart_clock()
      t_epoch = time.time()
      for idx in _epoch_batches(config, pair_data, epoch, step - epoch * spe, mesh):
        step += k
        with profiler.step(step, k):
          state, window_sums = train_call(state, sums.sums, images, idx, key)
        stop.unsaved = True
        sums.add(window_sums, k)
        _advance(bar, in_flight.wait_for_previous(window_sums, k))  # one call ahead, no more
        profiler.finish_step(step, state)
        _log_train(writer, sums.read(), config, ckpts, bar)  # closed before this call
        if step % config.train.log_every == 0 or step == end:
          sums.close(step)
        if step < end and stop.requested():
          _stop_with_checkpoint(ckpts, writer, sums, step, state, config, stop, bar)
      _log_train(writer, sums.read(), config, ckpts, bar)
      _advance(bar, in_flight.drain())
      jax.block_until_ready(state)
      train_seconds += time.time() - t_epoch
      try:
        results = _evaluate(eval_step, state, splits, config, mesh, stop.check)
      except preemption.StopNow:  # saved unscored: the resumed run evaluates first
        _stop_with_checkpoint(ckpts, writer, sums, step, state, config, stop, bar)
      for split, means in results.items():
        writer.write(step, split, means, epoch=step // spe)
      select = "holdout" if "holdout" in results else "val"
      ckpts.save(step, state, _meta(config, step, select_split=select),
                 select_loss=results[select]["loss"])
      _report_epoch(bar, epoch, step, results, config)
      if main:
        _pictures(workdir, config, predict, state, pair_data)
      ckpts.wait()
      stop.saved(step)
      if epoch + 1 < epochs and stop.requested():
        raise preemption.Preempted(stop.signum, step, ckpts.directory)
  finally:
    profiler.close()
    if bar is not None:
      bar.close()
    writer.close()
  if results is None:  # nothing left to train: score the restored state
    results = _evaluate(eval_step, state, {s: v for s, v in splits.items() if s != "val"},
                        config, mesh)
  summary = _summary(config, state, start, results, time.time() - t_start, train_seconds)
  if main:
    workdir_lib.write_json(workdir / "summary.json", summary)
  return summary


def _say(text: str) -> None:
  """A line of the run's log, printed once (by process 0)."""
  if parallel.is_main_process():
    print(text, flush=True)


def _layout(config, mesh) -> str:
  n = mesh.size
  return (f"data parallel over {n} device{'s' if n > 1 else ''} ({jax.default_backend()}, "
          f"{jax.process_count()} process(es)): global batch {config.train.batch_size}, "
          f"{config.train.batch_size // n} per device; compute dtype "
          f"{config.train.compute_dtype}, convs as {backend.describe(config.train.conv_impl)}")


def _resume(ckpts, state, config, stop):
  """(state, its step, the first epoch to run, the metric window a stopped run saved) from the
  latest readable checkpoint, restored straight into the replicated layout of `state`; the
  first epoch is the last finished one where a stop during its evaluation saved it unscored."""
  ranked = parallel.main_decides("resume", ckpts.ranked, share=True)  # the same for all
  found = ckpts.restore(state, "latest", model=json.loads(config.model.to_json()),
                        set_aside=True, ranked=ranked)
  if found is None:
    return state, 0, 0, None
  step, state, meta = found
  stop.saved(step)
  spe, carried = steps.steps_per_epoch(config), meta.get("window")
  pending = carried is not None and step % spe == 0
  _say(f"resuming from step {step} (epoch {meta['epoch']:g}"
       f"{', its evaluation first' if pending else ''}) in {ckpts.directory}")
  return state, step, step // spe - pending, carried


def _sample(config, pair_data, mesh):
  """One call's index pairs ([K, B, 2], or [B, 2] for one step a call; None where the steps
  draw their own), to compile against."""
  if config.data.stream_pairs:
    return None
  b, k = config.train.batch_size, config.train.steps_per_call
  rows = np.resize(pair_data.train_pairs, (k * b, 2))
  return parallel.shard_batch(rows if k == 1 else rows.reshape(k, b, 2), mesh)


def _compile_train_call(graphdef, config, tx, state, images, pair_data, key, mesh):
  """The jitted call of `steps_per_call` train steps, compiled before the first step (so no
  log window's images/s includes a compile), and a zero metric window, replicated like the
  windows the call returns (a window on one device would make jit compile again at step 2)."""
  sample = _sample(config, pair_data, mesh)
  stacked = config.train.steps_per_call > 1
  call = steps.make_train_step(graphdef, config, tx, stacked=stacked)
  one = sample[0] if stacked and sample is not None else sample
  zeros = parallel.replicate(steps.zero_window(graphdef, config, tx, state, images, one, key),
                             mesh)
  call.lower(state, zeros, images, sample, key).compile()
  return call, zeros


def _epoch_batches(config, pair_data, epoch: int, first: int, mesh):
  """The index pairs of each call of epoch `epoch` from its step `first` on, sharded as the
  call takes them; None for each call where the steps draw their own pairs."""
  b, k = config.train.batch_size, config.train.steps_per_call
  order = data.epoch_pairs(pair_data, config.data, config.seed, epoch)
  for done in range(first, steps.steps_per_epoch(config), k):
    if order is None:
      yield None
    else:
      rows = order[done * b:(done + k) * b]
      yield parallel.shard_batch(rows if k == 1 else rows.reshape(k, b, 2), mesh)


def _progress(total: int, initial: int, enabled: bool):
  if not enabled:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)


def _advance(bar, steps_finished: int) -> None:
  if bar is not None and steps_finished:
    bar.update(steps_finished)


def _log_train(writer, closed, config, ckpts, bar) -> None:
  """Writes a read metric window (`MetricWindow.read()`; None: nothing to write)."""
  if closed is None:
    return
  step, means, n, seconds = closed
  last = ckpts.latest_step()
  window.check_finite(means["loss"], step, n,
                      f"step {last} in {ckpts.directory}" if last is not None else "none",
                      config.train.lr)
  means["images_per_s"] = n * config.train.batch_size / max(seconds, 1e-9)
  writer.write(step, "train", means, epoch=step / steps.steps_per_epoch(config))
  if bar is not None:
    bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{means['images_per_s']:.0f}",
                    refresh=False)


def _evaluate(eval_step, state, splits, config, mesh, between_batches=None):
  """{split: means over its pairs} (`evaluation.summarize`); `between_batches()` is called
  before each batch (a stop request raises there)."""
  return {split: evaluation.summarize(evaluation.score_pairs(
      eval_step, state, images, pairs, config.train.eval_batch_size, mesh, between_batches))
          for split, (images, pairs) in splits.items()}


def _meta(config, step: int, **fields) -> dict:
  return {"epoch": step // steps.steps_per_epoch(config), "step": step,
          "model": json.loads(config.model.to_json()), **fields}


def _stop_with_checkpoint(ckpts, writer, sums, step: int, state, config, stop, bar) -> None:
  """Writes the open window's log line and a checkpoint of `step` holding it, then raises
  Preempted."""
  _log_train(writer, sums.read(), config, ckpts, bar)
  ckpts.save(step, state, _meta(config, step, epoch=step / steps.steps_per_epoch(config),
                                window=sums.carry()), select_loss=None)
  ckpts.wait()
  stop.saved(step)
  raise preemption.Preempted(stop.signum, step, ckpts.directory)


def _report_epoch(bar, epoch: int, step: int, results, config) -> None:
  if bar is not None:
    bar.write(f"epoch {epoch + 1}/{config.train.epochs} step {step}: " + " | ".join(
        f"{split} loss {r['loss']:.4f} psnr {r['psnr']:.2f} (gain {r['psnr_gain']:+.2f})"
        for split, r in results.items()))


def _pictures(workdir, config, predict, state, pair_data) -> None:
  """reconstructions.png (eight unseen test mixtures) and loss_curves.png, from a host copy of
  the (replicated) state, so process 0 needs no other process."""
  state = jax.device_get(state)
  m, x1, x2 = data.mix_batch(jnp.asarray(pair_data.test_images),
                             jnp.asarray(pair_data.test_pairs[:8]))
  out1, out2 = predict(state, m)
  out1, out2 = metrics.best_assignment(out1, out2, x1, x2)
  name = f"{config.model.name}, loss={config.loss}, preset={config.preset}"
  plotting.reconstructions(workdir / "reconstructions.png", m, x1, x2, out1, out2,
                           title=f"{name}: unseen test mixtures, step {int(state.step)}")
  plotting.loss_curves(workdir / "loss_curves.png", logs.read_metrics(workdir), title=name)


def _summary(config, state, start: int, results, wall: float, train_seconds: float) -> dict:
  trained = int(state.step) - start
  return dict(model=config.model.name, loss=config.loss, preset=config.preset,
              params=steps.count_params(state.params), step=int(state.step), wall_seconds=wall,
              train_images_per_s=(trained * config.train.batch_size / train_seconds
                                  if train_seconds else None),
              **{split: results[split] for split in ("test", "holdout") if split in results})
