"""`unmix ablate` from a checkout: `python -m experiments.ablate --help` says how to use it."""

from unmix_jax.commands import ablate

if __name__ == "__main__":
  ablate.run()
