"""`unmix launch` from a checkout: `python -m experiments.launch --help` says how to use it."""

from unmix_jax.commands import launch

if __name__ == "__main__":
  launch.run()
