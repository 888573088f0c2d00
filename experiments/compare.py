"""`unmix compare` from a checkout: `python -m experiments.compare --help` says how to use it."""

from unmix_jax.commands import compare

if __name__ == "__main__":
  compare.run()
