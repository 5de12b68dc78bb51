"""Discrete diffusion chains (THEORY.md §1): DDPM posterior, ELBO terms, parametrizations, SNR; SMLD sigmas.

`gaussian_posterior` and `tweedie_x0` are the one implementation of the posterior q(x_s | x_t, x_0)
and of Tweedie's formula; the samplers of `score_sde.sampling` call them with the coefficients of
any linear SDE, `DDPMChain` with those of its chain.

DDPM time is an integer t in {0, ..., N}: x_0 is the data, x_N the last latent, and the forward
kernel q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I) with alpha_t = 1 - beta_t. Array
arguments `t` are integer arrays of shape [B]; per-sample scalars come back with shape [B].
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib

Array = jax.Array


sum_except_batch = sde_lib.sum_except_batch
smld_sigmas = sde_lib.smld_sigmas  # ascending; NCSN's label j is index N - 1 - j


def tweedie_x0(x_t: Array, score: Array, alpha: Array, sigma: Array) -> Array:
  """Tweedie: E[x_0 | x_t] = (x_t + sigma_t^2 grad log p_t(x_t)) / alpha_t for x_t = alpha_t x_0 + sigma_t z.

  alpha, sigma broadcast against x_t (scalars, or per-sample after `batch_broadcast`).
  """
  return (x_t + sigma**2 * score) / alpha


def gaussian_posterior(x_t: Array, x0: Array, a: Array, b2: Array, alpha_s: Array,
                       var_s: Array) -> tuple[Array, Array]:
  """q(x_s | x_t, x_0) = N(mean, var I) for x_s = alpha_s x_0 + sigma_s z and the step x_t = a x_s + b z':

  with sigma_t^2 = a^2 var_s + b^2, mean = (a var_s x_t + alpha_s b^2 x_0) / sigma_t^2 and
  var = var_s b^2 / sigma_t^2 (THEORY.md §1; the DDPM chain has a = sqrt(alpha_t), b^2 = beta_t,
  alpha_s^2 = abar_{t-1}, var_s = 1 - abar_{t-1}). Coefficients broadcast against x_t.
  """
  var_t = a**2 * var_s + b2
  return (a * var_s * x_t + alpha_s * b2 * x0) / var_t, var_s * b2 / var_t


def gaussian_kl(mean1: Array, var1: Array, mean2: Array, var2: Array) -> Array:
  """KL(N(mean1, var1 I) || N(mean2, var2 I)) summed over all but the batch axis.

  Per dimension: 0.5 (log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1). var* broadcast.
  """
  kl = 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)
  return sum_except_batch(jnp.broadcast_to(kl, jnp.broadcast_shapes(kl.shape, mean1.shape)))


def gaussian_log_prob(x: Array, mean: Array, var: Array) -> Array:
  """log N(x; mean, var I) summed over all but the batch axis."""
  return sum_except_batch(-0.5 * (jnp.log(2 * np.pi * var) + (x - mean) ** 2 / var))


@dataclasses.dataclass(frozen=True)
class DDPMChain:
  """The DDPM forward chain defined by betas (beta_1, ..., beta_N)."""

  betas: np.ndarray

  @classmethod
  def from_sde(cls, sde: sde_lib.VPSDE) -> "DDPMChain":
    """The chain that `VPSDE.discretize` simulates (Song et al. 2021, Appendix B)."""
    return cls(np.asarray(sde.discrete_betas))

  @classmethod
  def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> "DDPMChain":
    """beta_t = beta_min / N + (t - 1)(beta_max - beta_min) / (N (N - 1)); Ho et al.'s 1e-4..0.02 for N=1000."""
    return cls.from_sde(sde_lib.VPSDE(beta_min, beta_max, N))

  @property
  def N(self) -> int:
    return len(self.betas)

  @property
  def log_alphas_cumprod(self) -> np.ndarray:
    """log abar_t for t = 0..N in float64 (abar_0 = 1: x_0 is the data itself)."""
    return np.concatenate([[0.0], np.cumsum(np.log1p(-np.asarray(self.betas, np.float64)))])

  @property
  def alphas_cumprod(self) -> np.ndarray:
    return np.exp(self.log_alphas_cumprod)

  @property
  def one_minus_alphas_cumprod(self) -> np.ndarray:
    """1 - abar_t computed as -expm1(log abar_t): exact even where abar_t rounds to 1 in float32."""
    return -np.expm1(self.log_alphas_cumprod)

  def _at(self, table: np.ndarray, t: Array, dtype) -> Array:
    return jnp.asarray(table, dtype)[t]

  def beta(self, t: Array, dtype=jnp.float32) -> Array:
    """beta_t for t in 1..N."""
    return self._at(self.betas, t - 1, dtype)

  def marginal_coeffs(self, t: Array, dtype=jnp.float32) -> tuple[Array, Array]:
    """(sqrt(abar_t), sqrt(1 - abar_t)): q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

    Same contract as `SDE.marginal_coeffs`, so the mixture oracle accepts a chain in place of an SDE.
    """
    return (jnp.sqrt(self._at(self.alphas_cumprod, t, dtype)),
            jnp.sqrt(self._at(self.one_minus_alphas_cumprod, t, dtype)))

  def snr(self, t: Array, dtype=jnp.float32) -> Array:
    """SNR(t) = abar_t / (1 - abar_t) (infinite at t = 0)."""
    with np.errstate(divide="ignore"):
      table = self.alphas_cumprod / self.one_minus_alphas_cumprod
    return self._at(table, t, dtype)

  def q_sample(self, rng: Array, x0: Array, t: Array) -> tuple[Array, Array]:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and the noise eps used."""
    noise = jax.random.normal(rng, x0.shape, x0.dtype)
    mean_coeff, std = self.marginal_coeffs(t, x0.dtype)
    return sde_lib.batch_broadcast(mean_coeff, x0) * x0 + sde_lib.batch_broadcast(std, x0) * noise, noise

  def posterior_mean_variance(self, x_t: Array, x0: Array, t: Array) -> tuple[Array, Array]:
    """q(x_{t-1} | x_t, x_0) = N(mu_q, sigma_q^2 I), t in 1..N:

    mu_q = [sqrt(alpha_t)(1 - abar_{t-1}) x_t + sqrt(abar_{t-1}) beta_t x_0] / (1 - abar_t),
    sigma_q^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t).
    """
    beta = self.beta(t, x_t.dtype)
    sqrt_abar_prev, std_prev = self.marginal_coeffs(t - 1, x_t.dtype)
    coeffs = (jnp.sqrt(1.0 - beta), beta, sqrt_abar_prev, std_prev**2)
    mean, var = gaussian_posterior(x_t, x0, *(sde_lib.batch_broadcast(c, x_t) for c in coeffs))
    return mean, var.reshape(var.shape[:1] + (-1,))[:, 0]

  # Parametrizations: x0-prediction, noise prediction and score, exactly interconvertible.
  def eps_from_x0(self, x_t: Array, x0: Array, t: Array) -> Array:
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
    mean_coeff, std = self.marginal_coeffs(t, x_t.dtype)
    return (x_t - sde_lib.batch_broadcast(mean_coeff, x_t) * x0) / sde_lib.batch_broadcast(std, x_t)

  def x0_from_eps(self, x_t: Array, eps: Array, t: Array) -> Array:
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return self.x0_from_score(x_t, self.score_from_eps(eps, t), t)

  def score_from_eps(self, eps: Array, t: Array) -> Array:
    """grad log q(x_t) = -eps / sqrt(1 - abar_t)."""
    return -eps / sde_lib.batch_broadcast(self.marginal_coeffs(t, eps.dtype)[1], eps)

  def eps_from_score(self, score: Array, t: Array) -> Array:
    """eps = -sqrt(1 - abar_t) grad log q(x_t)."""
    return -score * sde_lib.batch_broadcast(self.marginal_coeffs(t, score.dtype)[1], score)

  def x0_from_score(self, x_t: Array, score: Array, t: Array) -> Array:
    """Tweedie: x_0 = (x_t + (1 - abar_t) score) / sqrt(abar_t)."""
    mean_coeff, std = self.marginal_coeffs(t, x_t.dtype)
    return tweedie_x0(x_t, score, sde_lib.batch_broadcast(mean_coeff, x_t), sde_lib.batch_broadcast(std, x_t))

  # ELBO (THEORY.md §1): reconstruction - prior matching - sum_{t>=2} denoising matching.
  def prior_kl(self, x0: Array) -> Array:
    """KL(q(x_N | x_0) || N(0, I)), nats [B]."""
    t = jnp.full((x0.shape[0],), self.N)
    mean_coeff, std = self.marginal_coeffs(t, x0.dtype)
    return gaussian_kl(sde_lib.batch_broadcast(mean_coeff, x0) * x0, sde_lib.batch_broadcast(std**2, x0),
                       jnp.zeros_like(x0), jnp.ones((), x0.dtype))

  def denoising_kl(self, x0: Array, x0_pred: Array, t: Array) -> Array:
    """KL(q(x_{t-1}|x_t,x_0) || q(x_{t-1}|x_t,x0_pred)) = 0.5 (SNR(t-1) - SNR(t)) ||x0_pred - x_0||^2, t >= 2."""
    weight = 0.5 * (self.snr(t - 1, x0.dtype) - self.snr(t, x0.dtype))
    return weight * sum_except_batch((x0_pred - x0) ** 2)

  def reconstruction_log_prob(self, x0: Array, x0_pred: Array) -> Array:
    """log p(x_0 | x_1) for the Gaussian decoder N(x0_pred(x_1), beta_1 I) (Ho et al.'s sigma_1^2 = beta_1)."""
    return gaussian_log_prob(x0, x0_pred, self.beta(jnp.ones((), jnp.int32), x0.dtype))

  def elbo_terms(self, rng: Array, x0: Array, x0_pred_fn: Callable[[Array, Array], Array],
                 num_timesteps: int | None = None) -> dict[str, Array]:
    """Single-sample Monte-Carlo estimates of the three ELBO terms, in nats, each of shape [B].

    x0_pred_fn(x_t, t) predicts x_0 from x_t (t an int array [B]); the model's reverse kernel is
    p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0_pred). The denoising sum over t = 2..N is exact in t
    when `num_timesteps` is None, else estimated from that many uniformly drawn t per example.
    ELBO = reconstruction - prior - denoising <= log p(x_0).
    """
    batch = x0.shape[0]
    rec_rng, t_rng, noise_rng = jax.random.split(rng, 3)
    ones = jnp.ones((batch,), jnp.int32)
    x1, _ = self.q_sample(rec_rng, x0, ones)
    reconstruction = self.reconstruction_log_prob(x0, x0_pred_fn(x1, ones))

    def denoising_at(carry, inputs):
      t, key = inputs
      x_t, _ = self.q_sample(key, x0, t)
      return carry + self.denoising_kl(x0, x0_pred_fn(x_t, t), t), None

    if num_timesteps is None:
      steps = jnp.broadcast_to(jnp.arange(2, self.N + 1)[:, None], (self.N - 1, batch))
      scale = 1.0
    else:
      steps = jax.random.randint(t_rng, (num_timesteps, batch), 2, self.N + 1)
      scale = (self.N - 1) / num_timesteps
    keys = jax.random.split(noise_rng, steps.shape[0])
    denoising, _ = jax.lax.scan(denoising_at, jnp.zeros((batch,), x0.dtype), (steps, keys))
    return {"reconstruction": reconstruction, "prior": self.prior_kl(x0), "denoising": scale * denoising}

