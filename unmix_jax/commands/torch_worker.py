"""Runs `torch_reference` in a child process for `benchmark --compare=torch`.

In one process with JAX, PyTorch and the system oneDNN that conv_impl='onednn' loads share one
OpenMP runtime (both are named libgomp.so.1, so the loader keeps the first), and after oneDNN's
calls from XLA's threads PyTorch's AE step measured ~30% slower (1200 -> 830 img/s). In its own
process PyTorch runs as users run it; the child never imports unmix_jax, so it also keeps
glibc's default malloc. Rounds still alternate with JAX's, one process busy at a time.

Protocol: pickled messages over the child's stdin / a copy of its stdout (the child's fd 1 is
pointed at stderr so stray prints cannot corrupt it):
  ("build", factory, args) -> handle      torch_reference.<factory>(*args)
  ("call", handle, method, args) -> value  method None: call the object itself
  None                                     exit
Replies are ("ok", value) or ("error", one line).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys

class Worker:
  """A child process holding PyTorch objects; `step(config)` and `layer(...)` build them."""

  def __init__(self):
    if importlib.util.find_spec("torch") is None:
      from unmix_jax.config_checks import ConfigError
      raise ConfigError("--compare=torch needs PyTorch: pip install -e '.[torch]' "
                        "(CPU build torch==2.13.0).")
    self._child = subprocess.Popen([sys.executable, "-m", "unmix_jax.commands.torch_worker"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)

  def _ask(self, *message):
    pickle.dump(message, self._child.stdin)
    self._child.stdin.flush()
    try:
      status, value = pickle.load(self._child.stdout)
    except EOFError:
      raise RuntimeError(f"the PyTorch reference process exited ({self._child.wait()}); "
                         "its error is above.") from None
    if status == "error":
      raise RuntimeError(f"PyTorch reference process: {value}")
    return value

  def step(self, config) -> "_RemoteStep":
    """The config's train step, built in the child: `run(n)` -> seconds, `describe()`."""
    return _RemoteStep(self, self._ask("build", "TorchStep", (config,)))

  def layer(self, kind: str, x_shape, kernel_shape, strides):
    """`torch_reference.layer_step(...)` built in the child; the callable runs it there."""
    handle = self._ask("build", "layer_step", (kind, x_shape, kernel_shape, strides))
    return lambda: self._ask("call", handle, None, ())

  def close(self) -> None:
    if self._child.poll() is None:
      pickle.dump(None, self._child.stdin)
      self._child.stdin.close()
      self._child.wait(timeout=30)


class _RemoteStep:
  name = "torch"

  def __init__(self, worker: Worker, handle: int):
    self._worker, self._handle = worker, handle

  def run(self, n: int) -> float:
    return self._worker._ask("call", self._handle, "run", (n,))  # timed in the child

  def describe(self) -> dict:
    return self._worker._ask("call", self._handle, "describe", ())


def _serve() -> None:
  replies = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)
  from unmix_jax.commands import torch_reference

  requests, objects = sys.stdin.buffer, []
  while True:
    try:
      message = pickle.load(requests)
    except EOFError:  # the parent went away without saying so
      message = None
    if message is None:
      return
    try:
      if message[0] == "build":
        _, factory, args = message
        objects.append(getattr(torch_reference, factory)(*args))
        result = len(objects) - 1
      else:
        _, handle, method, args = message
        target = objects[handle] if method is None else getattr(objects[handle], method)
        result = target(*args)
      reply = ("ok", result)
    except Exception as e:  # reported by the parent
      reply = ("error", f"{type(e).__name__}: {e}")
    pickle.dump(reply, replies)
    replies.flush()


if __name__ == "__main__":
  _serve()
