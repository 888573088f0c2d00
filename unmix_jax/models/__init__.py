"""The model registry: the only place that knows the architecture names.

Every model module exports `Model(model_cfg, *, layers, rngs)`, called as
`model(m, *, train, key=None) -> (x1_hat, x2_hat, aux)` with `m` the mixture [B, 32, 32, 3] in
[0, 1] (outputs float32 whatever the compute dtype), and `validate(model_cfg)`, which raises
ValueError naming a bad field. `layers` (see `layers.py`) decides how its layers are computed.
"""

from __future__ import annotations

import importlib
import types

from unmix_jax.models import layers as layers_lib

_MODULES = {
    "unet": "unmix_jax.models.unet",
    "ae": "unmix_jax.models.ae",
    "vae": "unmix_jax.models.vae",
}
NAMES = tuple(_MODULES)


def get(name: str) -> types.ModuleType:
  """The module implementing `config.model.name`."""
  if name not in _MODULES:
    raise ValueError(
        f"config.model.name={name!r} is not a known model; choose one of {', '.join(NAMES)}.")
  return importlib.import_module(_MODULES[name])


def build(model_cfg, seed: int, layers: layers_lib.Layers | None = None):
  """Validates `model_cfg` and builds its model with float32 parameters initialised from `seed`,
  from `layers` (default: Flax's, float32)."""
  from flax import nnx

  module = get(model_cfg.name)
  module.validate(model_cfg)
  return module.Model(model_cfg, layers=layers or layers_lib.xla(), rngs=nnx.Rngs(params=seed))
