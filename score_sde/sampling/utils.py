"""Pieces shared by every sampler: time grids, parametrization conversions, the Tweedie step."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_sde import sde as sde_lib

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_times(t: Array, x: Array) -> Array:
  """A scalar time repeated over the batch of `x`: the [B] times a score function takes."""
  return jnp.full((x.shape[0],), t, x.dtype)


def coeffs(sde: sde_lib.SDE, t: Array) -> tuple[Array, Array]:
  """(alpha_t, sigma_t) at a scalar time t."""
  alpha, sigma = sde.marginal_coeffs(jnp.reshape(t, (1,)))
  return alpha[0], sigma[0]


def data_prediction(score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, t: Array) -> Array:
  """Tweedie's formula x0 = (x + sigma_t^2 s(x, t)) / alpha_t (THEORY.md §4) at a scalar time t."""
  alpha, sigma = coeffs(sde, t)
  return (x + sigma**2 * score_fn(x, batch_times(t, x))) / alpha


def noise_prediction(score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, t: Array) -> Array:
  """eps = -sigma_t s(x, t), the noise-prediction parametrization (THEORY.md §1)."""
  _, sigma = coeffs(sde, t)
  return -sigma * score_fn(x, batch_times(t, x))


def transition_coeffs(sde: sde_lib.SDE, t: Array, s: Array) -> tuple[Array, Array]:
  """(a, b) of the forward kernel x_t = a x_s + b z from time s to t > s: a = alpha_t / alpha_s,

  b^2 = sigma_t^2 - a^2 sigma_s^2 (exact for any linear SDE; the DDPM beta_i / SMLD sigma_i^2 -
  sigma_{i-1}^2 on the discrete grids).
  """
  alpha_t, sigma_t = coeffs(sde, t)
  alpha_s, sigma_s = coeffs(sde, s)
  a = alpha_t / alpha_s
  return a, jnp.sqrt(jnp.maximum(sigma_t**2 - (a * sigma_s) ** 2, 0.0))


def _lambda(sde: sde_lib.SDE, t: float) -> Array:
  return sde.marginal_lambda(jnp.asarray([t], jnp.float32))[0]


def _logsnr_time(sde: sde_lib.SDE, u: Array, eps: float) -> Array:
  lam_T, lam_eps = _lambda(sde, sde.T), _lambda(sde, eps)
  return sde.inverse_lambda(lam_T + u * (lam_eps - lam_T))


def _time_uniform_time(sde: sde_lib.SDE, u: Array, eps: float) -> Array:
  return sde.T + u * (eps - sde.T)


def _time_quadratic_time(sde: sde_lib.SDE, u: Array, eps: float) -> Array:
  return (sde.T**0.5 + u * (eps**0.5 - sde.T**0.5)) ** 2


SKIP_TYPES = {
    "logSNR": _logsnr_time,  # uniform in lambda = log(alpha / sigma) (DPM-Solver's default)
    "time_uniform": _time_uniform_time,
    "time_quadratic": _time_quadratic_time,
}


def check_skip_type(skip_type: str) -> None:
  if skip_type not in SKIP_TYPES:
    raise ValueError(f"unknown skip_type {skip_type!r}; choose from {sorted(SKIP_TYPES)}")


def grid_time(sde: sde_lib.SDE, u: Array, eps: float, skip_type: str = "time_uniform") -> Array:
  """The time at fraction u in [0, 1] of a grid from T (u = 0) to eps (u = 1), spaced as `skip_type` says.

  A function of u rather than an array, so the number of steps can be a traced value (one
  compilation serves every step count). Endpoints are exact.
  """
  check_skip_type(skip_type)
  u = jnp.asarray(u, jnp.float32)
  t = SKIP_TYPES[skip_type](sde, u, eps).astype(jnp.float32)
  return jnp.where(u <= 0.0, sde.T, jnp.where(u >= 1.0, eps, t))


def time_grid(sde: sde_lib.SDE, num_steps: int, eps: float, skip_type: str = "time_uniform") -> Array:
  """num_steps + 1 decreasing times from T to eps (grid_time at u = i / num_steps)."""
  return grid_time(sde, jnp.linspace(0.0, 1.0, num_steps + 1), eps, skip_type)


def fixed_steps(step: Callable, carry, num_steps):
  """carry <- step(i, carry, u_i, u_{i+1}) for i < num_steps, u_i = i / num_steps; num_steps may be traced."""
  num = jnp.asarray(num_steps, jnp.float32)
  return jax.lax.fori_loop(0, num_steps, lambda i, c: step(i, c, i / num, (i + 1) / num), carry)


def finish(score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, eps: float, denoise: bool) -> tuple[Array, int]:
  """The optional final Tweedie step at t = eps and the score evaluations it costs."""
  if denoise:
    return data_prediction(score_fn, sde, x, jnp.asarray(eps, x.dtype)), 1
  return x, 0
