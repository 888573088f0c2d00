"""The `unmix` command (`unmix <command> --help`) and what its commands share: a mistake on the
command line and every known failure is one line on stderr, `error: ...`, and an exit code,
never a traceback.

Exit codes: 2 a bad setting or input (a flag, a config field, a workdir, data, a picture), 3
storage (no space left, read-only, a bucket refused or unreachable), 4 another process of a
multi-process run stopped, 128 + N stopped by signal N after saving.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys

from absl import app, flags

from unmix_jax import configs

BAD_INPUT, STORAGE, LOST_PROCESS = 2, 3, 4
COMMANDS = {
    "train": "train one model; the same command on the same workdir resumes",
    "evaluate": "score a run's best checkpoint, or the shipped model, with 95% intervals",
    "separate": "separate two pictures of your own (or a mixture) with the shipped model",
    "export": "a run's best checkpoint as weights only, the form the package ships",
    "launch": "the same run as several processes on this machine",
    "compare": "the study: U-Net, AE and VAE, each with PIT and fixed-order loss",
    "ablate": "which levers of a recipe help: one run per lever switched",
    "sample": "VAE only: decode z ~ N(0, I) through both decoders",
    "benchmark": "train-step throughput of one config, as one JSON line",
}
_HELP = ("-h", "--help", "--helpshort", "--helpfull")


def fail(message: str, code: int = BAD_INPUT):
  """Prints `error: message` as the last line on stderr and exits with `code`."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  if code == LOST_PROCESS:
    # Not sys.exit: with a process of the run gone, JAX's exit-time jax.distributed.shutdown()
    # waits at a barrier for it and aborts this one with a C++ stack dump (SIGABRT). Every
    # `finally` inside has run by now.
    os._exit(code)
  sys.exit(code)


def main(argv: list[str] | None = None) -> None:
  """`unmix <command> [flags]`, the console command."""
  argv = sys.argv if argv is None else argv
  name = argv[1] if len(argv) > 1 else None
  if name is None or name in (*_HELP, "help"):
    print("usage: unmix <command> [--flag=value ...]   (unmix <command> --help)\n\ncommands:\n" +
          "\n".join(f"  {c:<10} {what}" for c, what in COMMANDS.items()))
    sys.exit(0 if name else BAD_INPUT)
  if name not in COMMANDS:
    fail(f"unmix has no command {name!r}; choose one of {', '.join(COMMANDS)}.")
  sys.argv = [f"unmix {name}", *argv[2:]]
  importlib.import_module(f"unmix_jax.commands.{name}").run()


class UsageError(ValueError):
  """A mistake on the command line; the message names the flag and the fix."""


def config_file(value: str) -> str:
  """`--config`'s value as config_flags takes it, a file's path[:preset]: an installed config by
  name (`unet:cpu`, from any directory) or a config file (`configs/unet.py:cpu`)."""
  path, colon, preset = value.partition(":")
  if not os.path.isfile(path):
    model = os.path.splitext(os.path.basename(path))[0]
    if model not in configs.MODELS:
      raise UsageError(f"--config={value}: no config {path!r}; use {', '.join(configs.MODELS)} "
                       "(e.g. --config=unet:cpu) or the path of a config file.")
    path = configs.file_of(model)
  return path + colon + preset


def _define(default: str, argv: list[str], flag_values):
  """`--config` in `flag_values`, `argv`'s config names made file paths in place. config_flags
  reads `argv` here, where it checks each field's name; UsageError for a mistake."""
  from ml_collections import config_flags

  try:
    for i, arg in enumerate(argv):
      if arg.startswith("--config="):
        argv[i] = "--config=" + config_file(arg.partition("=")[2])
      elif arg == "--config" and i + 1 < len(argv):
        argv[i + 1] = config_file(argv[i + 1])
    return config_flags.DEFINE_config_file(
        "config", config_file(default),
        f"MODEL[:PRESET]: {', '.join(configs.MODELS)}, or a config file's path[:PRESET] "
        f"(default: {default}).", flag_values=flag_values, sys_argv=argv)
  except UsageError:
    raise
  except Exception as e:  # noqa: BLE001 - config_flags and the config file raise many types
    raise UsageError(_flag_error(e, argv)) from None


def define_config(default: str):
  """`--config=MODEL[:PRESET]` and its `--config.<field>=value` overrides, for a command:
  config_flags checks each field's name (here) and the type of its value (`run`)."""
  try:
    return _define(default, sys.argv, flags.FLAGS)
  except UsageError as e:
    fail(str(e))


def parse_config(argv: list[str], default: str):
  """The config a command line names (`define_config` and the flags parsed, on flags of their
  own): for `--help` and for tests. UsageError for a mistake."""
  flag_values, argv = flags.FlagValues(), list(argv)
  holder = _define(default, argv, flag_values)
  try:
    flag_values(argv, known_only=True)
  except Exception as e:  # noqa: BLE001 - absl and config_flags raise many types
    raise UsageError(_flag_error(e, argv)) from None
  return holder.value


