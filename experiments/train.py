"""`unmix train` from a checkout: `python -m experiments.train --help` says how to use it."""

from unmix_jax.commands import train

if __name__ == "__main__":
  train.run()
