"""One config file per architecture (`configs/<model>.py`, `get_config(preset)`), installed with
the package as `unmix_jax.configs`; `common.py` holds what they share and the presets."""

import importlib
import json
import os
import re

MODELS = ("unet", "ae", "vae")


def get_config(model: str, preset: str | None = None):
  """The config of `model` ("unet", "ae", "vae") at `preset`, as `--config=<model>:<preset>`."""
  return importlib.import_module(f"unmix_jax.configs.{model}").get_config(preset)


def file_of(model: str) -> str:
  """The installed config file of `model`, e.g. .../unmix_jax/configs/unet.py."""
  return os.path.join(os.path.dirname(__file__), f"{model}.py")


def complete_model(saved: dict, preset: str | None = None) -> dict:
  """A `config.model` saved as JSON before some of today's fields existed, with those fields at
  their defaults (what that run used), so it compares equal to the same model today."""
  try:
    defaults = json.loads(get_config(saved["name"], preset).model.to_json())
  except (KeyError, ModuleNotFoundError, ValueError):
    return saved  # no such model or preset today: compare as saved
  return {**defaults, **saved}


def _comments(model: str) -> dict[str, str]:
  """field ("train.lr") -> the comment beside or above its line in common.py or <model>.py."""
  found = {}
  for name in ("common", model):
    above = []
    with open(os.path.join(os.path.dirname(__file__), f"{name}.py")) as f:
      for line in f:
        text = line.strip()
        match = re.match(r"c\.([\w.]+) = [^#]*(?:#\s*(.*))?$", text)
        if text.startswith("#"):
          above.append(text.lstrip("# "))
        elif match:
          found.setdefault(match[1], match[2] or " ".join(above))
          above = []
        else:
          above = []
  return found


def describe(config) -> str:
  """Every field of `config`, one line each: `train.lr = 0.001  # what it does`."""
  comments = _comments(config.model.name)

  def lines(node, prefix):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if hasattr(value, "items"):
        yield from lines(value, f"{name}.")
      else:
        note = comments.get(name, "")
        yield f"  {name} = {value!r}" + (f"  # {note}" if note else "")

  return "\n".join(lines(config, ""))
