"""Noise schedules as a log-SNR lambda(t) = log(alpha_t^2 / sigma_t^2) (gamma = -lambda), and the SDE they define.

THEORY.md §1 and VDM (Kingma et al. 2021): the encoder q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) is
fixed by lambda(t) plus a *kind* that says how (alpha, sigma) follow from lambda:
- "vp":    alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)        (alpha^2 + sigma^2 = 1)
- "subvp": sigma = 1 - alpha^2, so alpha / (1 - alpha^2) = exp(lambda / 2)
- "ve":    alpha = 1, sigma = exp(-lambda / 2)
The fixed schedules of sde.py (VP linear beta, sub-VP, VE geometric) are written here in that form
and `ScheduleSDE` turns any schedule into an SDE with f = (d log alpha / dt) x and
g^2 = d sigma^2 / dt - 2 (d log alpha / dt) sigma^2 = -sigma^2 d lambda / dt, the derivatives taken
by `jax.jvp`; it gives
the numbers of the classes of sde.py. A learned schedule is VDM's monotone network gamma_eta(t)
(`MonotoneGamma`) of "vp" kind; its parameters are bound with `bind(sde, params)`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib

Array = jax.Array


def _vp_log_coeffs(log_snr: Array) -> tuple[Array, Array]:
  return -0.5 * jax.nn.softplus(-log_snr), -0.5 * jax.nn.softplus(log_snr)


def _subvp_log_coeffs(log_snr: Array) -> tuple[Array, Array]:
  # alpha / (1 - alpha^2) = r = e^{lambda/2}  =>  alpha = 2r / (1 + sqrt(1 + 4 r^2)), i.e. log alpha = -asinh(1 / (2r)),
  # and sigma = 1 - alpha^2 = alpha / r.
  log_alpha = -jnp.arcsinh(0.5 * jnp.exp(-0.5 * log_snr))
  return log_alpha, log_alpha - 0.5 * log_snr


def _ve_log_coeffs(log_snr: Array) -> tuple[Array, Array]:
  return jnp.zeros_like(log_snr), -0.5 * log_snr


# kind -> lambda |-> (log alpha, log sigma), in forms without cancellation at either end.
LOG_COEFFICIENTS: dict[str, Callable[[Array], tuple[Array, Array]]] = {
    "vp": _vp_log_coeffs, "subvp": _subvp_log_coeffs, "ve": _ve_log_coeffs}


def _vp_log_mean_coeff(t: Array, beta_min: float, beta_max: float) -> Array:
  """log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2 (THEORY.md §3)."""
  return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


@dataclasses.dataclass(frozen=True)
class VPLinear:
  """VP with linear beta(t): sigma^2 = 1 - alpha^2, lambda = 2 log alpha - log(1 - alpha^2)."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  kind = "vp"
  variance_power = 1.0  # sigma^2 = (1 - alpha^2)^variance_power

  def log_snr(self, t: Array) -> Array:
    log_alpha = _vp_log_mean_coeff(t, self.beta_min, self.beta_max)
    return 2.0 * log_alpha - self.variance_power * jnp.log(-jnp.expm1(2.0 * log_alpha))


@dataclasses.dataclass(frozen=True)
class SubVPLinear(VPLinear):
  """sub-VP with linear beta(t): sigma = 1 - alpha^2, lambda = 2 log alpha - 2 log(1 - alpha^2)."""

  kind = "subvp"
  variance_power = 2.0


@dataclasses.dataclass(frozen=True)
class VEGeometric:
  """VE with sigma(t) = sigma_min (sigma_max / sigma_min)^t: lambda = -2 log sigma(t)."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  kind = "ve"

  def log_snr(self, t: Array) -> Array:
    return -2.0 * (np.log(self.sigma_min) + t * np.log(self.sigma_max / self.sigma_min))


@dataclasses.dataclass(frozen=True)
class LinearGamma:
  """VDM's fixed schedule gamma(t) = gamma_min + (gamma_max - gamma_min) t, VP kind."""

  gamma_min: float = -13.3
  gamma_max: float = 5.0
  kind = "vp"

  def log_snr(self, t: Array) -> Array:
    return -(self.gamma_min + (self.gamma_max - self.gamma_min) * t)


class DenseMonotone(nn.Module):
  """y = x |W| (+ b): non-decreasing in every input (VDM's DenseMonotone)."""

  features: int
  kernel_init: Callable = nn.initializers.normal(1.0)
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = jnp.abs(self.param("kernel", self.kernel_init, (x.shape[-1], self.features)))
    y = x @ kernel
    return y + self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else y


