"""Forward SDEs dx = f(x, t) dt + g(t) dw on t in [0, T] and their reversals (THEORY.md §3).

Every method takes a batch `x` of shape [B, ...] and times `t` of shape [B]; per-sample scalars
(diffusion, std, log-densities) have shape [B]. All computations keep the dtype of `x`/`t`.
"""
from __future__ import annotations

import abc
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_broadcast(v: Array, x: Array) -> Array:
  """Reshapes a per-sample array `v` of shape [B] so that it broadcasts against `x` [B, ...]."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def sum_except_batch(x: Array) -> Array:
  """Sum over every axis but the first: per-sample totals [B] of x [B, ...]."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def smld_sigmas(sigma_min: float, sigma_max: float, N: int) -> np.ndarray:
  """SMLD / NCSN noise levels sigma_i = sigma_min (sigma_max / sigma_min)^(i / (N - 1)), i = 0..N-1, ascending.

  sigma_i = VESDE.sigma(t_i) on the grid t_i = i T / (N - 1). NCSN numbers them the other way: its
  label j (sigma_max first) is i = N - 1 - j.
  """
  return np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), N))


def kernel_coeffs(t_coeffs: tuple[Array, Array], s_coeffs: tuple[Array, Array]) -> tuple[Array, Array]:
  """(a, b) with x_t = a x_s + b z, from the marginal coefficients (alpha, sigma) at t > s:

  a = alpha_t / alpha_s and b^2 = sigma_t^2 - a^2 sigma_s^2 (exact for any linear SDE).
  """
  (alpha_t, sigma_t), (alpha_s, sigma_s) = t_coeffs, s_coeffs
  a = alpha_t / alpha_s
  return a, jnp.sqrt(jnp.maximum(sigma_t**2 - (a * sigma_s) ** 2, 0.0))


