"""Layers shared by the score networks."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def get_timestep_embedding(timesteps: Array, embedding_dim: int, max_positions: int = 10000) -> Array:
  """Transformer sinusoidal embedding of (possibly fractional) timesteps [B] -> [B, embedding_dim]."""
  half_dim = embedding_dim // 2
  frequencies = jnp.exp(-math.log(max_positions) * jnp.arange(half_dim, dtype=jnp.float32) / (half_dim - 1))
  args = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


class GaussianFourierProjection(nn.Module):
  """Random Fourier features [sin(2 pi w x), cos(2 pi w x)] with fixed w ~ N(0, scale^2)."""

  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    w = self.param("W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    w = jax.lax.stop_gradient(w)
    proj = x[:, None] * w[None, :] * 2 * np.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)
