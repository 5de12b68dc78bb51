"""Pieces shared by every sampler: scalar-time coefficients, time grids, the Tweedie step, the step loop."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_sde import discrete
from score_sde import sde as sde_lib

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
Progress = Callable[[int, int], None]  # progress(steps_done, steps_total), a host function


def batch_times(t: Array, x: Array) -> Array:
  """A scalar time repeated over the batch of `x`: the [B] times a score function takes."""
  return jnp.full((x.shape[0],), t, x.dtype)


def _at_scalar(fn: Callable, t: Array):
  """fn applied to a scalar time as to a batch of one; every output back to a scalar."""
  return jax.tree.map(lambda v: v[0], fn(jnp.reshape(jnp.asarray(t), (1,))))


def coeffs(sde: sde_lib.SDE, t: Array) -> tuple[Array, Array]:
  """(alpha_t, sigma_t) at a scalar time t."""
  return _at_scalar(sde.marginal_coeffs, t)


def transition(sde: sde_lib.SDE, t: Array, s: Array) -> tuple[Array, Array]:
  """(a, b) of the forward kernel x_t = a x_s + b z between scalar times s < t (`SDE.transition`)."""
  return sde_lib.kernel_coeffs(coeffs(sde, t), coeffs(sde, s))


def log_snr(sde: sde_lib.SDE, t: Array) -> Array:
  """lambda_t = log(alpha_t / sigma_t) at a scalar time t (`SDE.marginal_lambda`)."""
  return _at_scalar(sde.marginal_lambda, t)


def time_of_log_snr(sde: sde_lib.SDE, lmbda: Array) -> Array:
  """The scalar time t with lambda_t = lmbda (`SDE.inverse_lambda`)."""
  return _at_scalar(sde.inverse_lambda, lmbda)


def data_prediction(score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, t: Array) -> Array:
  """Tweedie's x0 = (x + sigma_t^2 s(x, t)) / alpha_t (`discrete.tweedie_x0`) at a scalar time t."""
  alpha, sigma = coeffs(sde, t)
  return discrete.tweedie_x0(x, score_fn(x, batch_times(t, x)), alpha, sigma)


def noise_prediction(score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, t: Array) -> Array:
  """eps = -sigma_t s(x, t), the noise-prediction parametrization (THEORY.md §1)."""
  _, sigma = coeffs(sde, t)
  return -sigma * score_fn(x, batch_times(t, x))


def _logsnr_time(sde: sde_lib.SDE, u: Array, eps: float) -> Array:
  lam_T, lam_eps = log_snr(sde, sde.T), log_snr(sde, eps)
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


def report(progress: Progress | None, steps_done: Array, steps_total: Array) -> None:
  """Calls progress(steps_done, steps_total) with Python ints on the host, from inside a jitted loop.

  Unordered (jax.debug.callback): calls may arrive out of order, so a display should keep the
  largest steps_done it has seen.
  """
  if progress is not None:
    jax.debug.callback(lambda done, total: progress(int(done), int(total)), steps_done, steps_total)


def fixed_steps(step: Callable, carry, num_steps, progress: Progress | None = None):
  """carry <- step(i, carry, u_i, u_{i+1}) for i < num_steps, u_i = i / num_steps; num_steps may be traced.

  Reports progress(i + 1, num_steps) after each step.
  """
  num = jnp.asarray(num_steps, jnp.float32)

  def body(i, carry):
    carry = step(i, carry, i / num, (i + 1) / num)
    report(progress, i + 1, num_steps)
    return carry

  return jax.lax.fori_loop(0, num_steps, body, carry)


def finish(score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, eps: float, denoise: bool) -> tuple[Array, int]:
  """The optional final Tweedie step at t = eps and the score evaluations it costs."""
  if denoise:
    return data_prediction(score_fn, sde, x, jnp.asarray(eps, x.dtype)), 1
  return x, 0