class SDE(abc.ABC):
  """A linear SDE with Gaussian perturbation kernel p_0t(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)."""

  def __init__(self, N: int):
    self.N = N

  @property
  def T(self) -> float:
    """End time of the forward process."""
    return 1.0

  @abc.abstractmethod
  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift f(x, t) (like x) and diffusion g(t) (shape [B])."""

  @abc.abstractmethod
  def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
    """(alpha_t, sigma_t), each of shape [B], with p_0t(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)."""

  @abc.abstractmethod
  def inverse_lambda(self, lmbda: Array) -> Array:
    """The time t at which marginal_lambda(t) = lmbda (the log-SNR is strictly monotone)."""

  @property
  @abc.abstractmethod
  def prior_std(self) -> float:
    """Standard deviation of the isotropic Gaussian prior p_T."""

  def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Mean alpha_t x (like x) and std sigma_t (shape [B]) of p_0t(x_t | x_0 = x)."""
    alpha, sigma = self.marginal_coeffs(t)
    return batch_broadcast(alpha, x) * x, sigma

  def marginal_lambda(self, t: Array) -> Array:
    """Half log-SNR lambda_t = log(alpha_t / sigma_t), the time variable of DPM-Solver."""
    alpha, sigma = self.marginal_coeffs(t)
    return jnp.log(alpha) - jnp.log(sigma)

  def likelihood_weighting_time(self, u: Array, eps: float) -> tuple[Array, Array]:
    """Maps u in [0, 1] to t in [eps, T] with density ∝ g(t)^2 / sigma_t^2; returns (t, Z).

    For every linear SDE g^2 / sigma^2 = -2 d lambda / dt, so t = t(lambda) with lambda linear in u
    from lambda_T to lambda_eps has that density, with normaliser Z = int_eps^T g^2/sigma^2 dt =
    2 (lambda_eps - lambda_T). Uniform u importance-samples the likelihood weighting g^2 (Song et al.
    2021, maximum-likelihood training), leaving the bounded weight Z sigma_t^2 on ||s - grad log p_0t||^2.
    """
    lambda_eps, lambda_end = self.marginal_lambda(jnp.asarray([eps, self.T], u.dtype))
    t = jnp.clip(self.inverse_lambda(lambda_end + (lambda_eps - lambda_end) * u), eps, self.T)
    return t, 2.0 * (lambda_eps - lambda_end)

  def prior_sampling(self, rng: Array, shape, dtype=jnp.float32) -> Array:
    """A sample of the prior p_T = N(0, prior_std^2 I)."""
    return self.prior_std * jax.random.normal(rng, shape, dtype)

  def prior_logp(self, z: Array) -> Array:
    """log N(z; 0, prior_std^2 I), shape [B]."""
    dim = np.prod(z.shape[1:])
    var = self.prior_std**2
    return -0.5 * dim * jnp.log(2 * np.pi * var).astype(z.dtype) - sum_except_batch(z**2) / (2 * var)

  def discrete_index(self, t: Array) -> Array:
    """Index i in 0..N-1 of the grid time t_i = i T / (N - 1) nearest to t (int32)."""
    return jnp.round(t * (self.N - 1) / self.T).astype(jnp.int32)

  def discrete_time(self, i: Array, dtype=jnp.float32) -> Array:
    """The grid time t_i = i T / (N - 1) of index i (inverse of `discrete_index`)."""
    return jnp.asarray(i, dtype) * (self.T / (self.N - 1))

  def transition(self, t: Array, s: Array) -> tuple[Array, Array]:
    """(a, b), each [B], of the exact forward kernel from s to t > s: x_t = a x_s + b z (`kernel_coeffs`)."""
    return kernel_coeffs(self.marginal_coeffs(t), self.marginal_coeffs(s))

  def discretize(self, x: Array, t: Array, s: Array | None = None) -> tuple[Array, Array]:
    """One forward step ending at t: x_t = x_s + f + G z, f like x, G of shape [B].

    With `s` (times [B] < t): the exact kernel of `transition`, f = (a - 1) x, G = b; on the SDE's own
    grid it is the DDPM step for VP (up to O(1/N^2) in beta) and exactly the SMLD step for VE.
    Without: the SDE's own N-step chain at t (`chain_step`).
    """
    if s is None:
      return self.chain_step(x, t)
    a, b = self.transition(t, s)
    return (batch_broadcast(a, x) - 1.0) * x, b

  def chain_step(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Euler-Maruyama step of size T/N: f = f(x, t) T/N, G = g(t) sqrt(T/N); VPSDE and VESDE use their chains."""
    dt = self.T / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(jnp.asarray(dt, diffusion.dtype))

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (or probability-flow ODE) driven by `score_fn`."""
    return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
  """dx = [f - c g^2 s(x, t)] dt + g' dw_bar, run from T to 0 (THEORY.md §3).

  The stochastic reverse SDE has c = 1, g' = g; the probability-flow ODE has c = 1/2, g' = 0.
  """

  def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
    self.forward = forward
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward.N

  @property
  def T(self) -> float:
    return self.forward.T

  @property
  def _score_coeff(self) -> float:
    return 0.5 if self.probability_flow else 1.0

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Reverse drift f - c g^2 s and diffusion (0 for the probability-flow ODE)."""
    drift, diffusion = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    drift = drift - batch_broadcast(diffusion**2, x) * score * self._score_coeff
    return drift, jnp.zeros_like(diffusion) if self.probability_flow else diffusion

  def discretize(self, x: Array, t: Array, s: Array | None = None) -> tuple[Array, Array]:
    """Reverse of the forward step (`SDE.discretize`): x_s = x_t - rev_f + G' z, rev_f = f - c G^2 s(x_t, t)."""
    f, G = self.forward.discretize(x, t, s)
    rev_f = f - batch_broadcast(G**2, x) * self.score_fn(x, t) * self._score_coeff
    return rev_f, jnp.zeros_like(G) if self.probability_flow else G


class VPSDE(SDE):
  """Variance preserving SDE: f = -beta(t) x / 2, g = sqrt(beta(t)), the continuum of DDPM."""

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
    super().__init__(N)
    if not 0 < beta_min <= beta_max < N:
      raise ValueError(f"VPSDE needs 0 < beta_min <= beta_max < N so that every discrete beta_i lies in (0, 1); "
                       f"got beta_min={beta_min}, beta_max={beta_max}, N={N}")
    self.beta_0 = beta_min
    self.beta_1 = beta_max
    # The DDPM chain (discrete.DDPMChain.from_sde): beta_i = beta_min / N + i (beta_max - beta_min) / (N (N - 1)).
    self.discrete_betas = np.linspace(beta_min / N, beta_max / N, N)

  @property
  def prior_std(self) -> float:
    return 1.0

  def beta(self, t: Array) -> Array:
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def log_mean_coeff(self, t: Array) -> Array:
    """log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2."""
    return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def time_of_log_mean_coeff(self, log_alpha: Array) -> Array:
    """Inverse of `log_mean_coeff`: the positive root of (slope/4) t^2 + (beta_min/2) t + log_alpha = 0.

    Written as 2c / (b + sqrt(b^2 + 4ac)) (c = -log_alpha), which has no cancellation as t -> 0.
    """
    quadratic, linear, constant = 0.25 * (self.beta_1 - self.beta_0), 0.5 * self.beta_0, -log_alpha
    return 2.0 * constant / (linear + jnp.sqrt(linear**2 + 4.0 * quadratic * constant))

  def sde(self, x, t):
    beta_t = self.beta(t)
    return -0.5 * batch_broadcast(beta_t, x) * x, jnp.sqrt(beta_t)

  def marginal_coeffs(self, t):
    log_alpha = self.log_mean_coeff(t)
    return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))

  def inverse_lambda(self, lmbda):
    # alpha^2 = sigmoid(2 lambda)  =>  log alpha = -softplus(-2 lambda) / 2.
    return self.time_of_log_mean_coeff(-0.5 * jax.nn.softplus(-2.0 * lmbda))

  def chain_step(self, x, t):
    """DDPM transition x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z, i = discrete_index(t)."""
    beta = jnp.asarray(self.discrete_betas, x.dtype)[self.discrete_index(t)]
    return batch_broadcast(jnp.sqrt(1.0 - beta), x) * x - x, jnp.sqrt(beta)


