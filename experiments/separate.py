"""`unmix separate` from a checkout: `python -m experiments.separate --help` says how to use it."""

from unmix_jax.commands import separate

if __name__ == "__main__":
  separate.run()
