"""Turns the project's known failures into one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
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
    sys.exit(2)
  except train.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
