import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import random_images, single_step
from unmix_jax import checkpoint, data, evaluation, steps, train
from unmix_jax.configs import ae, unet, vae


def smoke_config(**model):
  c = unet.get_config("smoke")
  c.model.update(model)
  return c


def test_the_window_sums_the_step_metrics_on_device():
  config = smoke_config()
  tx = steps.make_optimizer(config, 10)
  graphdef, state = steps.create_train_state(config, tx)
  idx = jnp.array([[0, 1], [2, 3]], jnp.int32)
  key = jax.random.PRNGKey(0)
  window = steps.zero_window(graphdef, config, tx, state, random_images(), idx, key)
  assert set(window) >= {"loss", "grad_norm", "lr"}
  step, one = steps.make_train_step(graphdef, config, tx), single_step(graphdef, config, tx)
  state_b = jax.tree.map(jnp.copy, state)
  per_step = []
  for _ in range(3):
    state, window = step(state, window, random_images(), idx, key)
    state_b, parts = one(state_b, random_images(), idx, key)
    per_step.append(parts)
  for k in window:
    np.testing.assert_allclose(window[k], sum(p[k] for p in per_step), rtol=1e-6)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
  config = smoke_config(features=(16, 32))
  config.train.lr = 3e-3
  config.train.warmup_steps = 0
  tx = steps.make_optimizer(config, 1000)
  graphdef, state = steps.create_train_state(config, tx)
  step = single_step(graphdef, config, tx)
  images = random_images()
  idx = jnp.array([[i, (i + 1) % 16] for i in range(4)], jnp.int32)
  key = jax.random.PRNGKey(0)
  first = None
  for _ in range(60):
    state, parts = step(state, images, idx, key)
    first = float(parts["loss"]) if first is None else first
  assert int(state.step) == 60
  assert float(parts["loss"]) < 0.6 * first, (first, float(parts["loss"]))


def test_training_is_deterministic_for_a_seed():
  def run():
    config = smoke_config()
    tx = steps.make_optimizer(config, 10)
    graphdef, state = steps.create_train_state(config, tx)
    step = single_step(graphdef, config, tx)
    idx = jnp.array([[0, 1], [2, 3]], jnp.int32)
    for _ in range(3):
      state, parts = step(state, random_images(), idx, jax.random.PRNGKey(0))
    return float(parts["loss"]), jax.tree.leaves(state.params)

  (loss_a, params_a), (loss_b, params_b) = run(), run()
  assert loss_a == loss_b
  assert all(np.array_equal(a, b) for a, b in zip(params_a, params_b))


@pytest.mark.parametrize("name", ["unet", "ae", "vae"])
def test_one_call_of_k_steps_equals_k_calls(name):
  config = {"unet": unet, "ae": ae, "vae": vae}[name].get_config("smoke")
  tx = steps.make_optimizer(config, 10)
  graphdef, state = steps.create_train_state(config, tx)
  idx = jnp.array([[[3 * k, 3 * k + 1], [3 * k + 2, 15 - k]] for k in range(3)], jnp.int32)
  key = jax.random.PRNGKey(0)
  window = steps.zero_window(graphdef, config, tx, state, random_images(), idx[0], key)
  single = steps.make_train_step(graphdef, config, tx)
  state_a, window_a = jax.tree.map(jnp.copy, state), window
  for k in range(3):
    state_a, window_a = single(state_a, window_a, random_images(), idx[k], key)
  stacked = steps.make_train_step(graphdef, config, tx, stacked=True)
  state_b, window_b = stacked(state, window, random_images(), idx, key)
  assert int(state_b.step) == 3
  for a, b in zip(jax.tree.leaves((state_a, window_a)), jax.tree.leaves((state_b, window_b))):
    np.testing.assert_array_equal(a, b)  # bit for bit: steps_per_call never changes results


