"""Train-step throughput of one config, optionally side by side with PyTorch.

  unmix benchmark --config=unet
  unmix benchmark --config=ae --compare=torch
  unmix benchmark --config=unet --config.train.conv_impl=xla
  unmix benchmark --config=unet --layers [--compare=torch]

Steps run as training runs them (`config.train.steps_per_call` per jitted call). Prints one
JSON line: compile seconds, images/s (min / median / max over repeats), XLA FLOPs per
step, achieved GFLOP/s, share of wall time outside the jitted step (and the host's batch
work per step, timed alone, over the step time), and with --compare=torch the
PyTorch reference's images/s and the ratio. With --layers: one JSON line per distinct conv of
the model instead, forward + backward alone, stock lax conv vs the CPU formulation (and the same
layer in PyTorch with --compare=torch). Needs no
dataset (random uint8 images).
"""

import json

from absl import flags, logging

from unmix_jax import cli, host_memory

_CONFIG = cli.define_config("unet")
_STEPS = flags.DEFINE_integer("steps", 10, "Train steps per timed repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (min / median / max over them).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
_COMPARE = flags.DEFINE_enum("compare", None, ["torch"],
                             "Also time the PyTorch reference, alternating with JAX.")
_LAYERS = flags.DEFINE_bool("layers", False, "Time each conv layer alone, xla vs cpu forms.")


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # before JAX starts its CPU threads (host_memory.py)
  logging.set_verbosity(logging.ERROR)
  from unmix_jax import benchmark, cli, config_checks, parallel

  config = _CONFIG.value
  with cli.one_line_errors():
    parallel.initialize()
    config_checks.validate(config)
    if _STEPS.value < 1 or _REPEATS.value < 1 or _WARMUP.value < 0:
      raise config_checks.ConfigError(
          f"--steps={_STEPS.value} and --repeats={_REPEATS.value} must be >= 1 and "
          f"--warmup={_WARMUP.value} >= 0.")
    worker = None
    if _COMPARE.value == "torch":
      from unmix_jax.commands import torch_worker
      worker = torch_worker.Worker()
    try:
      if _LAYERS.value:
        torch_layer = worker.layer if worker else None
        from unmix_jax.cpu import layer_timings

        for row in layer_timings.layer_timings(config, _REPEATS.value, torch_layer):
          print(json.dumps(row), flush=True)
        return
      other = worker.step(config) if worker else None
      result = benchmark.measure(config, steps=_STEPS.value, repeats=_REPEATS.value,
                                 warmup=_WARMUP.value, other=other)
    finally:
      if worker:
        worker.close()
  print(json.dumps(result), flush=True)


def run():
  cli.run(main)