def _constant(value: float):
  return lambda key, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)


class MonotoneGamma(nn.Module):
  """gamma_eta(t) = gamma_0 + (gamma_1 - gamma_0) (s(t) - s(0)) / (s(1) - s(0)), increasing by construction.

  s(t) = l1(t) + l3(phi(l2(2t - 1))) / features with positive-weight dense layers l1, l2, l3 and
  phi(h) = 2 sigmoid(h) - 1 (VDM's NoiseSchedule_NNet). The end points are separate parameters,
  gamma_0 and gamma_1 = gamma_0 + softplus(range) (ENDPOINT_PARAMS), so the shape parameters leave
  gamma(0), gamma(1) and hence the continuous ELBO's expectation unchanged: they can be trained to
  minimise the loss variance alone. Initialised near VDM's linear gamma_min -> gamma_max.
  """

  gamma_min: float = -13.3
  gamma_max: float = 5.0
  features: int = 1024

  ENDPOINT_PARAMS = ("gamma_0", "range")

  @nn.compact
  def __call__(self, t: Array) -> Array:
    if not self.gamma_max > self.gamma_min:
      raise ValueError(f"MonotoneGamma needs gamma_max > gamma_min, got {self.gamma_min}, {self.gamma_max}")
    gamma_0 = self.param("gamma_0", _constant(self.gamma_min), ())
    span = self.gamma_max - self.gamma_min
    raw_range = self.param("range", _constant(float(span + np.log(-np.expm1(-span)))), ())  # softplus^-1(span)
    ends = jnp.asarray([0.0, 1.0], t.dtype)
    u = jnp.concatenate([jnp.ravel(t), ends])[:, None]
    linear = DenseMonotone(1, kernel_init=_constant(span), use_bias=False, name="l1")(u)
    hidden = 2.0 * jax.nn.sigmoid(DenseMonotone(self.features, name="l2")(2.0 * u - 1.0)) - 1.0
    s = (linear + DenseMonotone(1, use_bias=False, name="l3")(hidden) / self.features)[:, 0]
    s_t, s_0, s_1 = s[:-2], s[-2], s[-1]
    shape = (s_t - s_0) / (s_1 - s_0)
    return jnp.reshape(gamma_0 + jax.nn.softplus(raw_range) * shape, jnp.shape(t))


@dataclasses.dataclass(frozen=True)
class Learned:
  """A `MonotoneGamma` network bound to its parameters (None: not bound yet), VP kind.

  Networks see the noise label 999 (gamma - gamma_min) / (gamma_max - gamma_min) of the initial end
  points, so they are conditioned on the noise level, not on a time that the schedule re-maps.
  """

  module: MonotoneGamma
  params: dict | None = None
  kind = "vp"

  def log_snr(self, t: Array) -> Array:
    if self.params is None:
      raise ValueError("a learned noise schedule has no parameters yet: use schedules.bind(sde, params)")
    return -self.module.apply({"params": self.params}, t)

  def noise_labels(self, t: Array, log_snr: Array) -> Array:
    del t
    return 999.0 * (-log_snr - self.module.gamma_min) / (self.module.gamma_max - self.module.gamma_min)


def log_snr_and_rate(log_snr_fn: Callable[[Array], Array], t: Array) -> tuple[Array, Array]:
  """(lambda(t), d lambda / dt), both [B], by one forward-mode derivative."""
  return jax.jvp(log_snr_fn, (t,), (jnp.ones_like(t),))


