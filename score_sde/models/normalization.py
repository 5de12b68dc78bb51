"""Feature normalizations selected by `config.model.normalization` (channels are known at call time)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _normal_around_one(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class InstanceNormPlus(nn.Module):
  """InstanceNorm++ (Song & Ermon 2020, eq. 8): instance norm that keeps the channel means' spread.

  With mu_c the spatial mean of channel c and m, s the mean and std of (mu_c)_c:
  out = gamma_c ((x - mu_c) / sigma_c + alpha_c (mu_c - m) / s) + beta_c, alpha and gamma init ~ N(1, 0.02^2).
  """

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    x32 = x.astype(jnp.float32)
    means = jnp.mean(x32, axis=(1, 2), keepdims=True)
    spread = jnp.mean(means, axis=-1, keepdims=True)
    spread_std = jnp.sqrt(jnp.var(means, axis=-1, keepdims=True) + 1e-5)
    h = (x32 - means) / jnp.sqrt(jnp.var(x32, axis=(1, 2), keepdims=True) + 1e-5)
    alpha = self.param("alpha", _normal_around_one, (channels,))
    gamma = self.param("gamma", _normal_around_one, (channels,))
    beta = self.param("beta", nn.initializers.zeros, (channels,))
    h = h + alpha * (means - spread) / spread_std
    return (gamma * h + beta).astype(self.dtype)


def _group_norm(x: Array, dtype: jnp.dtype) -> Array:
  """GroupNorm with min(C / 4, 32) groups, as in DDPM / NCSN++."""
  groups = max(1, min(x.shape[-1] // 4, 32))
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32)(x)


def _group_norm_32(x: Array, dtype: jnp.dtype) -> Array:
  """GroupNorm with 32 groups (min(C, 32)), as Ho et al.'s DDPM and score_sde's port of it."""
  return nn.GroupNorm(num_groups=min(x.shape[-1], 32), epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32)(x)


def _instance_norm(x: Array, dtype: jnp.dtype) -> Array:
  """Per-sample, per-channel normalization over H, W with a learned affine map."""
  return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)(x)


NORMALIZATIONS: dict[str, Callable[[Array, jnp.dtype], Array]] = {
    "GroupNorm": _group_norm,
    "GroupNorm32": _group_norm_32,
    "InstanceNorm": _instance_norm,
    "InstanceNorm++": lambda x, dtype: InstanceNormPlus(dtype=dtype)(x),
}


class Normalization(nn.Module):
  """The normalization named `kind`; one module class for all kinds keeps parameter paths alike."""

  kind: str = "GroupNorm"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return NORMALIZATIONS[self.kind](x, self.dtype)


def get_normalization(name: str, dtype: jnp.dtype = jnp.float32) -> Callable[[], nn.Module]:
  """Factory of fresh normalization modules named `name` (model.normalization)."""
  if name not in NORMALIZATIONS:
    raise ValueError(f"unknown model.normalization {name!r}; choose from {sorted(NORMALIZATIONS)}")
  return lambda: Normalization(name, dtype)