def _flag_error(e: Exception, argv: list[str]) -> str:
  """One line for what flag parsing raised: an unknown config field with ml_collections'
  suggestion, a value of the wrong type, an unknown flag, a config file that fails."""
  text = str(e).strip()
  guess = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
  if guess:
    right, wrong = guess.groups()
    arg = next((a for a in argv if re.match(rf"--(no)?config\.(\w+\.)*{wrong}\b", a)), wrong)
    name = arg.partition("=")[0]
    return (f"{arg}: the config has no field {wrong!r}; did you mean "
            f"{re.sub(rf'[.]{wrong}(?=[.]|$)', f'.{right}', name)}? (--help with --config lists "
            "every field)")
  if isinstance(e, (KeyError, AttributeError)):
    return f"no such config field {text.splitlines()[0]} (--help with --config lists every field)"
  last = [line for line in text.splitlines() if line.strip()][-1].strip()
  if "parsing config file" in text:  # the config file's own error, after its traceback
    return f"--config: {last.partition(': ')[2] or last}"
  return f"{text.splitlines()[0]} (--help lists the flags)"


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - absl and config_flags raise many types
    fail(_flag_error(e, argv))


def command_help(module) -> str:
  """What `unmix <command> --help` prints: the command's docstring, its flags and, for
  commands with --config, the presets; with --config given, every field of that config."""
  lines = [(module.__doc__ or "").strip(), "", "flags:"]
  for flag in flags.FLAGS.get_flags_for_module(module.__name__):
    lines.append(f"  --{flag.name:<12} {flag.help} (default: {flag.default})")
  if "config" not in flags.FLAGS:
    return "\n".join(lines)
  from unmix_jax.configs import common

  lines.append(f"  --{'config':<12} {flags.FLAGS['config'].help}")
  lines.append("  --config.<field>=VALUE  any field of the config, e.g. --config.train.lr=3e-4")
  lines += ["", "presets (--config=<model>:<preset>):"]
  lines += [f"  {name:<8} {what}" for name, what in common.PRESETS.items()]
  given = [a for a in sys.argv if a not in _HELP]
  if any(a.startswith("--config") for a in given[1:]):
    try:
      config = parse_config(given, "unet")
    except UsageError as e:
      fail(str(e))
    lines += ["", f"every field of this config ({config.model.name}:{config.preset}):",
              configs.describe(config)]
  else:
    lines += ["", f"every field with its value and comment: {sys.argv[0]} --config=unet:cpu "
                  "--help"]
  return "\n".join(lines)


def run(main, *, takes_words: bool = False) -> None:
  """`absl.app.run(main)` for a command: `--help` prints `command_help` and exits 0; every
  mistake on the line, a word where the command takes none included, is one `error:` line."""
  module = sys.modules[main.__module__]
  if any(a in _HELP for a in sys.argv[1:]):
    print(command_help(module))
    sys.exit(0)

  def checked(argv):
    if len(argv) > 1 and not takes_words:
      hint = (f" (did you mean --config={argv[1]}?)" if "config" in flags.FLAGS and re.match(
          rf"^(\S*/)?({'|'.join(configs.MODELS)})(\.py)?(:\w+)?$", argv[1]) else "")
      fail(f"unexpected {argv[1]!r} on the command line{hint}; flags are written --name=value "
           f"({sys.argv[0]} --help).")
    return main(argv)

  app.run(checked, flags_parser=_parse_flags)


@contextlib.contextmanager
def one_line_errors():
  """Known failures as one line: bad settings and data exit 2, storage 3, a lost process 4, a
  stop by signal 128 + N after its checkpoint."""
  # Imported here: the flag parsing above stays fast (--help) without JAX and Orbax.
  from unmix_jax import (backend, checkpoint, config_checks, data, parallel, preemption, runs,
                         separation, workdir)

  known = (config_checks.ConfigError, data.DataError, checkpoint.CheckpointError, runs.RunError,
           workdir.LockedError, parallel.LaunchError, separation.ImageError,
           backend.BackendError, FloatingPointError)
  try:
    yield
  except workdir.StorageError as e:
    fail(str(e), STORAGE)
  except parallel.ProcessLost as e:
    fail(str(e), LOST_PROCESS)
  except parallel.RemoteError as e:  # process 0's one line, on every other process
    fail(str(e), STORAGE if e.kind == "StorageError" else BAD_INPUT)
  except OSError as e:
    reason = workdir.storage_reason(e)
    if reason is None:
      raise
    # A write outside training's own files (a report, separate's outputs): no checkpoint to name.
    fail(str(workdir.StorageError(e.filename or "a file", reason)), STORAGE)
  except known as e:
    fail(str(e))
  except preemption.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
