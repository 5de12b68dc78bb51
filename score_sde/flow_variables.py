"""Variables in which the probability-flow ODE is close to linear (DDIM / DPM-Solver; THEORY.md §3-5).

For a linear SDE with p_0t(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I), write y = x / alpha_t and
s = sigma_t / alpha_t (noise-to-signal ratio, s = exp(-lambda)). The probability-flow ODE
dx/dt = f(t) x - g(t)^2 s_theta(x, t) / 2 becomes, since g^2 / 2 = sigma alpha ds/dt,
  dy/ds = eps_hat(x, t) = -sigma_t s_theta(alpha_t y, t)      (Song et al. 2021, DDIM, eq. 14),
whose right-hand side is nearly constant at high noise, and which has none of the sqrt(t)
singularity of sigma_t at t -> 0 that makes the last stretch near t = eps expensive in t.
A time variable tau = tau(s) gives dy/dtau = (ds/dtau) eps_hat, and by the change of variables
x = alpha y (THEORY.md §5)
  log p_eps(x) = log p_T(alpha_T y_T) + D log(alpha_T / alpha_eps) + int_{tau_eps}^{tau_T} div_y (dy/dtau) dtau.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from score_sde import sde as sde_lib

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


class TimeVariable(NamedTuple):
  """tau as a function of lambda = log(alpha / sigma), its inverse, and ds/dtau (s = exp(-lambda))."""
  of_lambda: Callable[[Array], Array]
  to_lambda: Callable[[Array], Array]
  ds_dtau: Callable[[Array], Array]


# "time" (state x, time t; the formulation of Song et al.) is handled by the callers; the others
# integrate y = x / alpha_t against tau.
TIME_VARIABLES = {
    "log_snr": TimeVariable(lambda lmbda: -lmbda, lambda tau: -tau, jnp.exp),  # tau = log s = -lambda
    "ddim": TimeVariable(lambda lmbda: jnp.exp(-lmbda), lambda tau: -jnp.log(tau), jnp.ones_like),  # tau = s
}
VARIABLES = ("time",) + tuple(TIME_VARIABLES)


def check(variables: str) -> None:
  if variables not in VARIABLES:
    raise ValueError(f"unknown ODE variables {variables!r}; choose from {sorted(VARIABLES)}")


def _time_and_coeffs(sde: sde_lib.SDE, variable: TimeVariable, tau: Array) -> tuple[Array, Array, Array]:
  """(t, alpha_t, sigma_t) at a scalar tau, each of shape [1]."""
  t = sde.inverse_lambda(jnp.reshape(variable.to_lambda(tau), (1,)))
  alpha, sigma = sde.marginal_coeffs(t)
  return t, alpha, sigma


def endpoint(sde: sde_lib.SDE, variables: str, t: float, dtype=jnp.float32) -> tuple[Array, Array]:
  """(tau, alpha) at the time t: the integration bound and the factor with x = alpha y."""
  t = jnp.asarray([t], dtype)
  alpha, _ = sde.marginal_coeffs(t)
  return TIME_VARIABLES[variables].of_lambda(sde.marginal_lambda(t))[0], alpha[0]


def vector_field(score_fn: ScoreFn, sde: sde_lib.SDE, variables: str) -> Callable[[Array, Array], Array]:
  """(tau, y) -> dy/dtau = (ds/dtau) eps_hat(alpha_t y, t) with eps_hat = -sigma_t s_theta, t = t(tau)."""
  variable = TIME_VARIABLES[variables]

  def field(tau: Array, y: Array) -> Array:
    t, alpha, sigma = _time_and_coeffs(sde, variable, tau)
    times = jnp.broadcast_to(t, y.shape[:1]).astype(y.dtype)
    score = score_fn(alpha.astype(y.dtype) * y, times)
    return (variable.ds_dtau(tau) * -sigma[0]).astype(y.dtype) * score

  return field

