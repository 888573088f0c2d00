"""XLA profiles of training steps and the optimised HLO of the train step.

`config.profile.start_step = K`, `num_steps = N`: a `jax.profiler` trace of steps K+1..K+N (the
steps dispatched after step K finished) is written under `workdir/profile/` (TensorBoard's profile
plugin or Perfetto open it); each step is annotated with `StepTraceAnnotation`, so the trace
viewer groups ops by step. `dump_hlo=True` writes `workdir/profile/train_step.hlo.txt`.
"""

from __future__ import annotations

import contextlib
import os

import jax

from unmix_jax.workdir import disk_writes, replaced


class StepProfiler:
  """`enabled=False` (every process but the first of a multi-process run) traces nothing."""

  def __init__(self, profile_cfg, workdir: str, enabled: bool = True):
    self.start = int(profile_cfg.start_step) if enabled else -1
    self.stop = self.start + int(profile_cfg.num_steps)
    self.dump_hlo_enabled = enabled and bool(profile_cfg.dump_hlo)
    self.directory = os.path.join(workdir, "profile")
    self.active = False

  def step(self, step: int):
    """Context for dispatching the step that will end at `step` (1-based)."""
    if self.start >= 0 and step == self.start + 1 and not self.active:
      with disk_writes(self.directory):
        os.makedirs(self.directory, exist_ok=True)
        jax.profiler.start_trace(self.directory)
      self.active = True
    if self.active:
      return jax.profiler.StepTraceAnnotation("train", step_num=step)
    return contextlib.nullcontext()

  def finish_step(self, step: int, state) -> None:
    if self.active and step >= self.stop:
      jax.block_until_ready(state)  # the trace must contain the steps' execution, not dispatch
      self.close()
      print(f"profile of steps {self.start + 1}..{self.stop} written to {self.directory}",
            flush=True)

  def close(self) -> None:
    if self.active:
      self.active = False
      with disk_writes(self.directory):  # the trace is written here
        jax.profiler.stop_trace()

  def dump_hlo(self, jitted, *args) -> None:
    """Writes the optimised HLO of `jitted` compiled for `args` (lowering does not run it)."""
    if not self.dump_hlo_enabled:
      return
    path = os.path.join(self.directory, "train_step.hlo.txt")
    text = jitted.lower(*args).compile().as_text()
    with disk_writes(self.directory):
      os.makedirs(self.directory, exist_ok=True)
    with replaced(path) as temporary, open(temporary, "w") as f:
      f.write(text)
    print(f"optimised HLO of the train step written to {path}", flush=True)
