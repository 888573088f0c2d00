"""`unmix export` from a checkout: `python -m experiments.export --help` says how to use it."""

from unmix_jax.commands import export

if __name__ == "__main__":
  export.run()