def test_evaluate_pads_the_last_batch_without_changing_results():
  config = smoke_config()
  tx = steps.make_optimizer(config, 10)
  graphdef, state = steps.create_train_state(config, tx)
  eval_step = steps.make_eval_step(graphdef, config)
  pairs = np.array([[i, (i + 3) % 16] for i in range(11)], np.int32)
  whole = evaluation.score_pairs(eval_step, state, random_images(), pairs, batch_size=11)
  padded = evaluation.score_pairs(eval_step, state, random_images(), pairs, batch_size=4)
  assert whole["mse"].shape == (11,)
  for k in whole:
    np.testing.assert_allclose(whole[k], padded[k], rtol=1e-5)


def test_checkpoint_round_trip_and_best_kept(tmp_path):
  config = smoke_config()
  tx = steps.make_optimizer(config, 10)
  graphdef, state = steps.create_train_state(config, tx)
  step = single_step(graphdef, config, tx)
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  idx = jnp.array([[0, 1], [2, 3]], jnp.int32)
  val_losses = [0.5, 0.1, 0.4, 0.3, 0.35]
  for i, val in enumerate(val_losses, start=1):
    state, _ = step(state, random_images(), idx, jax.random.PRNGKey(0))
    ckpts.save(i, state, {"epoch": i}, val)
  ckpts.save(6, state, {"epoch": 5.5}, None)  # mid-epoch (a stop): no loss to rank it
  ckpts.wait()
  assert ckpts.steps() == [2, 5, 6]  # the last two plus the best by val loss
  assert ckpts.best_step() == 2 and ckpts.latest_step() == 6
  _, fresh = steps.create_train_state(config, tx)
  step_read, restored, meta = ckpts.restore(fresh, "latest")
  assert meta == {"epoch": 5.5, "select_loss": None} and step_read == 6
  assert int(restored.step) == 5
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  assert ckpts.restore(fresh, "best")[0] == 2
  ckpts.close()


def test_batchnorm_statistics_update_in_training_and_are_used_in_eval():
  config = ae.get_config("smoke")
  tx = steps.make_optimizer(config, 10)
  graphdef, state = steps.create_train_state(config, tx)
  before = [np.asarray(x) for x in jax.tree.leaves(state.model_state)]
  step = single_step(graphdef, config, tx)
  idx = jnp.array([[0, 1], [2, 3]], jnp.int32)
  state, _ = step(state, random_images(), idx, jax.random.PRNGKey(0))
  after = jax.tree.leaves(state.model_state)
  assert len(after) == len(before) > 0
  assert all(not np.allclose(a, b) for a, b in zip(after, before))


def test_a_run_saved_before_a_config_field_existed_still_opens(tmp_path):
  import json

  from unmix_jax import runs
  saved = json.loads(vae.get_config("cpu").to_json())
  del saved["train"]["compute_dtype"]
  saved["model"]["latent_dim"] = 7
  with open(tmp_path / "config.json", "w") as f:
    json.dump(saved, f)
  config = runs.load_config(str(tmp_path))
  assert config.train.compute_dtype == "float32" and config.model.latent_dim == 7


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_clip_by_global_norm_equals_optax(scale):
  grads = {"a": jax.random.normal(jax.random.PRNGKey(0), (3, 4)) * scale,
           "b": jax.random.normal(jax.random.PRNGKey(1), (5,)) * scale}
  ours, ref = steps.clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
  assert jax.tree.structure(ours.init(grads)) == jax.tree.structure(ref.init(grads))
  got, want = ours.update(grads, ours.init(grads))[0], ref.update(grads, ref.init(grads))[0]
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
  assert float(optax.tree.norm(got)) == pytest.approx(min(1.0, float(optax.tree.norm(grads))),
                                                        rel=1e-6)


def test_an_epoch_is_called_in_steps_per_call_from_any_step(monkeypatch):
  config = smoke_config()
  config.train.batch_size, config.train.steps_per_call, config.train.log_every = 2, 2, 4
  config.data.num_train_pairs = 20  # 10 steps an epoch
  order = np.arange(2 * 2 * 10, dtype=np.int32).reshape(-1, 2)
  monkeypatch.setattr(data, "epoch_pairs", lambda *args: order)
  calls = list(train._epoch_batches(config, None, 0, 4, mesh=_mesh()))  # resumed at step 4
  assert [np.asarray(idx).shape for idx in calls] == [(2, 2, 2)] * 3
  rows = np.concatenate([np.asarray(idx).reshape(-1, 2) for idx in calls])
  np.testing.assert_array_equal(rows, order[8:])
  monkeypatch.setattr(data, "epoch_pairs", lambda *args: None)  # the steps draw their own
  assert list(train._epoch_batches(config, None, 0, 0, mesh=_mesh())) == [None] * 5


