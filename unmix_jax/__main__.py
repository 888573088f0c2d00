"""`python -m unmix_jax <command>`: the `unmix` command (`unmix_jax.cli.main`)."""

from unmix_jax import cli

cli.main()
