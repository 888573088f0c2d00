"""What the entry points share: command-line mistakes and the project's known failures as one
line on stderr (`error: ...`) and an exit code, never a traceback.

Exit codes: 2 a bad setting or input (a flag, a config field, a workdir, data), 3 the disk
(no space left, read-only), 4 another process of a multi-process run stopped, 128 + N stopped
by signal N after saving.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import sys

from absl import app, flags

BAD_INPUT, DISK, LOST_PROCESS = 2, 3, 4


class UsageError(ValueError):
  """A command-line mistake; the message names the flag and the fix."""


def fail(message: str, code: int = BAD_INPUT):
  """Prints `error: message` as the last line on stderr and exits with `code` at once."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  # Not sys.exit: after a failed Orbax restore, TensorStore's and asyncio's leftover callbacks
  # can print a raw exception at interpreter shutdown, below the one line. Every `finally`
  # inside has run by now.
  os._exit(code)


def _config_fields(config, prefix: str = "config") -> dict[str, object]:
  """Every leaf of a ConfigDict by dotted name, e.g. {"config.train.lr": 0.001, ...}."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}.{key}"
    if hasattr(value, "items"):
      out.update(_config_fields(value, name))
    else:
      out[name] = value
  return out


def _load_config(value: str):
  """The config `--config=path[:preset]` names; UsageError for a missing file or preset."""
  path, _, preset = value.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"--config={value}: no config file {path!r}; use configs/unet.py, "
                     "configs/ae.py or configs/vae.py, with :preset if wanted (run from the "
                     "repository root, or give the file's full path).")
  spec = importlib.util.spec_from_file_location("_checked_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(preset or None)
  except ValueError as e:
    raise UsageError(f"--config={value}: {e}") from None


def _check_value(flag: str, field: str, current, text: str | None) -> None:
  """Whether `text` parses as the type of the field's current value (bool, int, float)."""
  kind = type(current)
  if kind is bool:
    if text is not None and text.lower() not in ("true", "false", "1", "0"):
      raise UsageError(f"{flag}: {field} is True or False, not {text!r}.")
    return
  if kind not in (int, float):
    return  # strings, tuples and None: ml_collections' own parser decides
  if text is None:
    raise UsageError(f"{flag}: {field} needs a value, e.g. {flag}={current!r}.")
  try:
    kind(text)
  except (TypeError, ValueError):
    raise UsageError(f"{flag}: {field} takes {'an int' if kind is int else 'a float'} "
                     f"(e.g. {current!r}), not {text!r}.") from None


def check_config_args(argv: list[str], default: str) -> None:
  """Checks the `--config=...` and `--config.<field>=...` arguments in `argv` before absl parses
  them: the file, the preset, each field's name (the closest one suggested) and the type of its
  value. Raises UsageError."""
  args = argv[1:]
  value = default
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(args):
      value = args[i + 1]
  overrides = [(i, a) for i, a in enumerate(args)
               if a.startswith(("--config.", "--noconfig."))]
  if not overrides and value == default:
    return
  fields = _config_fields(_load_config(value))
  for i, arg in overrides:
    flag, eq, text = arg.partition("=")
    field = flag.lstrip("-").removeprefix("no")
    if field not in fields:
      close = difflib.get_close_matches(field, list(fields), n=1, cutoff=0.6)
      hint = f"; did you mean --{close[0]}?" if close else "; see configs/common.py for the fields."
      raise UsageError(f"{arg}: {value.partition(':')[0]} has no field "
                       f"{field.removeprefix('config.')}{hint}")
    current = fields[field]
    if not eq:  # `--config.x v`, or a bare boolean `--config.x` / `--noconfig.x`
      if isinstance(current, bool):
        continue
      text = args[i + 1] if i + 1 < len(args) else None
    _check_value(arg, field, current, text)


def define_config(default: str):
  """`--config=path[:preset]` (and its `--config.<field>=` overrides), as
  `config_flags.DEFINE_config_file` defines it, which already reads the command line: its
  mistakes are checked first and end in one line."""
  from ml_collections import config_flags

  try:
    check_config_args(sys.argv, default)
    return config_flags.DEFINE_config_file("config", default, "Config file[:preset].")
  except UsageError as e:
    fail(str(e))
  except Exception as e:  # noqa: BLE001 - a config file that fails in its own way
    fail(f"--config: {type(e).__name__}: {str(e).strip().splitlines()[0]}")


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).strip().splitlines()[0] + " (--helpshort lists the flags)")
  except Exception as e:  # noqa: BLE001 - a config override that fails in its own way
    fail(f"bad command line: {type(e).__name__}: {str(e).strip().splitlines()[0]}")


def run(main) -> None:
  """`absl.app.run(main)` with every command-line mistake as one `error:` line and exit 2."""
  app.run(main, flags_parser=_parse_flags)


@contextlib.contextmanager
def one_line_errors():
  """Known failures as one line: bad settings and data exit 2, a full or read-only disk 3, a
  stop by signal 128 + N after its checkpoint."""
  # Imported here: the flag parsing above stays fast (--help) without JAX and Orbax.
  from unmix_jax import checkpoint, config_checks, data, parallel, preemption, runs, workdir

  known = (config_checks.ConfigError, data.DataError, checkpoint.CheckpointError, runs.RunError,
           workdir.LockedError, parallel.LaunchError, FloatingPointError)
  try:
    yield
  except workdir.DiskFullError as e:
    fail(str(e), DISK)
  except parallel.ProcessLost as e:
    fail(str(e), LOST_PROCESS)
  except known as e:
    fail(str(e))
  except OSError as e:
    if not workdir.is_disk_error(e):
      raise
    # A write outside training's own files (a report, separate's outputs): no checkpoint to name.
    fail(str(workdir.DiskFullError(e.filename or "a file", workdir.disk_reason(e))), DISK)
  except preemption.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
