"""The Gaussian-mixture oracle: exact scores, log-densities and samples of p_t for any linear SDE.

For p_0 = sum_k w_k N(mu_k, s_k^2 I) and a perturbation kernel N(alpha_t x_0, sigma_t^2 I),
p_t = sum_k w_k N(alpha_t mu_k, (alpha_t^2 s_k^2 + sigma_t^2) I) in closed form (DESIGN.md).
Tests and benchmarks use it wherever the truth is known.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """sum_k weights[k] N(means[k], stds[k]^2 I) over R^D; samples may be reshaped to `event_shape`."""

  weights: np.ndarray  # [K]
  means: np.ndarray  # [K, D]
  stds: np.ndarray  # [K]
  event_shape: tuple[int, ...] | None = None

  def __post_init__(self):
    k, d = np.shape(self.means)
    if np.shape(self.weights) != (k,) or np.shape(self.stds) != (k,):
      raise ValueError(f"weights {np.shape(self.weights)} and stds {np.shape(self.stds)} must have shape ({k},)")
    if not np.isclose(np.sum(self.weights), 1.0):
      raise ValueError(f"weights must sum to one, got {np.sum(self.weights)}")
    if self.event_shape is not None and int(np.prod(self.event_shape)) != d:
      raise ValueError(f"event_shape {self.event_shape} does not hold {d} dimensions")

  @property
  def dim(self) -> int:
    return int(np.shape(self.means)[1])

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.event_shape) if self.event_shape is not None else (self.dim,)

  def _component_params(self, sde: sde_lib.SDE | None, t: Array | None, dtype):
    """Per-sample component means [B, K, D] and variances [B, K] of p_t (p_0 when sde is None)."""
    means = jnp.asarray(self.means, dtype)[None]
    var = jnp.asarray(self.stds, dtype)[None] ** 2
    if sde is None:
      return means, var
    alpha, sigma = sde.marginal_coeffs(t)
    return alpha[:, None, None] * means, alpha[:, None] ** 2 * var + sigma[:, None] ** 2

  def _component_log_probs(self, x: Array, sde, t) -> tuple[Array, Array, Array]:
    flat = x.reshape(x.shape[0], -1)
    means, var = self._component_params(sde, t, flat.dtype)
    diff = flat[:, None, :] - means  # [B, K, D]
    log_norm = -0.5 * self.dim * jnp.log(2 * np.pi * var)
    log_probs = jnp.log(jnp.asarray(self.weights, flat.dtype)) + log_norm - 0.5 * jnp.sum(diff**2, -1) / var
    return log_probs, diff, var

  def log_prob(self, x: Array, sde: sde_lib.SDE | None = None, t: Array | None = None) -> Array:
    """log p_t(x), shape [B]; log p_0(x) when `sde` is None."""
    log_probs, _, _ = self._component_log_probs(x, sde, t)
    return jax.nn.logsumexp(log_probs, axis=-1)

  def score(self, x: Array, sde: sde_lib.SDE | None = None, t: Array | None = None) -> Array:
    """grad_x log p_t(x) = -sum_k r_k(x) (x - alpha_t mu_k) / var_k, like x."""
    log_probs, diff, var = self._component_log_probs(x, sde, t)
    resp = jax.nn.softmax(log_probs, axis=-1)
    score = -jnp.sum((resp / var)[..., None] * diff, axis=1)
    return score.reshape(x.shape)

  def score_at(self, x: Array, alpha: Array, sigma: Array) -> Array:
    """The score of the mixture encoded by N(alpha x_0, sigma^2 I) for per-sample alpha, sigma [B] (no SDE needed)."""
    return self.score(x, _Coefficients(alpha, sigma), jnp.zeros_like(alpha))

  def score_fn(self, sde: sde_lib.SDE):
    """The exact score function (x, t) -> grad log p_t(x) of this mixture diffused by `sde`."""
    return lambda x, t: self.score(x, sde, t)

  def responsibilities(self, x: Array, sde=None, t=None) -> Array:
    """Posterior component probabilities p(k | x), shape [B, K]."""
    log_probs, _, _ = self._component_log_probs(x, sde, t)
    return jax.nn.softmax(log_probs, axis=-1)

  def sample(self, rng: Array, num: int, sde=None, t: Array | None = None, dtype=jnp.float32) -> tuple[Array, Array]:
    """Exact samples of p_t (p_0 when sde is None) and their component labels."""
    comp_rng, noise_rng = jax.random.split(rng)
    labels = jax.random.choice(comp_rng, len(self.weights), (num,), p=jnp.asarray(self.weights))
    x = jnp.asarray(self.means, dtype)[labels] + jnp.asarray(self.stds, dtype)[labels, None] * jax.random.normal(
        noise_rng, (num, self.dim), dtype)
    if sde is not None:
      mean_rng = jax.random.fold_in(noise_rng, 1)
      mean, std = sde.marginal_prob(x, t)
      x = mean + std[:, None] * jax.random.normal(mean_rng, x.shape, dtype)
    return x.reshape((num,) + self.shape), labels


@dataclasses.dataclass(frozen=True)
class _Coefficients:
  """Stands in for an SDE whose marginal coefficients at the asked times are the given (alpha, sigma)."""

  alpha: Array
  sigma: Array

  def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
    del t
    return self.alpha, self.sigma


def two_dim_mixture() -> GaussianMixture:
  """Three well-separated, unequally weighted components in 2-D (the default oracle)."""
  return GaussianMixture(
      weights=np.array([0.5, 0.3, 0.2]),
      means=np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]),
      stds=np.array([0.3, 0.5, 0.4]))


def high_dim_mixture(dim: int = 64, num_components: int = 4, seed: int = 0) -> GaussianMixture:
  """`num_components` components with random means of norm ~3 and widths in [0.2, 0.5] in R^dim."""
  rs = np.random.RandomState(seed)
  means = rs.normal(size=(num_components, dim))
  means *= 3.0 / np.linalg.norm(means, axis=1, keepdims=True)
  weights = rs.dirichlet(np.full(num_components, 5.0))
  return GaussianMixture(weights=weights, means=means, stds=rs.uniform(0.2, 0.5, num_components))


def sliced_wasserstein(rng: Array, x: Array, y: Array, num_projections: int = 256) -> Array:
  """Monte-Carlo sliced 2-Wasserstein distance between equal-size samples x, y of shape [N, ...]."""
  x = x.reshape(x.shape[0], -1)
  y = y.reshape(y.shape[0], -1)
  if x.shape != y.shape:
    raise ValueError(f"sliced_wasserstein needs equal-size samples, got {x.shape} and {y.shape}")
  directions = jax.random.normal(rng, (x.shape[1], num_projections), x.dtype)
  directions /= jnp.linalg.norm(directions, axis=0, keepdims=True)
  proj_x = jnp.sort(x @ directions, axis=0)
  proj_y = jnp.sort(y @ directions, axis=0)
  return jnp.sqrt(jnp.mean((proj_x - proj_y) ** 2))
