"""Predictor-corrector sampling of the reverse SDE (THEORY.md §4; Song et al. 2021, Alg. 1-3).

On a decreasing grid T = t_0 > ... > t_n = eps, each step moves x from t_i to t_{i+1} with a
predictor and then refines it at t_{i+1} with `n_steps` corrector steps. Every predictor and
corrector is written with the SDE's own tested pieces (`ReverseSDE.sde`, `ReverseSDE.discretize`,
`SDE.transition`) and `discrete.gaussian_posterior` / `discrete.tweedie_x0`, so every combination
works for every SDE (VP, sub-VP, VE) and for any number of steps, not only the SDE's own N-step chain.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from score_sde import discrete
from score_sde import sde as sde_lib
from score_sde.sampling import utils

Array = jax.Array
ScoreFn = sde_lib.ScoreFn


class Update(NamedTuple):
  """A predictor or corrector step function and the score evaluations one call of it costs.

  Predictors: fn(rng, x, t, s, score_fn, sde) -> x at time s < t.
  Correctors: fn(rng, x, t, alpha, score_fn, sde, snr) -> x refined at time t.
  """
  fn: Callable[..., Array]
  nfe: int


def euler_maruyama(rng, x, t, s, score_fn: ScoreFn, sde: sde_lib.SDE) -> Array:
  """x_s = x_t - [f - g^2 s(x_t, t)] (t - s) + g sqrt(t - s) z: Euler-Maruyama on `sde.reverse(score_fn).sde`."""
  h = t - s
  drift, diffusion = sde.reverse(score_fn).sde(x, utils.batch_times(t, x))
  noise = sde_lib.batch_broadcast(diffusion * jnp.sqrt(h), x) * jax.random.normal(rng, x.shape, x.dtype)
  return x - drift * h + noise


def reverse_diffusion(rng, x, t, s, score_fn: ScoreFn, sde: sde_lib.SDE) -> Array:
  """x_s = x_t - rev_f + G z with (rev_f, G) = `sde.reverse(score_fn).discretize(x_t, t, s)`.

  That is the reversed exact forward step x_t = a x_s + b z: x_s = (2 - a) x_t + b^2 s(x_t, t) + b z.
  For VE on the SMLD grid it is the reference's x_{i-1} = x_i + (sigma_i^2 - sigma_{i-1}^2) s
  + sqrt(sigma_i^2 - sigma_{i-1}^2) z; for VP it is x_{i-1} = (2 - sqrt(1 - beta_i)) x_i + beta_i s
  + sqrt(beta_i) z with 1 - beta_i = (alpha_{t_{i-1}} / alpha_{t_i})^2 (equal to the DDPM chain's up to O(1/N^2)).
  """
  rev_f, G = sde.reverse(score_fn).discretize(x, utils.batch_times(t, x), utils.batch_times(s, x))
  return x - rev_f + sde_lib.batch_broadcast(G, x) * jax.random.normal(rng, x.shape, x.dtype)


def posterior_step(x: Array, score: Array, t_coeffs, s_coeffs, noise: Array) -> Array:
  """A sample of q(x_s | x_t, x_0 = x0_hat) with Tweedie's x0_hat = (x_t + sigma_t^2 s) / alpha_t.

  t_coeffs, s_coeffs: (alpha, sigma) at t and s; the forward step x_t = a x_s + b z between them
  (`sde_lib.kernel_coeffs`) and `discrete.gaussian_posterior` give the Gaussian posterior.
  """
  (alpha_t, sigma_t), (alpha_s, sigma_s) = t_coeffs, s_coeffs
  a, b = sde_lib.kernel_coeffs(t_coeffs, s_coeffs)
  x0 = discrete.tweedie_x0(x, score, alpha_t, sigma_t)
  mean, var = discrete.gaussian_posterior(x, x0, a, b**2, alpha_s, sigma_s**2)
  return mean + jnp.sqrt(var) * noise


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


def _langevin_move(x: Array, score: Array, noise: Array, tau: Array) -> Array:
  """x + tau s + sqrt(2 tau) z, the Langevin step of both correctors."""
  return x + tau * score + jnp.sqrt(2.0 * tau) * noise


def langevin(rng, x, t, alpha, score_fn: ScoreFn, sde: sde_lib.SDE, snr: float) -> Array:
  """x <- x + tau s + sqrt(2 tau) z with tau = 2 alpha (snr ||z|| / ||s||)^2 (Song et al. 2021, Alg. 4).

  As in the reference, the norms are averaged over the batch: a per-sample ratio blows up where
  the score vanishes (at a mode) in low dimension.
  """
  del sde
  score = score_fn(x, utils.batch_times(t, x))
  noise = jax.random.normal(rng, x.shape, x.dtype)
  tau = 2.0 * alpha * (snr * _mean_norm(noise) / _mean_norm(score)) ** 2
  return _langevin_move(x, score, noise, tau)


def annealed_langevin(rng, x, t, alpha, score_fn: ScoreFn, sde: sde_lib.SDE, snr: float) -> Array:
  """Annealed Langevin dynamics (Song & Ermon 2019): x <- x + tau s + sqrt(2 tau) z, tau = 2 alpha (snr sigma_t)^2.

  The step size follows the noise level sigma_t (`sde.marginal_coeffs`), not the score norm: it is
  score_sde's AnnealedLangevinDynamics (step_size = (snr std)^2 2 alpha), and NCSN's
  tau = epsilon sigma_i^2 / sigma_L^2 (THEORY.md §1) with epsilon = 2 snr^2 sigma_L^2 for VE (alpha = 1).
  alpha is 1 for VE and the DDPM 1 - beta_i of the step for VP and sub-VP (see `sample`).
  """
  _, sigma = utils.coeffs(sde, t)
  score = score_fn(x, utils.batch_times(t, x))
  tau = 2.0 * alpha * (snr * sigma) ** 2
  return _langevin_move(x, score, jax.random.normal(rng, x.shape, x.dtype), tau)


def _no_corrector(rng, x, t, alpha, score_fn, sde, snr) -> Array:
  del rng, t, alpha, score_fn, sde, snr
  return x


CORRECTORS = {
    "langevin": Update(langevin, 1),
    "ald": Update(annealed_langevin, 1),
    "none": Update(_no_corrector, 0),
}


def lookup(name: str, registry: dict, kind: str) -> Update:
  """registry[name], or a ValueError naming the valid choices."""
  if name not in registry:
    raise ValueError(f"unknown {kind} {name!r}; choose from {sorted(registry)}")
  return registry[name]


def corrector_alpha(sde: sde_lib.SDE, t: Array, s: Array) -> Array:
  """Langevin step-size factor a^2 of the step t -> s (`SDE.transition`): the DDPM 1 - beta_i on its
  grid for VP and sub-VP (the reference's `sde.alphas[i]`, up to O(1/N^2)), exactly 1 for VE."""
  a, _ = utils.transition(sde, t, s)
  return a**2


def pc_step(predict: Update, correct: Update, score_fn: ScoreFn, sde: sde_lib.SDE, snr: float, n_steps: int,
            rng: Array, x: Array, t: Array, s: Array, constrain: Callable[[Array, Array, Array], Array],
            corrector_score_fn: ScoreFn | None = None) -> Array:
  """One predictor step t -> s, then n_steps corrector steps at s; `constrain(rng, x, s)` after each.

  corrector_score_fn (default score_fn) is the score the corrector sees.
  """
  predictor_rng, known_rng, corrector_rng = jax.random.split(rng, 3)
  x = constrain(known_rng, predict.fn(predictor_rng, x, t, s, score_fn, sde), s)
  alpha = corrector_alpha(sde, t, s)
  corrector_score_fn = corrector_score_fn or score_fn

  def correct_once(j, x):
    step_rng, known_rng = jax.random.split(jax.random.fold_in(corrector_rng, j))
    return constrain(known_rng, correct.fn(step_rng, x, s, alpha, corrector_score_fn, sde, snr), s)

  return jax.lax.fori_loop(0, n_steps, correct_once, x)


def _unconstrained(rng: Array, x: Array, t: Array) -> Array:
  del rng, t
  return x


def sample(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *, predictor: str = "reverse_diffusion",
           corrector: str = "langevin", snr: float = 0.16, n_steps: int = 1, num_steps: int | None = None,
           eps: float = 1e-3, denoise: bool = False, progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """Predictor-corrector sampler over num_steps (default sde.N) uniform time steps, one jitted loop.

  The corrector's step-size factor alpha is `corrector_alpha`. nfe = num_steps (predictor + n_steps
  corrector evaluations) + 1 if `denoise` (the final Tweedie step). progress(i, num_steps) after each step.
  """
  predict = lookup(predictor, PREDICTORS, "predictor")
  correct = lookup(corrector, CORRECTORS, "corrector")
  num_steps = sde.N if num_steps is None else num_steps
  prior_rng, steps_rng = jax.random.split(rng)

  def step(i, x, u, u_next):
    t, s = utils.grid_time(sde, u, eps), utils.grid_time(sde, u_next, eps)
    return pc_step(predict, correct, score_fn, sde, snr, n_steps, jax.random.fold_in(steps_rng, i), x, t, s,
                   _unconstrained)

  x = utils.fixed_steps(step, sde.prior_sampling(prior_rng, shape), num_steps, progress)
  x, denoise_nfe = utils.finish(score_fn, sde, x, eps, denoise)
  return x, num_steps * (predict.nfe + n_steps * correct.nfe) + denoise_nfe
