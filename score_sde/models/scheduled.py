"""A score network together with a learned noise schedule and/or VDM's Fourier features of its input.

The schedule's parameters live beside the network's ({"net": ..., "schedule": ...}), so the train
state, EMA, checkpoints and resumption carry them with no change; `schedules.bind(sde, params)`
reads them back. Built by `models.get_model` when config.training.sde is "vdm" or
config.model.fourier_features is set.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde import schedules

Array = jax.Array

# VDM's Base2FourierFeatures(start=6, stop=8): frequencies 2^6 and 2^7 (cycles per unit).
FOURIER_EXPONENTS = (6, 7)


def fourier_features(x: Array, exponents=FOURIER_EXPONENTS) -> Array:
  """[sin(2 pi 2^k x), cos(2 pi 2^k x)] for each exponent k, stacked on the channel axis (VDM, App. C)."""
  w = 2.0 * jnp.pi * 2.0 ** jnp.asarray(exponents, x.dtype)
  h = (x[..., None] * w).reshape(x.shape[:-1] + (-1,))
  return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


class ScheduledNetwork(nn.Module):
  """net(concat(x, fourier(x)) or x, noise_labels)[..., :C], holding `schedule`'s parameters as well.

  With Fourier features the network sees 1 + 2 len(FOURIER_EXPONENTS) times the channels and its
  output is cut back to the first C. The schedule is evaluated only to create its parameters.
  """

  net: nn.Module
  schedule: nn.Module | None = None
  with_fourier_features: bool = False

  @nn.compact
  def __call__(self, x: Array, noise_labels: Array, train: bool = False, **kwargs) -> Array:
    if self.schedule is not None and self.is_initializing():
      self.schedule(jnp.zeros((1,), x.dtype))
    h = jnp.concatenate([x, fourier_features(x)], axis=-1) if self.with_fourier_features else x
    return self.net(h, noise_labels, train=train, **kwargs)[..., :x.shape[-1]]


def wrap(config: ml_collections.ConfigDict, net: nn.Module) -> nn.Module:
  """`net` wrapped with the learned schedule (training.sde == "vdm") and Fourier features if configured."""
  learned = config.training.sde.lower() == "vdm"
  if not (learned or config.model.fourier_features):
    return net
  schedule = schedules.learned_schedule_module(config.model) if learned else None
  return ScheduledNetwork(net=net, schedule=schedule, with_fourier_features=config.model.fourier_features)
