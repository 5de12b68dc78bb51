"""The training state: one pytree that is checkpointed, sharded and resumed as a whole."""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """step, params, their exponential moving average and the optimizer state.

  The per-step PRNG key is not stored: it is fold_in(key(seed), step), so a resumed run draws the
  same randomness as an uninterrupted one.
  """

  step: jax.Array
  params: dict
  ema_params: dict
  opt_state: optax.OptState

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
               opt_state=optimizer.init(params))
