"""XLA profiles of training steps and the optimised HLO of the train step.

`config.profile.start_step = K`, `num_steps = N`: a `jax.profiler` trace of the calls that run
steps K+1..K+N (whole calls of `steps_per_call` steps) is written under `workdir/profile/`
(TensorBoard's profile plugin or Perfetto open it); each call is annotated with
`StepTraceAnnotation`, so the trace viewer groups ops by step. `dump_hlo=True` writes
`workdir/profile/train_step.hlo.txt`. For a bucket workdir the trace is taken on the local disk
and copied there when it ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import jax

from unmix_jax import workdir as workdir_lib


class StepProfiler:
  """`enabled=False` (every process but the first of a multi-process run) traces nothing."""

  def __init__(self, profile_cfg, workdir, enabled: bool = True):
    self.start = int(profile_cfg.start_step) if enabled else -1
    self.stop = self.start + int(profile_cfg.num_steps)
    self.dump_hlo_enabled = enabled and bool(profile_cfg.dump_hlo)
    self.directory = workdir_lib.path(workdir) / "profile"
    self.local = None  # where the trace is being written

  def step(self, step: int, steps: int = 1):
    """Context for dispatching the call of `steps` steps that will end at `step` (1-based)."""
    if self.start >= 0 and step - steps <= self.start < step and self.local is None:
      with workdir_lib.writes(self.directory):
        self.local = (tempfile.mkdtemp(prefix="unmix-profile-")
                      if workdir_lib.is_url(self.directory) else str(self.directory))
        os.makedirs(self.local, exist_ok=True)
        jax.profiler.start_trace(self.local)
    if self.local is not None:
      return jax.profiler.StepTraceAnnotation("train", step_num=step)
    return contextlib.nullcontext()

  def finish_step(self, step: int, state) -> None:
    if self.local is not None and step >= self.stop:
      jax.block_until_ready(state)  # the trace must contain the steps' execution, not dispatch
      self.close()
      print(f"profile of steps {self.start + 1}..{self.stop} written to {self.directory}",
            flush=True)

  def close(self) -> None:
    if self.local is None:
      return
    local, self.local = self.local, None
    with workdir_lib.writes(self.directory):  # the trace is written here
      jax.profiler.stop_trace()
      if local != str(self.directory):
        for folder, _, names in os.walk(local):
          for name in names:
            source = os.path.join(folder, name)
            target = self.directory / os.path.relpath(source, local)
            with open(source, "rb") as f:
              workdir_lib.write_bytes(target, f.read())
        shutil.rmtree(local)

  def dump_hlo(self, jitted, *args) -> None:
    """Writes the optimised HLO of `jitted` compiled for `args` (lowering does not run it)."""
    if not self.dump_hlo_enabled:
      return
    target = self.directory / "train_step.hlo.txt"
    text = jitted.lower(*args).compile().as_text()
    with workdir_lib.writes(self.directory):
      self.directory.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_bytes(target, text.encode())
    print(f"optimised HLO of the train step written to {target}", flush=True)