class ScheduleSDE(sde_lib.SDE):
  """The linear SDE whose marginals N(alpha_t x_0, sigma_t^2 I) follow a schedule's log-SNR (and kind).

  f(x, t) = (d log alpha / dt) x, g(t)^2 = d sigma^2 / dt - 2 (d log alpha / dt) sigma^2
  = -sigma^2 d lambda / dt; for "vp" g^2 = sigmoid(gamma) d gamma / dt = beta(t). The prior is N(0, prior_std^2 I) with prior_std = 1
  for VP-type kinds and sigma_T for "ve". Networks predict noise: score = -eps / sigma_t.
  """

  def __init__(self, schedule, N: int = 1000):
    super().__init__(N)
    if schedule.kind not in LOG_COEFFICIENTS:
      raise ValueError(f"unknown schedule kind {schedule.kind!r}; choose from {sorted(LOG_COEFFICIENTS)}")
    self.schedule = schedule

  def log_snr(self, t: Array) -> Array:
    """lambda(t) = log(alpha_t^2 / sigma_t^2) = -gamma(t)."""
    return self.schedule.log_snr(t)

  def coeffs_of_log_snr(self, log_snr: Array) -> tuple[Array, Array]:
    """(alpha, sigma) of the schedule's kind at log-SNR `log_snr`."""
    log_alpha, log_sigma = LOG_COEFFICIENTS[self.schedule.kind](log_snr)
    return jnp.exp(log_alpha), jnp.exp(log_sigma)

  def noise_labels(self, t: Array, log_snr: Array) -> Array:
    """The network's noise label: 999 t, or the schedule's own (a learned schedule labels by gamma)."""
    labels = getattr(self.schedule, "noise_labels", None)
    return 999.0 * t if labels is None else labels(t, log_snr)

  @property
  def prior_std(self) -> float:
    if self.schedule.kind == "ve":  # sigma_T = e^{-lambda(T)/2}, in numpy so that it is a constant inside jit too
      return float(np.exp(-0.5 * self.schedule.log_snr(np.float64(self.T))))
    return 1.0

  def marginal_coeffs(self, t):
    return self.coeffs_of_log_snr(self.log_snr(t))

  def marginal_lambda(self, t):
    return 0.5 * self.log_snr(t)

  def sde(self, x, t):
    """f = (d log alpha / dt) x and g = sqrt(-sigma^2 d lambda / dt) (= sqrt(d sigma^2/dt - 2 sigma^2 d log alpha/dt))."""
    log_snr, rate = log_snr_and_rate(self.log_snr, t)
    _, dlog_alpha = jax.jvp(lambda l: LOG_COEFFICIENTS[self.schedule.kind](l)[0], (log_snr,), (rate,))
    _, sigma = self.coeffs_of_log_snr(log_snr)
    return sde_lib.batch_broadcast(dlog_alpha, x) * x, sigma * jnp.sqrt(jnp.maximum(-rate, 0.0))

  def inverse_lambda(self, lmbda: Array, iterations: int = 48) -> Array:
    """t in [0, T] with marginal_lambda(t) = lmbda by bisection (the log-SNR decreases in t), clipped at the ends."""
    target = 2.0 * lmbda
    low, high = jnp.zeros_like(target), jnp.full_like(target, self.T)

    def halve(_, bounds):
      low, high = bounds
      mid = 0.5 * (low + high)
      above = self.log_snr(mid) > target  # lambda(mid) still above target: the root lies later
      return jnp.where(above, mid, low), jnp.where(above, high, mid)

    low, high = jax.lax.fori_loop(0, iterations, halve, (low, high))
    return 0.5 * (low + high)

  def bind(self, params) -> "ScheduleSDE":
    """This SDE with a learned schedule's parameters params["schedule"] bound in (fixed ones: itself)."""
    if not isinstance(self.schedule, Learned):
      return self
    if "schedule" not in params:
      raise ValueError("the parameters have no 'schedule' entry: was the model built with training.sde='vdm'?")
    return ScheduleSDE(dataclasses.replace(self.schedule, params=params["schedule"]), self.N)


def bind(sde: sde_lib.SDE, params) -> sde_lib.SDE:
  """`sde` with the learned-schedule parameters of `params` bound in; any other SDE unchanged."""
  return sde.bind(params) if isinstance(sde, ScheduleSDE) else sde


# The schedule of each SDE of sde.py, for comparisons and for the VDM loss on fixed schedules.
def schedule_of(sde: sde_lib.SDE):
  """The fixed schedule that reproduces `sde`'s marginals (VPSDE, subVPSDE, VESDE)."""
  builders = {sde_lib.VPSDE: lambda s: VPLinear(s.beta_0, s.beta_1),
              sde_lib.subVPSDE: lambda s: SubVPLinear(s.beta_0, s.beta_1),
              sde_lib.VESDE: lambda s: VEGeometric(s.sigma_min, s.sigma_max)}
  if type(sde) not in builders:
    raise ValueError(f"no fixed schedule for {type(sde).__name__}; choose one of {[c.__name__ for c in builders]}")
  return builders[type(sde)](sde)


def learned_schedule_module(model_config) -> MonotoneGamma:
  """The learned schedule's network of config.model (gamma_min, gamma_max, schedule_features)."""
  return MonotoneGamma(gamma_min=model_config.gamma_min, gamma_max=model_config.gamma_max,
                       features=model_config.schedule_features)


def learned_sde(model_config) -> ScheduleSDE:
  """The unbound learned-schedule SDE of config.model (its schedule network and num_scales)."""
  return ScheduleSDE(Learned(learned_schedule_module(model_config)), N=model_config.num_scales)
