"""One config file per architecture (`configs/<model>.py`, `get_config(preset)`), installed with
the package as `unmix_jax.configs`; `common.py` holds what they share and the presets."""

import importlib
import json


def get_config(model: str, preset: str | None = None):
  """The config of `model` ("unet", "ae", "vae") at `preset`, as `--config=configs/<model>.py:<preset>`."""
  return importlib.import_module(f"unmix_jax.configs.{model}").get_config(preset)


def complete_model(saved: dict, preset: str | None = None) -> dict:
  """A `config.model` saved as JSON before some of today's fields existed, with those fields at
  their defaults (what that run used), so it compares equal to the same model today."""
  try:
    defaults = json.loads(get_config(saved["name"], preset).model.to_json())
  except (KeyError, ModuleNotFoundError, ValueError):
    return saved  # no such model or preset today: compare as saved
  return {**defaults, **saved}
