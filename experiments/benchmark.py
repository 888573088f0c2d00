"""`unmix benchmark` from a checkout: `python -m experiments.benchmark --help` says how to use it."""

from unmix_jax.commands import benchmark

if __name__ == "__main__":
  benchmark.run()
