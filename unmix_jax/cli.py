"""Turns the project's known failures into one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import os
import sys

from unmix_jax import checkpoint, config_checks, data, runs, train

KNOWN_ERRORS = (config_checks.ConfigError, data.DataError, checkpoint.CheckpointError, runs.RunError,
                FloatingPointError)


@contextlib.contextmanager
def one_line_errors():
  try:
    yield
  except KNOWN_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Not sys.exit: after a failed Orbax restore, TensorStore's and asyncio's leftover callbacks
    # can print a raw exception at interpreter shutdown, below the one line (seen once in CI:
    # test_no_readable_checkpoint_is_an_error_not_a_fresh_start). Every `finally` inside has run.
    os._exit(2)
  except train.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
