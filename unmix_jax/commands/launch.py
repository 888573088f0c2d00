"""Start a multi-process run on this machine, to try what a cluster runs.

  unmix launch --processes=2 train --config=unet:smoke

starts `unmix <command> <args>` (or `python -m <module> <args>` for a module such as
experiments.train) once per process with JAX_COORDINATOR_ADDRESS (127.0.0.1 and
a free port), JAX_NUM_PROCESSES and JAX_PROCESS_ID set, and waits for them. The processes share
the machine's cores (docs/parallel.md: pinning each to its own share runs slower). SIGTERM and
SIGINT are passed on to every process once. Exits with the code of the first process that
failed, else 0. On a cluster, start one process per host yourself (README: several processes).
"""

import argparse
import signal
import subprocess
import sys
import time


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    from unmix_jax import cli

    cli.fail(f"{message} ({self.prog} --help)")


def main() -> int:
  parser = _Parser(prog=sys.argv[0], description=__doc__.split("\n\n")[0])
  parser.add_argument("--processes", type=int, default=2, help="How many processes.")
  parser.add_argument("command", help="An unmix command (train) or a module (experiments.train).")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="Its arguments.")
  options = parser.parse_args()
  from unmix_jax import cli, parallel  # after parsing: --help stays fast

  if options.processes < 1:
    parser.error(f"--processes={options.processes} must be >= 1.")
  # Each process outside the terminal's foreground process group (start_new_session), so that
  # a Ctrl-C reaches them once, through this launcher; each gets SIGTERM should the launcher
  # itself die.
  command = (["unmix_jax", options.command] if options.command in cli.COMMANDS
             else [options.command])
  procs = [subprocess.Popen([sys.executable, "-m", *command, *options.args], env=env,
                            start_new_session=True, preexec_fn=parallel.as_launched)
           for env in parallel.local_launch(options.processes)]

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, forward)
  failed = None
  while any(p.poll() is None for p in procs):
    if failed is None:
      failed = next((p for p in procs if p.poll() not in (None, 0)), None)
    time.sleep(0.1)
  failed = failed or next((p for p in procs if p.returncode != 0), None)
  if failed is None:
    return 0
  return failed.returncode if failed.returncode > 0 else 128 - failed.returncode


def run():
  sys.exit(main())
