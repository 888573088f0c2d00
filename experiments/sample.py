"""`unmix sample` from a checkout: `python -m experiments.sample --help` says how to use it."""

from unmix_jax.commands import sample

if __name__ == "__main__":
  sample.run()