def _mesh():
  from unmix_jax import parallel
  return parallel.make_mesh()


def test_the_metric_window_is_read_one_call_late_and_timed_between_arrivals():
  from unmix_jax import window as window_lib

  zeros = {"loss": jnp.zeros(()), "skipped": jnp.zeros(())}
  w = window_lib.MetricWindow(zeros)
  w.add({"loss": jnp.asarray(3.0), "skipped": jnp.asarray(1.0)}, 2)
  assert w.read() is None  # nothing closed yet
  w.close(2)
  assert w.steps == 0 and float(w.sums["loss"]) == 0.0
  step, means, n, seconds = w.read()
  assert (step, n) == (2, 2) and seconds >= 0
  assert means == {"loss": 3.0, "skipped": 1.0}  # over the one applied step; skipped a count
  assert w.read() is None
  w.add({"loss": jnp.asarray(1.5), "skipped": jnp.asarray(0.0)}, 3)
  carried = w.carry()
  assert carried == {"n": 3, "sums": {"loss": 1.5, "skipped": 0.0}}
  again = window_lib.MetricWindow(zeros, carried)
  assert again.steps == 3 and float(again.sums["loss"]) == 1.5


def test_a_non_finite_window_names_the_last_good_checkpoint_and_the_fixes():
  from unmix_jax import window as window_lib

  window_lib.check_finite(0.1, 4, 2, "step 2 in /x", 1e-3)
  with pytest.raises(window_lib.NonFiniteLossError) as e:
    window_lib.check_finite(float("nan"), 4, 2, "step 2 in /x", 1e-3)
  for needle in ("training loss is nan at step 4", "step 2 in /x", "config.train.lr",
                 "config.train.skip_nonfinite"):
    assert needle in str(e.value)


def test_the_first_signal_is_recorded_and_handlers_are_restored():
  import os
  import signal

  from unmix_jax import preemption

  before = signal.getsignal(signal.SIGTERM)
  with preemption.StopRequests() as stop:
    assert stop.signum is None and not stop.requested()
    stop.unsaved = True  # else the watcher would exit at once: nothing to save
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signum == signal.SIGTERM and stop.requested()
  assert signal.getsignal(signal.SIGTERM) is before
  error = preemption.Preempted(signal.SIGTERM, 6, "/w/checkpoints")
  assert error.exit_code == 128 + signal.SIGTERM and "run the same command" in str(error).lower()


def test_the_moving_average_follows_the_weights_and_is_what_evaluation_reads():
  config = smoke_config()
  config.train.ema_decay = 0.5
  tx = steps.make_optimizer(config, 10)
  graphdef, state = steps.create_train_state(config, tx)
  assert steps.eval_params(state) is state.ema_params
  step = single_step(graphdef, config, tx)
  idx = jnp.array([[0, 1], [2, 3]], jnp.int32)
  history = [jax.device_get(state.params)]  # the step donates the state it is given
  for _ in range(3):
    state, _ = step(state, random_images(), idx, jax.random.PRNGKey(0))
    history.append(jax.device_get(state.params))
  # rate_t = min(0.5, (1 + t) / (10 + t)) = 0.1, 2/11, 0.25 for t = 0, 1, 2.
  want = history[0]
  for t, params in enumerate(history[1:]):
    rate = min(0.5, (1 + t) / (10 + t))
    want = jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, want, params)
  for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.ema_params),
                                                      jax.tree.leaves(state.params)))
  config.train.ema_decay = 0.0
  _, plain = steps.create_train_state(config, tx)
  assert plain.ema_params is None and steps.eval_params(plain) is plain.params
