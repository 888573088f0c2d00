"""The training loop: `train_and_evaluate(config, workdir)`.

Each epoch runs its train steps (`steps.make_train_step`), logs the metric window every
`log_every` steps, then scores the val, test (and holdout) pairs and saves a checkpoint, ranked
by its holdout loss where the run has a holdout split, else by its val loss. Data order is a
function of (seed, epoch) and randomness of fold_in(key, step), so a run resumed from its latest
checkpoint continues exactly where an unbroken one would be.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unmix_jax import (backend, checkpoint, config_checks, data, evaluation, logs, metrics,
                       parallel, plotting, preemption, profiling, steps, window)
from unmix_jax import workdir as workdir_lib


def call_size(config, step: int, left: int) -> int:
  """Steps the next train-step call runs from global step `step`, with `left` steps left in the
  epoch: `config.train.steps_per_call` when that many fit before the next log line, the
  epoch's end and the profiled steps, else 1. The boundaries depend on the global step only,
  so every epoch logs alike and a resumed run makes the same calls as an unbroken one."""
  k = config.train.steps_per_call
  p = config.profile
  to_log = config.train.log_every - step % config.train.log_every
  profiled = p.start_step >= 0 and step < p.start_step + p.num_steps and step + k > p.start_step
  return k if k <= min(to_log, left) and not profiled else 1


def epoch_calls(config, order: np.ndarray | None, epoch: int, first: int, mesh):
  """Yields (n, idx) for each call of epoch `epoch` from its step `first` on: n steps and their
  index pairs, sharded as the call takes them ([B, 2] for one step, [n, B, 2] for several);
  idx is None where the steps draw their own pairs (`order` None, config.data.stream_pairs)."""
  b, per_epoch = config.train.batch_size, steps.steps_per_epoch(config)
  done = first
  while done < per_epoch:
    n = call_size(config, epoch * per_epoch + done, per_epoch - done)
    idx = None
    if order is not None:
      rows = order[done * b:(done + n) * b]
      idx = parallel.shard_batch(rows if n == 1 else rows.reshape(n, b, 2), mesh)
    yield n, idx
    done += n


class Programs:
  """The jitted train step for one and for `steps_per_call` steps per call, compiled before the
  first step (so no log window's images/s includes a compile), and a zero metric window."""

  def __init__(self, graphdef, config, tx, state, images, sample_rows, key, mesh):
    """`sample_rows`: one step's index pairs [B, 2] (host numpy), or None where the steps draw
    their own."""
    self.key = key
    self.one = steps.make_train_step(graphdef, config, tx)
    self.many = steps.make_train_step(graphdef, config, tx, stacked=True)
    sample = None if sample_rows is None else parallel.shard_batch(sample_rows, mesh)
    self.sample = sample
    # Replicated like the windows the step returns: a window on one device only would make jit
    # compile the step a second time at step 2 (a different input sharding).
    self.zeros = parallel.replicate(
        steps.zero_window(graphdef, config, tx, state, images, sample, key), mesh)
    self.one.lower(state, self.zeros, images, sample, key).compile()
    k = config.train.steps_per_call
    if k > 1:
      stack = (None if sample_rows is None else
               parallel.shard_batch(np.tile(sample_rows, (k, 1, 1)), mesh))
      self.many.lower(state, self.zeros, images, stack, key).compile()

  def __call__(self, state, sums, images, n: int, idx):
    """Runs the n steps of one call (`epoch_calls`)."""
    return (self.one if n == 1 else self.many)(state, sums, images, idx, self.key)


def _progress(total: int, initial: int, enabled: bool):
  if not enabled:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)


