"""Controllable generation (THEORY.md §6): conditional scores for any sampler, and inverse problems.

Guidance changes the score and leaves the sampler alone. By Bayes,
grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x), so every conditional score below is a
`score_fn(x, t)` that any sampler of `score_sde.sampling` accepts:
- `conditional_score_fn`: s + w grad log r(x, t) for a differentiable log r ("multiplying by
  another prior", Sohl-Dickstein et al. 2015); classifier guidance is r = p_t(y | x).
- `classifier_free_score_fn`: s_uncond + w (s_cond - s_uncond) (Ho & Salimans 2022).

Inverse problems (inpainting, colorization) keep an unconditional score and constrain the state
instead: after every step the known coordinates are replaced by a forward-diffused copy of the
observation (Song et al. 2021, App. I). Colorization is inpainting in an orthogonal channel basis
whose first axis is the gray direction. `sample_conditional` runs either kind.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import models, sampling
from score_sde import sde as sde_lib
from score_sde.sampling import ode, pc
from score_sde.sampling import utils as sampling_utils

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
LogDensityFn = Callable[[Array, Array], Array]  # (x [B, ...], t [B]) -> [B]


# ------------------------------------------------------------------------------------------ guidance
@dataclasses.dataclass(frozen=True)
class ConditionalScore:
  """s(x, t) + scale grad_x log r(x, t): the score of p_t(x) r(x, t)^scale (up to normalisation).

  `log_r_fn` returns one value per example, so the gradient of its batch sum is per example.
  Equal fields compare equal, so samplers jitted on the score function compile it once.
  """

  score_fn: ScoreFn
  log_r_fn: LogDensityFn
  scale: float = 1.0

  def __call__(self, x: Array, t: Array) -> Array:
    grad_log_r = jax.grad(lambda x: jnp.sum(self.log_r_fn(x, t)))(x)
    return self.score_fn(x, t) + self.scale * grad_log_r


def conditional_score_fn(score_fn: ScoreFn, log_r_fn: LogDensityFn, scale: float = 1.0) -> ScoreFn:
  """The score of p_t(x) r(x, t)^scale ("multiplying by another prior", Sohl-Dickstein et al. 2015)."""
  return ConditionalScore(score_fn, log_r_fn, float(scale))


def class_log_prob_fn(log_probs_fn: Callable[[Array, Array], Array], labels: Array) -> LogDensityFn:
  """log p_t(y_b | x_b) [B] picked out of the log class probabilities [B, K] of a classifier."""
  labels = jnp.asarray(labels, jnp.int32)
  return lambda x, t: jnp.take_along_axis(log_probs_fn(x, t), labels[:, None], axis=-1)[:, 0]


def classifier_guided_score_fn(score_fn: ScoreFn, log_probs_fn: Callable[[Array, Array], Array], labels: Array,
                               scale: float = 1.0) -> ScoreFn:
  """Classifier guidance s(x, t) + scale grad_x log p_t(y | x); scale 1 is the exact conditional score."""
  return conditional_score_fn(score_fn, class_log_prob_fn(log_probs_fn, labels), scale)


def classifier_free_score_fn(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float) -> ScoreFn:
  """s_uncond + w (s_cond - s_uncond): unconditional at w = 0, conditional at w = 1, sharper for w > 1."""
  return lambda x, t: (1.0 - scale) * uncond_score_fn(x, t) + scale * cond_score_fn(x, t)


def classifier_free_model_score_fn(sde: sde_lib.SDE, model: nn.Module, params, labels: Array, scale: float, *,
                                   continuous: bool = True) -> ScoreFn:
  """Classifier-free guidance of a class-conditional network trained with label dropout.

  The conditional (labels [B]) and unconditional (null label `model.num_classes`) scores come
  from one network call on the doubled batch.
  """
  num_classes = getattr(model, "num_classes", 0)
  if not num_classes:
    raise ValueError("classifier-free guidance needs a class-conditional model (model.num_classes > 0)")
  labels = jnp.asarray(labels, jnp.int32)
  both_labels = jnp.concatenate([labels, jnp.full_like(labels, num_classes)])
  both_score_fn = models.get_score_fn(sde, model, params, continuous=continuous, y=both_labels)

  def score_fn(x: Array, t: Array) -> Array:
    if x.shape[0] != labels.shape[0]:
      raise ValueError(f"{labels.shape[0]} class labels for a batch of {x.shape[0]}")
    cond, uncond = jnp.split(both_score_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t])), 2)
    return uncond + scale * (cond - uncond)

  return score_fn


def classifier_log_probs_fn(classifier: nn.Module, params) -> Callable[[Array, Array], Array]:
  """(x, t) -> log p_t(k | x) [B, K] of a time-dependent classifier (models/classifier.py)."""
  return lambda x, t: jax.nn.log_softmax(classifier.apply({"params": params}, x, t, train=False), axis=-1)


def noisy_classifier_loss(rng: Array, logits_fn: Callable[[Array, Array], Array], sde: sde_lib.SDE, x: Array,
                          labels: Array, eps: float = 1e-5) -> Array:
  """Cross-entropy [B] of a time-dependent classifier on x_t ~ p_0t(. | x), t ~ U[eps, T].

  Its minimiser is log p_t(y | x_t) for every t, the quantity classifier guidance differentiates.
  """
  t_rng, z_rng = jax.random.split(rng)
  t = jax.random.uniform(t_rng, (x.shape[0],), x.dtype, minval=eps, maxval=sde.T)
  mean, std = sde.marginal_prob(x, t)
  x_t = mean + sde_lib.batch_broadcast(std, x) * jax.random.normal(z_rng, x.shape, x.dtype)
  log_probs = jax.nn.log_softmax(logits_fn(x_t, t), axis=-1)
  return -jnp.take_along_axis(log_probs, jnp.asarray(labels, jnp.int32)[:, None], axis=-1)[:, 0]


class Guidance(NamedTuple):
  """Sample p_t(x) r(x, t)^scale: `log_r_fn` (x, t) -> [B], e.g. `class_log_prob_fn(...)`."""

  log_r_fn: LogDensityFn
  scale: float = 1.0


# --------------------------------------------------------------------------------- inverse problems
# Orthogonal colour basis (columns): the gray direction (1, 1, 1) / sqrt 3 and two chroma directions.
COLOR_BASIS = np.stack([np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0), np.array([-2.0, 1.0, 1.0]) / np.sqrt(6.0),
                        np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)], axis=1)


class Observation(NamedTuple):
  """Known coordinates of x: mask * (x @ basis) = mask * value, `basis` acting on the last axis.

  value: like x, in basis coordinates (ignored where mask is 0). mask: broadcastable to x, 1 where
  known. basis: an orthogonal [C, C] matrix, or None for the pixel basis (inpainting).
  """

  value: Array
  mask: Array
  basis: Array | None = None


def inpainting(image: Array, mask: Array) -> Observation:
  """Observe `image` where `mask` (broadcastable to it) is 1."""
  return Observation(jnp.asarray(image), jnp.asarray(mask, jnp.asarray(image).dtype))


def colorization(gray: Array) -> Observation:
  """Observe the gray level (mean of the 3 channels) of each pixel; `gray` is [..., 1].

  In COLOR_BASIS the first coordinate of a pixel is sum(rgb) / sqrt 3 = sqrt 3 gray; the two chroma
  coordinates are unknown.
  """
  gray = jnp.asarray(gray)
  if gray.shape[-1] != 1:
    raise ValueError(f"colorization takes gray images with one channel [..., 1], got shape {gray.shape}")
  value = jnp.concatenate([np.sqrt(3.0) * gray, jnp.zeros_like(gray), jnp.zeros_like(gray)], axis=-1)
  mask = jnp.asarray([1.0, 0.0, 0.0], gray.dtype)
  return Observation(value, mask, jnp.asarray(COLOR_BASIS, gray.dtype))


def to_basis(x: Array, basis: Array | None) -> Array:
  return x if basis is None else x @ basis


def from_basis(x: Array, basis: Array | None) -> Array:
  return x if basis is None else x @ basis.T


def impose(observation: Observation, x: Array, known: Array) -> Array:
  """x with its observed coordinates set to `known` (in basis coordinates)."""
  mask, basis = observation.mask, observation.basis
  return from_basis(mask * known + (1.0 - mask) * to_basis(x, basis), basis)


def _diffused_value(rng: Array, sde: sde_lib.SDE, observation: Observation, t: Array) -> Array:
  """A sample of p_0t(. | value): alpha_t value + sigma_t z (the basis is orthogonal, so z is isotropic)."""
  alpha, sigma = sampling_utils.coeffs(sde, t)
  return alpha * observation.value + sigma * jax.random.normal(rng, observation.value.shape, observation.value.dtype)


def _finish(score_fn: ScoreFn, sde: sde_lib.SDE, observation: Observation, x: Array, eps: float,
            denoise: bool) -> tuple[Array, int]:
  """The final state: the optional Tweedie step, then the observation itself in the known part.

  The Tweedie step sees the noise-free known part alpha_eps value, so it acts on the unknown part
  given the observation (the 2021 reference denoised an already-noised state and changed nothing).
  """
  nfe = 0
  if denoise:
    alpha, _ = sampling_utils.coeffs(sde, jnp.asarray(eps, x.dtype))
    x = impose(observation, x, alpha * observation.value)
    x = sampling_utils.data_prediction(score_fn, sde, x, jnp.asarray(eps, x.dtype))
    nfe = 1
  return impose(observation, x, observation.value), nfe


def _initial_state(rng: Array, sde: sde_lib.SDE, observation: Observation, shape) -> Array:
  """Prior noise in the unknown part and the observation diffused to T in the known part.

  (The 2021 reference mixed clean data with prior-scale noise here.)
  """
  prior_rng, known_rng = jax.random.split(rng)
  x = sde.prior_sampling(prior_rng, shape, observation.value.dtype)
  return impose(observation, x, _diffused_value(known_rng, sde, observation, jnp.asarray(sde.T)))


def pc_inverse(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, observation: Observation, *,
               predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
               n_steps: int = 1, num_steps: int | None = None, eps: float = 1e-3,
               denoise: bool = True) -> tuple[Array, Array]:
  """Predictor-corrector sampling of p(x | observation) with an unconditional score.

  After the predictor and after every corrector step the known coordinates are replaced by a
  fresh sample of p_0t(x_k | observation) at the current time. Predictors and correctors are
  those of `sampling.pc`; the corrector sees the score of the unknown coordinates only.

  This replacement is exact only in the limit of many corrector steps: each corrector step targets
  p_t(x_u | x_k), which tends to the wanted p(x_u | observation) as t -> 0. The predictor alone
  (and `ode_inverse`) is biased when known and unknown coordinates are strongly correlated.
  """
  if predictor not in pc.PREDICTORS:
    raise ValueError(f"unknown predictor {predictor!r}; choose from {sorted(pc.PREDICTORS)}")
  if corrector not in pc.CORRECTORS:
    raise ValueError(f"unknown corrector {corrector!r}; choose from {sorted(pc.CORRECTORS)}")
  predict, correct = pc.PREDICTORS[predictor], pc.CORRECTORS[corrector]
  num_steps = sde.N if num_steps is None else num_steps
  init_rng, steps_rng = jax.random.split(rng)

  def replace(rng: Array, x: Array, t: Array) -> Array:
    return impose(observation, x, _diffused_value(rng, sde, observation, t))

  def unknown_score_fn(x: Array, t: Array) -> Array:
    # The corrector moves the unknown part only, so its step size is set by the unknown part's score.
    return impose(observation, score_fn(x, t), jnp.zeros_like(observation.value))

  def step(i, x, u, u_next):
    t, s = sampling_utils.grid_time(sde, u, eps), sampling_utils.grid_time(sde, u_next, eps)
    predictor_rng, known_rng, corrector_rng = jax.random.split(jax.random.fold_in(steps_rng, i), 3)
    x = replace(known_rng, predict.fn(predictor_rng, x, t, s, score_fn, sde), s)
    alpha = (sampling_utils.coeffs(sde, t)[0] / sampling_utils.coeffs(sde, s)[0]) ** 2

    def correct_once(j, x):
      step_rng, known_rng = jax.random.split(jax.random.fold_in(corrector_rng, j))
      return replace(known_rng, correct.fn(step_rng, x, s, alpha, unknown_score_fn, sde, snr), s)

    return jax.lax.fori_loop(0, n_steps, correct_once, x)

  x = sampling_utils.fixed_steps(step, _initial_state(init_rng, sde, observation, shape), num_steps)
  x, denoise_nfe = _finish(score_fn, sde, observation, x, eps, denoise)
  return x, jnp.asarray(num_steps * (predict.nfe + n_steps * correct.nfe) + denoise_nfe)


def ode_inverse(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, observation: Observation, *,
                solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5, num_steps: int | None = None,
                eps: float = 1e-3, denoise: bool = True, max_steps: int = 4096) -> tuple[Array, Array]:
  """Probability-flow ODE sampling of p(x | observation) with an unconditional score.

  The known coordinates follow alpha_t value + sigma_t z for one fixed z: the probability-flow
  trajectory of the observation itself. The unknown ones follow the probability-flow ODE of the
  joint score evaluated on that path; the known part of the state is held fixed and never read.
  """
  noise = jax.random.normal(rng, shape, observation.value.dtype)
  flow = sde.reverse(score_fn, probability_flow=True)
  mask, basis = observation.mask, observation.basis

  def known_path(t: Array) -> Array:
    alpha, sigma = sampling_utils.coeffs(sde, t)
    return alpha * observation.value + sigma * noise

  def vector_field(t, x, args):
    del args
    drift = flow.sde(impose(observation, x, known_path(t)), sampling_utils.batch_times(t, x))[0]
    return from_basis((1.0 - mask) * to_basis(drift, basis), basis)

  x_init = impose(observation, sde.prior_std * from_basis(noise, basis), known_path(jnp.asarray(sde.T)))
  x, nfe = ode.integrate(vector_field, x_init, sde.T, eps, solver, rtol, atol, num_steps, max_steps)
  x, denoise_nfe = _finish(score_fn, sde, observation, x, eps, denoise)
  return x, nfe + denoise_nfe


INVERSE_SAMPLERS = {"pc": pc_inverse, "ode": ode_inverse}


def inverse_options_of(method: str) -> dict:
  """The options the inverse-problem sampler `method` accepts and their defaults."""
  if method not in INVERSE_SAMPLERS:
    raise ValueError(f"method {method!r} cannot solve inverse problems; choose from {sorted(INVERSE_SAMPLERS)}")
  parameters = inspect.signature(INVERSE_SAMPLERS[method]).parameters.values()
  return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_options(method: str, options: dict) -> None:
  valid = inverse_options_of(method)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid options: {sorted(valid)}")


@functools.partial(jax.jit, static_argnames=("score_fn", "sde", "shape", "method", "options"))
def _run_inverse(rng: Array, observation: Observation, *, score_fn, sde, shape, method, options):
  return INVERSE_SAMPLERS[method](rng, score_fn, sde, shape, observation, **dict(options))


def _sample_inverse(rng, score_fn, sde, shape, observation: Observation, method: str, **options):
  _check_options(method, options)
  if observation.value.shape != tuple(shape):
    raise ValueError(f"observation value has shape {observation.value.shape}, the samples {tuple(shape)}")
  jnp.broadcast_shapes(observation.mask.shape, tuple(shape))  # a clear error if the mask does not fit
  if observation.basis is not None and observation.basis.shape != (shape[-1], shape[-1]):
    raise ValueError(f"basis {observation.basis.shape} does not act on the last axis of {tuple(shape)}")
  return _run_inverse(rng, observation, score_fn=score_fn, sde=sde, shape=tuple(shape), method=method,
                      options=tuple(sorted(options.items())))


def _sample_guided(rng, score_fn, sde, shape, guidance: Guidance, method: str, **options):
  guided_score_fn = conditional_score_fn(score_fn, guidance.log_r_fn, guidance.scale)
  return sampling.sample(rng, guided_score_fn, sde, shape, method=method, **options)


CONDITIONS = {Observation: _sample_inverse, Guidance: _sample_guided}


def sample_conditional(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, condition: Observation | Guidance,
                       method: str = "pc", **options) -> tuple[Array, Array]:
  """Samples of p(x | condition) and the score evaluations used.

  condition: an `Observation` (`inpainting(...)`, `colorization(...)`; methods "pc" and "ode" with
  the options of `pc_inverse` / `ode_inverse`), or a `Guidance` (any method of `sampling.sample`,
  which compiles once per score function: reuse one Guidance across batches).
  """
  if type(condition) not in CONDITIONS:
    raise TypeError(f"condition must be one of {[c.__name__ for c in CONDITIONS]}, got {type(condition).__name__}")
  return CONDITIONS[type(condition)](rng, score_fn, sde, shape, condition, method, **options)
