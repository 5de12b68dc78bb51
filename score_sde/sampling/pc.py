"""Predictor-corrector sampling of the reverse SDE (THEORY.md §4; Song et al. 2021, Alg. 1-3).

On a decreasing grid T = t_0 > ... > t_n = eps, each step moves x from t_i to t_{i+1} with a
predictor and then refines it at t_{i+1} with `n_steps` corrector steps. Every predictor and
corrector is written with `sde.marginal_coeffs` and `sde.sde` only, so every combination works
for every SDE (VP, sub-VP, VE) and for any number of steps, not only the SDE's own N-step chain.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from score_sde import sde as sde_lib
from score_sde.sampling import utils

Array = jax.Array
ScoreFn = utils.ScoreFn


class Update(NamedTuple):
  """A predictor or corrector step function and the score evaluations one call of it costs.

  Predictors: fn(rng, x, t, s, score_fn, sde) -> x at time s < t.
  Correctors: fn(rng, x, t, alpha, score_fn, sde, snr) -> x refined at time t.
  """
  fn: Callable[..., Array]
  nfe: int


def euler_maruyama(rng, x, t, s, score_fn: ScoreFn, sde: sde_lib.SDE) -> Array:
  """x_s = x_t - [f - g^2 s(x_t, t)] (t - s) + g sqrt(t - s) z: Euler-Maruyama on the reverse SDE."""
  h = t - s
  drift, diffusion = sde.reverse(score_fn).sde(x, utils.batch_times(t, x))
  noise = sde_lib.batch_broadcast(diffusion * jnp.sqrt(h), x) * jax.random.normal(rng, x.shape, x.dtype)
  return x - drift * h + noise


def reverse_diffusion(rng, x, t, s, score_fn: ScoreFn, sde: sde_lib.SDE) -> Array:
  """x_s = x_t - (a - 1) x_t + b^2 s(x_t, t) + b z: the reversed forward kernel x_t = a x_s + b z.

  For VE on the SMLD grid this is the reference's x_{i-1} = x_i + (sigma_i^2 - sigma_{i-1}^2) s
  + sqrt(sigma_i^2 - sigma_{i-1}^2) z; for VP it is x_{i-1} = (2 - sqrt(1 - beta_i)) x_i + beta_i s
  + sqrt(beta_i) z with 1 - beta_i = (alpha_{t_{i-1}} / alpha_{t_i})^2 (equal to the DDPM chain's up to O(1/N^2)).
  """
  a, b = utils.transition_coeffs(sde, t, s)
  score = score_fn(x, utils.batch_times(t, x))
  return (2.0 - a) * x + b**2 * score + b * jax.random.normal(rng, x.shape, x.dtype)


def posterior_step(x: Array, score: Array, t_coeffs, s_coeffs, noise: Array) -> Array:
  """A sample of q(x_s | x_t, x_0 = x0_hat), x0_hat = (x_t + sigma_t^2 s) / alpha_t (Tweedie).

  With x_t = a x_s + b z the Gaussian posterior (THEORY.md §1) has
  mean = (a sigma_s^2 x_t + alpha_s b^2 x0_hat) / sigma_t^2 and variance sigma_s^2 b^2 / sigma_t^2.
  """
  (alpha_t, sigma_t), (alpha_s, sigma_s) = t_coeffs, s_coeffs
  a = alpha_t / alpha_s
  b2 = jnp.maximum(sigma_t**2 - (a * sigma_s) ** 2, 0.0)
  x0 = (x + sigma_t**2 * score) / alpha_t
  mean = (a * sigma_s**2 * x + alpha_s * b2 * x0) / sigma_t**2
  return mean + jnp.sqrt(b2) * sigma_s / sigma_t * noise


def ancestral(rng, x, t, s, score_fn: ScoreFn, sde: sde_lib.SDE) -> Array:
  """Ancestral sampling: DDPM's x_{i-1} = (x_i + beta_i s) / sqrt(1 - beta_i) + sigma_i z for VP, SMLD's for VE."""
  score = score_fn(x, utils.batch_times(t, x))
  noise = jax.random.normal(rng, x.shape, x.dtype)
  return posterior_step(x, score, utils.coeffs(sde, t), utils.coeffs(sde, s), noise)


def _no_predictor(rng, x, t, s, score_fn, sde) -> Array:
  del rng, t, s, score_fn, sde
  return x


PREDICTORS = {
    "euler_maruyama": Update(euler_maruyama, 1),
    "reverse_diffusion": Update(reverse_diffusion, 1),
    "ancestral": Update(ancestral, 1),
    "none": Update(_no_predictor, 0),
}


def _mean_norm(v: Array) -> Array:
  return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def langevin(rng, x, t, alpha, score_fn: ScoreFn, sde: sde_lib.SDE, snr: float) -> Array:
  """x <- x + tau s + sqrt(2 tau) z with tau = 2 alpha (snr ||z|| / ||s||)^2 (Song et al. 2021, Alg. 4).

  As in the reference, the norms are averaged over the batch: a per-sample ratio blows up where
  the score vanishes (at a mode) in low dimension.
  """
  del sde
  score = score_fn(x, utils.batch_times(t, x))
  noise = jax.random.normal(rng, x.shape, x.dtype)
  tau = 2.0 * alpha * (snr * _mean_norm(noise) / _mean_norm(score)) ** 2
  return x + tau * score + jnp.sqrt(2.0 * tau) * noise


def annealed_langevin(rng, x, t, alpha, score_fn: ScoreFn, sde: sde_lib.SDE, snr: float) -> Array:
  """NCSN's x <- x + tau s + sqrt(2 tau) z with tau = 2 alpha (snr sigma_t)^2 (THEORY.md §1)."""
  _, sigma = utils.coeffs(sde, t)
  score = score_fn(x, utils.batch_times(t, x))
  tau = 2.0 * alpha * (snr * sigma) ** 2
  return x + tau * score + jnp.sqrt(2.0 * tau) * jax.random.normal(rng, x.shape, x.dtype)


def _no_corrector(rng, x, t, alpha, score_fn, sde, snr) -> Array:
  del rng, t, alpha, score_fn, sde, snr
  return x


CORRECTORS = {
    "langevin": Update(langevin, 1),
    "ald": Update(annealed_langevin, 1),
    "none": Update(_no_corrector, 0),
}


def _lookup(registry: dict, name: str, kind: str):
  if name not in registry:
    raise ValueError(f"unknown {kind} {name!r}; choose from {sorted(registry)}")
  return registry[name]


def sample(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *, predictor: str = "reverse_diffusion",
           corrector: str = "langevin", snr: float = 0.16, n_steps: int = 1, num_steps: int | None = None,
           eps: float = 1e-3, denoise: bool = False) -> tuple[Array, Array]:
  """Predictor-corrector sampler over num_steps (default sde.N) uniform time steps, one jitted loop.

  The Langevin step-size factor alpha is (alpha_{t_i} / alpha_{t_{i+1}})^2, i.e. the DDPM 1 - beta_i
  on its grid for VP and sub-VP, and 1 for VE. nfe = num_steps (predictor + n_steps corrector
  evaluations) + 1 if `denoise` (the final Tweedie step).
  """
  predict = _lookup(PREDICTORS, predictor, "predictor")
  correct = _lookup(CORRECTORS, corrector, "corrector")
  num_steps = sde.N if num_steps is None else num_steps
  prior_rng, steps_rng = jax.random.split(rng)

  def step(i, x, u, u_next):
    t, s = utils.grid_time(sde, u, eps), utils.grid_time(sde, u_next, eps)
    predictor_rng, corrector_rng = jax.random.split(jax.random.fold_in(steps_rng, i))
    x = predict.fn(predictor_rng, x, t, s, score_fn, sde)
    alpha = (utils.coeffs(sde, t)[0] / utils.coeffs(sde, s)[0]) ** 2
    correct_once = lambda j, x: correct.fn(jax.random.fold_in(corrector_rng, j), x, s, alpha, score_fn, sde, snr)
    return jax.lax.fori_loop(0, n_steps, correct_once, x)

  x = utils.fixed_steps(step, sde.prior_sampling(prior_rng, shape), num_steps)
  x, denoise_nfe = utils.finish(score_fn, sde, x, eps, denoise)
  return x, num_steps * (predict.nfe + n_steps * correct.nfe) + denoise_nfe
