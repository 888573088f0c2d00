"""One config file per architecture (`configs/<model>.py`, `get_config(preset)`), installed with
the package as `unmix_jax.configs`; `common.py` holds what they share and the presets."""

import importlib


def get_config(model: str, preset: str | None = None):
  """The config of `model` ("unet", "ae", "vae") at `preset`, as `--config=configs/<model>.py:<preset>`."""
  return importlib.import_module(f"unmix_jax.configs.{model}").get_config(preset)