def train_and_evaluate(config, workdir: str, *, show_progress: bool = True) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final
  summary (also written to `workdir/summary.json`). Every process of a multi-process run calls
  it alike."""
  config_checks.validate(config)
  config_checks.check_workdir(workdir, config)
  lock = workdir_lib.Lock(workdir)
  with (preemption.StopRequests(agree=parallel.max_over_processes) as stop,
        parallel.held_by_main(lock, (workdir_lib.LockedError,))):
    stop.at_exit.append(lock.release)
    ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints)
    stop.directory = ckpts.directory
    try:
      return _train_and_evaluate(config, workdir, ckpts, stop, show_progress)
    except workdir_lib.DiskFullError as e:
      raise e.resumable(ckpts.latest_step(), ckpts.directory)
    except Exception as e:
      if parallel.lost_process(e):
        raise parallel.ProcessLost(e, stop.saved_step, ckpts.directory) from None
      raise
    finally:
      ckpts.close()  # also on errors: Orbax's background threads must stop before exit


def _train_and_evaluate(config, workdir, ckpts, stop, show_progress) -> dict[str, Any]:
  run = Run(config, workdir, ckpts)
  stop.saved(run.restored_step)
  state, spe, epochs = run.state, run.steps_per_epoch, config.train.epochs
  metric_window = window.MetricWindow(run.programs.zeros, run.carried, run.replicate)
  bar = _progress(spe * epochs, run.start_step, show_progress and run.main_process)
  in_flight, results = window.InFlight(), None
  try:
    for epoch in range(run.first_epoch, epochs):
      step, end = max(run.start_step, epoch * spe), (epoch + 1) * spe
      metric_window.restart_clock()
      t_epoch = time.time()
      order = data.epoch_pairs(run.pair_data, config.data, config.seed, epoch)
      for n, idx in epoch_calls(config, order, epoch, step - epoch * spe, run.mesh):
        step += n
        with run.profiler.step(step):
          state, sums = run.programs(state, metric_window.sums, run.train_images, n, idx)
        stop.unsaved = True
        metric_window.add(sums, n)
        _advance(bar, in_flight.wait_for_previous(sums, n))  # the host stays one call ahead
        run.profiler.finish_step(step, state)
        run.log_train(metric_window.read(), bar)  # the window closed before this call
        if step % config.train.log_every == 0 or step == end:
          metric_window.close(step)
        if step < end and stop.requested():
          run.checkpoint_and_stop(stop.signum, step, state, metric_window, bar)
      run.log_train(metric_window.read(), bar)
      _advance(bar, in_flight.drain())
      jax.block_until_ready(state)
      run.train_seconds += time.time() - t_epoch
      try:
        results = run.evaluate(state, step, between_batches=stop.check)
      except preemption.StopNow:  # saved without scores: the resumed run evaluates first
        run.checkpoint_and_stop(stop.signum, step, state, metric_window, bar)
      run.save(step, state, select_loss=results[run.select_split]["loss"])
      stop.saved(step)
      if bar is not None:
        bar.write(f"epoch {epoch + 1}/{epochs} step {step}: " + " | ".join(
            f"{split} loss {r['loss']:.4f} psnr {r['psnr']:.2f} (gain {r['psnr_gain']:+.2f})"
            for split, r in results.items()))
      if epoch + 1 < epochs and stop.requested():
        raise preemption.Preempted(stop.signum, step, ckpts.directory)
  finally:
    run.profiler.close()
    if bar is not None:
      bar.close()
    run.writer.close()
  return run.finish(state, results)


def _advance(bar, steps_finished: int) -> None:
  if bar is not None and steps_finished:
    bar.update(steps_finished)


class Run:
  """What one training process sets up around the loop and writes from it: the train state
  (resumed from the latest checkpoint), data on the devices, compiled steps, logs and
  checkpoints, and the final summary."""

  def __init__(self, config, workdir: str, ckpts: checkpoint.Checkpoints):
    self.config, self.workdir, self.ckpts = config, workdir, ckpts
    self.t_start = time.time()
    self.train_seconds = 0.0
    self.main_process = parallel.is_main_process()  # only it writes logs, pictures, summaries
    self.mesh = parallel.make_mesh()
    self.steps_per_epoch = spe = steps.steps_per_epoch(config)
    self.tx = steps.make_optimizer(config, spe * config.train.epochs)
    self.graphdef, state = steps.create_train_state(config, self.tx)
    self.say(steps.model_summary(config, state))
    self.model_meta = json.loads(config.model.to_json())
    # Restored straight into the replicated layout: every process reads its own copy.
    restored = ckpts.restore_latest(self.replicate(state), model=self.model_meta)
    self.carried = self.restored_step = None  # the metric window a stopped run saved
    pending = False  # a stop during an epoch's evaluation saved that epoch's last step unscored
    if restored is not None:
      state, meta = restored
      self.restored_step = int(state.step)
      self.carried = meta.get("window")
      pending = self.carried is not None and self.restored_step % spe == 0
      self.say(f"resuming from step {self.restored_step} (epoch {meta['epoch']:g}"
               f"{', its evaluation first' if pending else ''}) in {ckpts.directory}")
    self.start_step = int(state.step)
    self.first_epoch = self.start_step // spe - pending
    if self.main_process:  # only once the workdir is known to belong to this model
      logs.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
    self.say(f"data parallel over {self.mesh.size} device{'s' if self.mesh.size > 1 else ''} "
             f"({jax.default_backend()}, {jax.process_count()} process(es)): global batch "
             f"{config.train.batch_size}, {config.train.batch_size // self.mesh.size} per "
             f"device; compute dtype {config.train.compute_dtype}, convs as "
             f"{backend.describe(config.train.conv_impl)}")
    self.state = self.replicate(state)
    # Process 0 first: where tfds must download and prepare CIFAR-10, it does so alone.
    self.pair_data = pairs = parallel.main_first(lambda: data.load(config), (data.DataError,))
    self.train_images = self.replicate(pairs.train_images)
    # Scored after every epoch: split -> (images, pairs indexing them).
    self.splits = {split: (self.train_images if split == "val" else self.replicate(images),
                           split_pairs)
                   for split, (images, split_pairs) in pairs.eval_splits().items()}
    self.select_split = "holdout" if "holdout" in self.splits else "val"
    self.eval_step = steps.make_eval_step(self.graphdef, config)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    sample_rows = None if config.data.stream_pairs else pairs.train_pairs[:config.train.batch_size]
    self.programs = p = Programs(self.graphdef, config, self.tx, self.state, self.train_images,
                                 sample_rows, key, self.mesh)
    # Process 0 traces its own devices; the others run the same steps untraced.
    self.profiler = profiling.StepProfiler(config.profile, workdir, enabled=self.main_process)
    self.profiler.dump_hlo(p.one, self.state, p.zeros, self.train_images, p.sample, key)
    self.writer = logs.MetricWriter(workdir, resume_step=self.start_step,
                                    enabled=self.main_process)

  def say(self, text: str) -> None:
    """A line of the run's log, printed once (by process 0)."""
    if self.main_process:
      print(text, flush=True)

  def replicate(self, tree):
    return parallel.replicate(tree, self.mesh)

  def log_train(self, closed, bar) -> None:
    """Writes a read metric window (`MetricWindow.read()`; None: nothing to write)."""
    if closed is None:
      return
    step, means, n, seconds = closed
    last = self.ckpts.latest_step()
    window.check_finite(means["loss"], step, n,
                        f"step {last} in {self.ckpts.directory}" if last is not None else "none",
                        self.config.train.lr)
    means["images_per_s"] = n * self.config.train.batch_size / max(seconds, 1e-9)
    self.writer.write(step, "train", means, epoch=step / self.steps_per_epoch)
    if bar is not None:
      bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{means['images_per_s']:.0f}",
                      refresh=False)

  def evaluate(self, state, step: int, between_batches=None) -> dict[str, dict[str, float]]:
    """Scores the val (seen images) and test (unseen images) pairs and logs the means;
    `between_batches()` is called before each batch (a stop request raises there)."""
    results = {split: self.score(state, split, between_batches) for split in self.splits}
    for split, means in results.items():
      self.writer.write(step, split, means, epoch=step // self.steps_per_epoch)
    return results

  def score(self, state, split: str, between_batches=None) -> dict[str, float]:
    """Means over the split's pairs (`evaluation.summarize`)."""
    images, pairs = self.splits[split]
    return evaluation.summarize(evaluation.score_pairs(
        self.eval_step, state, images, pairs, self.config.train.eval_batch_size, self.mesh,
        between_batches))

  def checkpoint_and_stop(self, signum: int, step: int, state, metric_window, bar) -> None:
    """Saves a checkpoint of `step` with the open metric window and raises Preempted."""
    self.log_train(metric_window.read(), bar)
    self.save(step, state, window=metric_window.carry())
    raise preemption.Preempted(signum, step, self.ckpts.directory)

  def save(self, step: int, state, *, select_loss: float | None = None,
           window: dict | None = None) -> None:
    """A checkpoint of `step`: at an epoch's end with the loss checkpoints are chosen on, or
    mid-epoch with the open metric window."""
    meta = dict(epoch=step // self.steps_per_epoch, step=step, model=self.model_meta)
    if select_loss is not None:
      meta["select_split"] = self.select_split
    if window is not None:
      meta.update(epoch=step / self.steps_per_epoch, window=window)
    self.ckpts.save(step, state, meta, select_loss)

  def finish(self, state, results) -> dict[str, Any]:
    """The summary of the run (written to summary.json) and its pictures."""
    config = self.config
    if results is None:  # nothing left to train: score the restored state
      results = {split: self.score(state, split) for split in self.splits if split != "val"}
    if self.main_process:
      self.save_pictures(state)
    trained = int(state.step) - self.start_step
    summary = dict(
        model=config.model.name, loss=config.loss, preset=config.preset,
        params=steps.count_params(state.params), step=int(state.step),
        wall_seconds=time.time() - self.t_start,
        train_images_per_s=(trained * config.train.batch_size / self.train_seconds
                            if self.train_seconds else None),
        **{split: results[split] for split in ("test", "holdout") if split in results})
    if self.main_process:
      logs.write_json(os.path.join(self.workdir, "summary.json"), summary)
    return summary

  def save_pictures(self, state) -> None:
    """reconstructions.png (eight unseen test mixtures) and loss_curves.png, computed from a
    host copy of the (replicated) state, so process 0 needs no other process."""
    config = self.config
    state = jax.device_get(state)
    m, x1, x2 = data.mix_batch(jnp.asarray(self.pair_data.test_images),
                               jnp.asarray(self.pair_data.test_pairs[:8]))
    x1_hat, x2_hat = steps.make_predict(self.graphdef, config)(state, m)
    x1_hat, x2_hat = metrics.best_assignment(x1_hat, x2_hat, x1, x2)
    name = f"{config.model.name}, loss={config.loss}, preset={config.preset}"
    path = os.path.join(self.workdir, "reconstructions.png")
    with workdir_lib.disk_writes(path):
      plotting.reconstructions(path, m, x1, x2, x1_hat, x2_hat,
                               title=f"{name}: unseen test mixtures")
    path = os.path.join(self.workdir, "loss_curves.png")
    with workdir_lib.disk_writes(path):
      plotting.loss_curves(path, logs.read_metrics(self.workdir), title=name)
