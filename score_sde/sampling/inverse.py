"""Samplers of inverse problems (THEORY.md §6): p(x | observation) with an unconditional score.

The observation (`controllable.Observation`: inpainting masks, the colorization basis) fixes some
coordinates of x; the samplers keep the unconditional score and constrain the state instead: the
known coordinates follow a forward-diffused copy of the observation (Song et al. 2021, App. I).
`sampling.sample_inverse` runs them with the option checks of `sampling.sample`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from score_sde import controllable
from score_sde import sde as sde_lib
from score_sde.controllable import Observation
from score_sde.sampling import ode as ode_lib
from score_sde.sampling import pc as pc_lib
from score_sde.sampling import utils

Array = jax.Array
ScoreFn = sde_lib.ScoreFn


def _diffused_value(rng: Array, sde: sde_lib.SDE, observation: Observation, t: Array) -> Array:
  """A sample of p_0t(. | value): alpha_t value + sigma_t z (the basis is orthogonal, so z is isotropic)."""
  alpha, sigma = utils.coeffs(sde, t)
  return alpha * observation.value + sigma * jax.random.normal(rng, observation.value.shape, observation.value.dtype)


def _finish(score_fn: ScoreFn, sde: sde_lib.SDE, observation: Observation, x: Array, eps: float,
            denoise: bool) -> tuple[Array, int]:
  """The final state: the optional Tweedie step, then the observation itself in the known part.

  The Tweedie step sees the noise-free known part alpha_eps value, so it acts on the unknown part
  given the observation (the 2021 reference denoised an already-noised state and changed nothing).
  """
  if denoise:
    alpha, _ = utils.coeffs(sde, jnp.asarray(eps, x.dtype))
    x = controllable.impose(observation, x, alpha * observation.value)
  x, nfe = utils.finish(score_fn, sde, x, eps, denoise)
  return controllable.impose(observation, x, observation.value), nfe


def initial_state(rng: Array, sde: sde_lib.SDE, observation: Observation, shape) -> Array:
  """Prior noise in the unknown part and the observation diffused to T in the known part.

  (The 2021 reference mixed clean data with prior-scale noise here.)
  """
  prior_rng, known_rng = jax.random.split(rng)
  x = sde.prior_sampling(prior_rng, shape, observation.value.dtype)
  return controllable.impose(observation, x, _diffused_value(known_rng, sde, observation, jnp.asarray(sde.T)))


def pc_inverse(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, observation: Observation, *,
               predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16, n_steps: int = 1,
               num_steps: int | None = None, eps: float = 1e-3, denoise: bool = True,
               progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """Predictor-corrector sampling of p(x | observation) (`sampling.pc.pc_step`).

  After the predictor and after every corrector step the known coordinates are replaced by a
  fresh sample of p_0t(x_k | observation) at the current time. The corrector sees the score of the
  unknown coordinates only (its step size is set by their score).

  This replacement is exact only in the limit of many corrector steps: each corrector step targets
  p_t(x_u | x_k), which tends to the wanted p(x_u | observation) as t -> 0. The predictor alone
  (and `ode_inverse`) is biased when known and unknown coordinates are strongly correlated.
  """
  predict = pc_lib.lookup(predictor, pc_lib.PREDICTORS, "predictor")
  correct = pc_lib.lookup(corrector, pc_lib.CORRECTORS, "corrector")
  num_steps = sde.N if num_steps is None else num_steps
  init_rng, steps_rng = jax.random.split(rng)

  def replace(rng: Array, x: Array, t: Array) -> Array:
    return controllable.impose(observation, x, _diffused_value(rng, sde, observation, t))

  def unknown_score_fn(x: Array, t: Array) -> Array:
    return controllable.impose(observation, score_fn(x, t), jnp.zeros_like(observation.value))

  def step(i, x, u, u_next):
    t, s = utils.grid_time(sde, u, eps), utils.grid_time(sde, u_next, eps)
    return pc_lib.pc_step(predict, correct, score_fn, sde, snr, n_steps, jax.random.fold_in(steps_rng, i), x, t, s,
                          replace, unknown_score_fn)

  x = utils.fixed_steps(step, initial_state(init_rng, sde, observation, shape), num_steps, progress)
  x, denoise_nfe = _finish(score_fn, sde, observation, x, eps, denoise)
  return x, jnp.asarray(num_steps * (predict.nfe + n_steps * correct.nfe) + denoise_nfe)


def ode_inverse(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, observation: Observation, *,
                solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5, num_steps: int | None = None,
                eps: float = 1e-3, denoise: bool = True, max_steps: int = 4096,
                progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """Probability-flow ODE sampling of p(x | observation) (`sampling.ode.integrate`).

  The known coordinates follow alpha_t value + sigma_t z for one fixed z: the probability-flow
  trajectory of the observation itself. The unknown ones follow the probability-flow ODE of the
  joint score evaluated on that path; the known part of the state is held fixed and never read.
  """
  noise = jax.random.normal(rng, shape, observation.value.dtype)
  flow = sde.reverse(score_fn, probability_flow=True)
  mask, basis = observation.mask, observation.basis

  def known_path(t: Array) -> Array:
    alpha, sigma = utils.coeffs(sde, t)
    return alpha * observation.value + sigma * noise

  def vector_field(t, x, args):
    del args
    drift = flow.sde(controllable.impose(observation, x, known_path(t)), utils.batch_times(t, x))[0]
    return controllable.from_basis((1.0 - mask) * controllable.to_basis(drift, basis), basis)

  x_init = controllable.impose(observation, sde.prior_std * controllable.from_basis(noise, basis),
                               known_path(jnp.asarray(sde.T)))
  x, nfe = ode_lib.integrate(vector_field, x_init, sde.T, eps, solver, rtol, atol, num_steps, max_steps, progress,
                             (eps - sde.T) / 100)
  x, denoise_nfe = _finish(score_fn, sde, observation, x, eps, denoise)
  return x, nfe + denoise_nfe


SAMPLERS = {"pc": pc_inverse, "ode": ode_inverse}
