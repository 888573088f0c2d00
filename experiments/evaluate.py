"""`unmix evaluate` from a checkout: `python -m experiments.evaluate --help` says how to use it."""

from unmix_jax.commands import evaluate

if __name__ == "__main__":
  evaluate.run()
