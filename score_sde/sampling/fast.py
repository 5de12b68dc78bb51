"""Few-step solvers of the probability-flow ODE, generic over VP, sub-VP and VE (THEORY.md §4).

All are written with (alpha_t, sigma_t) = sde.marginal_coeffs(t), lambda_t = log(alpha_t / sigma_t)
= sde.marginal_lambda(t) and its inverse sde.inverse_lambda, so one code path serves every SDE:
- DDIM (Song, Meng, Ermon 2021), eta = 0 deterministic (= DPM-Solver-1), eta = 1 ancestral;
- DPM-Solver-1/2/3 singlestep, noise prediction (Lu et al. 2022, Alg. 1-2, r1 = 1/2; r1, r2 = 1/3, 2/3);
- DPM-Solver++(2M) multistep, data prediction (Lu et al. 2022b, Alg. 2);
- EDM's 2nd-order Heun (Karras et al. 2022, Alg. 1) on x~ = x / alpha_t against sigma~ = sigma_t / alpha_t
  = exp(-lambda_t), with the rho = 7 sigma~ schedule.
Each returns (x at t = eps, nfe); `denoise` adds one Tweedie step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from score_sde import discrete
from score_sde import sde as sde_lib
from score_sde.sampling import utils

Array = jax.Array
ScoreFn = sde_lib.ScoreFn


def ddim_step(rng: Array, x: Array, t: Array, s: Array, score_fn: ScoreFn, sde: sde_lib.SDE, eta: float) -> Array:
  """x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, c = eta sqrt(Var q(x_s | x_t, x0)) (DDIM eq. 12)."""
  alpha_t, sigma_t = utils.coeffs(sde, t)
  alpha_s, sigma_s = utils.coeffs(sde, s)
  _, b = utils.transition(sde, t, s)
  score = score_fn(x, utils.batch_times(t, x))
  noise_pred = -sigma_t * score
  x0 = discrete.tweedie_x0(x, score, alpha_t, sigma_t)
  c = eta * sigma_s * b / sigma_t
  return alpha_s * x0 + jnp.sqrt(jnp.maximum(sigma_s**2 - c**2, 0.0)) * noise_pred + c * jax.random.normal(
      rng, x.shape, x.dtype)


def _first_order(sde, x, t, u, noise_pred_t):
  """DPM-Solver-1 from t to u: (alpha_u / alpha_t) x - sigma_u (e^{lambda_u - lambda_t} - 1) eps_t."""
  alpha_t, _ = utils.coeffs(sde, t)
  alpha_u, sigma_u = utils.coeffs(sde, u)
  return alpha_u / alpha_t * x - sigma_u * jnp.expm1(utils.log_snr(sde, u) - utils.log_snr(sde, t)) * noise_pred_t


def _dpm1(x, t, s, score_fn, sde, noise_pred_t):
  return _first_order(sde, x, t, s, noise_pred_t)


def _dpm2(x, t, s, score_fn, sde, noise_pred_t, r1=0.5):
  """DPM-Solver-2: one midpoint evaluation at lambda_t + r1 h."""
  lam_t, h = utils.log_snr(sde, t), utils.log_snr(sde, s) - utils.log_snr(sde, t)
  s1 = utils.time_of_log_snr(sde, lam_t + r1 * h)
  u1 = _first_order(sde, x, t, s1, noise_pred_t)
  d1 = utils.noise_prediction(score_fn, sde, u1, s1) - noise_pred_t
  _, sigma_s = utils.coeffs(sde, s)
  return _first_order(sde, x, t, s, noise_pred_t) - sigma_s / (2 * r1) * jnp.expm1(h) * d1


def _dpm3(x, t, s, score_fn, sde, noise_pred_t, r1=1.0 / 3.0, r2=2.0 / 3.0):
  """DPM-Solver-3: evaluations at lambda_t + r1 h and lambda_t + r2 h."""
  lam_t, h = utils.log_snr(sde, t), utils.log_snr(sde, s) - utils.log_snr(sde, t)
  s1, s2 = utils.time_of_log_snr(sde, lam_t + r1 * h), utils.time_of_log_snr(sde, lam_t + r2 * h)
  u1 = _first_order(sde, x, t, s1, noise_pred_t)
  d1 = utils.noise_prediction(score_fn, sde, u1, s1) - noise_pred_t
  _, sigma_s2 = utils.coeffs(sde, s2)
  u2 = (_first_order(sde, x, t, s2, noise_pred_t)
        - sigma_s2 * r2 / r1 * (jnp.expm1(r2 * h) / (r2 * h) - 1.0) * d1)
  d2 = utils.noise_prediction(score_fn, sde, u2, s2) - noise_pred_t
  _, sigma_s = utils.coeffs(sde, s)
  return _first_order(sde, x, t, s, noise_pred_t) - sigma_s / r2 * (jnp.expm1(h) / h - 1.0) * d2


DPM_SOLVER_STEPS = {1: _dpm1, 2: _dpm2, 3: _dpm3}  # order -> step; it costs `order` score evaluations


def ddim(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *, num_steps: int = 50, eta: float = 0.0,
         skip_type: str = "time_uniform", eps: float = 1e-3, denoise: bool = False,
         progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """DDIM with num_steps steps (nfe = num_steps)."""
  utils.check_skip_type(skip_type)
  prior_rng, steps_rng = jax.random.split(rng)

  def step(i, x, u, u_next):
    t, s = utils.grid_time(sde, u, eps, skip_type), utils.grid_time(sde, u_next, eps, skip_type)
    return ddim_step(jax.random.fold_in(steps_rng, i), x, t, s, score_fn, sde, eta)

  x = utils.fixed_steps(step, sde.prior_sampling(prior_rng, shape), num_steps, progress)
  x, denoise_nfe = utils.finish(score_fn, sde, x, eps, denoise)
  return x, num_steps + denoise_nfe


def dpm_solver(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *, order: int = 3, num_steps: int = 10,
               skip_type: str = "logSNR", eps: float = 1e-3, denoise: bool = False,
               progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """Singlestep DPM-Solver-`order` with num_steps steps (nfe = order * num_steps)."""
  if order not in DPM_SOLVER_STEPS:
    raise ValueError(f"unknown DPM-Solver order {order!r}; choose from {sorted(DPM_SOLVER_STEPS)}")
  utils.check_skip_type(skip_type)
  update = DPM_SOLVER_STEPS[order]

  def step(i, x, u, u_next):
    del i
    t, s = utils.grid_time(sde, u, eps, skip_type), utils.grid_time(sde, u_next, eps, skip_type)
    return update(x, t, s, score_fn, sde, utils.noise_prediction(score_fn, sde, x, t))

  x = utils.fixed_steps(step, sde.prior_sampling(rng, shape), num_steps, progress)
  x, denoise_nfe = utils.finish(score_fn, sde, x, eps, denoise)
  return x, order * num_steps + denoise_nfe


def dpm_solver_pp(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *, num_steps: int = 20,
                  skip_type: str = "logSNR", eps: float = 1e-3, denoise: bool = False,
                  progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """DPM-Solver++(2M): x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, nfe = num_steps.

  D = x0_t + (x0_t - x0_prev) / (2 r), r = h_prev / h, is the multistep 2nd-order estimate of the
  data prediction (D = x0_t on the first step).
  """
  utils.check_skip_type(skip_type)

  def step(i, carry, u, u_next):
    x, x0_prev, h_prev = carry
    t, s = utils.grid_time(sde, u, eps, skip_type), utils.grid_time(sde, u_next, eps, skip_type)
    _, sigma_t = utils.coeffs(sde, t)
    alpha_s, sigma_s = utils.coeffs(sde, s)
    h = utils.log_snr(sde, s) - utils.log_snr(sde, t)
    x0 = utils.data_prediction(score_fn, sde, x, t)
    correction = jnp.where(i == 0, 0.0, h / (2.0 * h_prev)) * (x0 - x0_prev)
    return sigma_s / sigma_t * x - alpha_s * jnp.expm1(-h) * (x0 + correction), x0, h

  x = sde.prior_sampling(rng, shape)
  x, _, _ = utils.fixed_steps(step, (x, jnp.zeros_like(x), jnp.ones((), x.dtype)), num_steps, progress)
  x, denoise_nfe = utils.finish(score_fn, sde, x, eps, denoise)
  return x, num_steps + denoise_nfe


def edm_sigma(sigma_max: Array, sigma_min: Array, u: Array, rho: float = 7.0) -> Array:
  """EDM eq. 5 at u = i / n: (sigma_max^{1/rho} + u (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho."""
  return (sigma_max ** (1 / rho) + u * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def edm_heun(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *, num_steps: int = 18, rho: float = 7.0,
             eps: float = 1e-3, denoise: bool = False,
             progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """EDM Heun on dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~ with D the Tweedie data prediction.

  The sigma~ grid runs from sigma~(T) to sigma~(eps) (rho spacing); the time of each sigma~ is
  inverse_lambda(-log sigma~). nfe = 2 num_steps: unlike EDM the last step is Heun too, since it
  ends at sigma~(eps) > 0; `denoise` is EDM's final Euler step to sigma~ = 0.
  """
  sigma_max, sigma_min = jnp.exp(-sde.marginal_lambda(jnp.asarray([sde.T, eps], jnp.float32)))

  def sigma_and_time(u):
    sigma = edm_sigma(sigma_max, sigma_min, u, rho)
    t = utils.time_of_log_snr(sde, -jnp.log(sigma))
    return sigma, jnp.where(u <= 0.0, sde.T, jnp.where(u >= 1.0, eps, t))

  def slope(y, t, sigma):
    alpha, _ = utils.coeffs(sde, t)
    return (y - utils.data_prediction(score_fn, sde, alpha * y, t)) / sigma

  def step(i, y, u, u_next):
    del i
    (sigma_t, t), (sigma_s, s) = sigma_and_time(u), sigma_and_time(u_next)
    d_t = slope(y, t, sigma_t)
    y_euler = y + (sigma_s - sigma_t) * d_t
    return y + (sigma_s - sigma_t) * 0.5 * (d_t + slope(y_euler, s, sigma_s))

  alpha_T, _ = utils.coeffs(sde, jnp.asarray(sde.T))
  y = utils.fixed_steps(step, sde.prior_sampling(rng, shape) / alpha_T, num_steps, progress)
  alpha_eps, _ = utils.coeffs(sde, jnp.asarray(eps))
  x, denoise_nfe = utils.finish(score_fn, sde, alpha_eps * y, eps, denoise)
  return x, 2 * num_steps + denoise_nfe
