"""Name -> model-builder registry; `config.model.name` selects the network."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import ml_collections

from score_sde.models import scheduled

ModelBuilder = Callable[[ml_collections.ConfigDict], nn.Module]

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str):
  """Decorator registering `builder(config) -> nn.Module` under `name`."""

  def decorator(builder: ModelBuilder) -> ModelBuilder:
    if name in _MODELS:
      raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder
    return builder

  return decorator


def available_models() -> list[str]:
  return sorted(_MODELS)


def get_model(config: ml_collections.ConfigDict) -> nn.Module:
  """Builds the network named by `config.model.name`.

  Every registered module is called as `module.apply({'params': p}, x, noise_labels, train=...)`
  (plus `rngs={'dropout': key}` when training) and returns an array shaped like x. A learned noise
  schedule or Fourier features wrap it in `scheduled.ScheduledNetwork`.
  """
  name = config.model.name
  if name not in _MODELS:
    raise ValueError(f"unknown model.name {name!r}; registered models: {available_models()}")
  return scheduled.wrap(config, _MODELS[name](config))