class subVPSDE(VPSDE):
  """sub-VP SDE: VP drift, g^2 = beta(t) (1 - exp(-2 beta_min t - (beta_max - beta_min) t^2)).

  Its marginal std 1 - alpha_t^2 is below the VP one at every t.
  """

  def sde(self, x, t):
    drift, _ = super().sde(x, t)
    discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))
    return drift, jnp.sqrt(self.beta(t) * discount)

  def marginal_coeffs(self, t):
    log_alpha = self.log_mean_coeff(t)
    return jnp.exp(log_alpha), -jnp.expm1(2.0 * log_alpha)

  def inverse_lambda(self, lmbda):
    # alpha / (1 - alpha^2) = r := exp(lambda)  =>  alpha = 2 r / (1 + sqrt(1 + 4 r^2)).
    r = jnp.exp(lmbda)
    alpha = 2.0 * r / (1.0 + jnp.sqrt(1.0 + 4.0 * r**2))
    return self.time_of_log_mean_coeff(jnp.log(alpha))

  def chain_step(self, x, t):
    return SDE.chain_step(self, x, t)  # sub-VP has no discrete chain: Euler-Maruyama


class VESDE(SDE):
  """Variance exploding SDE: f = 0, g = sigma(t) sqrt(2 log(sigma_max / sigma_min)), the continuum of SMLD."""

  def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
    super().__init__(N)
    self.sigma_min = sigma_min
    self.sigma_max = sigma_max
    self.discrete_sigmas = smld_sigmas(sigma_min, sigma_max, N)

  @property
  def prior_std(self) -> float:
    return self.sigma_max

  def sigma(self, t: Array) -> Array:
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde(self, x, t):
    log_ratio = np.log(self.sigma_max / self.sigma_min)
    return jnp.zeros_like(x), self.sigma(t) * jnp.sqrt(jnp.asarray(2.0 * log_ratio, t.dtype))

  def marginal_coeffs(self, t):
    return jnp.ones_like(t), self.sigma(t)

  def inverse_lambda(self, lmbda):
    return (-lmbda - np.log(self.sigma_min)) / np.log(self.sigma_max / self.sigma_min)

  def chain_step(self, x, t):
    """SMLD transition x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (sigma_{-1} = 0), i = discrete_index(t)."""
    i = self.discrete_index(t)
    sigmas = jnp.asarray(self.discrete_sigmas, x.dtype)
    sigma = sigmas[i]
    previous = jnp.where(i == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(i - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - previous**2)


# config.training.sde -> builder from config.model's noise schedule.
SDE_BUILDERS = {
    "vpsde": lambda m: VPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales),
    "subvpsde": lambda m: subVPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales),
    "vesde": lambda m: VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales),
    "vdm": lambda m: _learned_schedule_sde(m),
}


def _learned_schedule_sde(model_config) -> SDE:
  """VP-type SDE of a learned noise schedule (score_sde/schedules.py, which builds on this module)."""
  from score_sde import schedules  # pylint: disable=import-outside-toplevel
  return schedules.learned_sde(model_config)


def get_sde(config) -> SDE:
  """The SDE named by `config.training.sde`, with the noise schedule of `config.model`."""
  name = config.training.sde.lower()
  if name not in SDE_BUILDERS:
    raise ValueError(f"unknown training.sde {config.training.sde!r}; choose from {sorted(SDE_BUILDERS)}")
  return SDE_BUILDERS[name](config.model)
