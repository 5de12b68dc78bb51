"""Controllable generation (THEORY.md §6): conditional score functions, and observations of inverse problems.

Guidance changes the score and leaves the sampler alone. By Bayes,
grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x), so every conditional score below is a
`score_fn(x, t)` to pass to `sampling.sample` like any other:
- `conditional_score_fn`: s + w grad log r(x, t) for a differentiable log r ("multiplying by
  another prior", Sohl-Dickstein et al. 2015); classifier guidance is r = p_t(y | x).
- `classifier_free_score_fn`: s_uncond + w (s_cond - s_uncond) (Ho & Salimans 2022).

Inverse problems (inpainting, colorization) observe some coordinates of x: `inpainting` and
`colorization` build the `Observation` that `sampling.sample_inverse` conditions on (its samplers
live in `score_sde/sampling/inverse.py`). Colorization is inpainting in an orthogonal channel basis
whose first axis is the gray direction. This module imports no sampler.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import models
from score_sde import sde as sde_lib

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
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


def check_observation(observation: Observation, shape) -> None:
  """Raises a ValueError unless `observation` observes samples of shape `shape`."""
  shape = tuple(shape)
  if not isinstance(observation, Observation):
    raise TypeError(f"observation must be a controllable.Observation, got {type(observation).__name__}")
  if observation.value.shape != shape:
    raise ValueError(f"observation value has shape {observation.value.shape}, the samples {shape}")
  try:
    jnp.broadcast_shapes(observation.mask.shape, shape)
  except ValueError as e:
    raise ValueError(f"observation mask of shape {observation.mask.shape} does not broadcast to {shape}") from e
  if observation.basis is not None and observation.basis.shape != (shape[-1], shape[-1]):
    raise ValueError(f"basis {observation.basis.shape} does not act on the last axis of {shape}")
