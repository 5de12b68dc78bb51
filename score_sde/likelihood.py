"""Exact likelihoods of the probability-flow ODE, bits/dim, and variational bounds (THEORY.md §5).

- `log_likelihood`: instantaneous change of variables along dx/dt = f~(x, t) = f - g^2 s / 2,
    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt,
  x and the divergence integral solved together, from eps up to T, in one jitted diffrax call.
- `bits_per_dim`, `dequantize`, `dequantized_bits_per_dim`: the bits/dim of {0..255} images.
- `elbo`: the continuous-time likelihood-weighted DSM bound (Song et al. 2021, arXiv 2101.09258).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
PriorLogp = Callable[[Array], Array]

# Tsit5 evaluates the vector field 6 times per step (accepted or rejected) plus once at t0 (FSAL).
_TSIT5_EVALS_PER_STEP = 6


def _sum_except_batch(x: Array) -> Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


# Divergence estimators: each returns probe vectors v_k [K, B, ...] and a weight w such that
# div f~(x) ~= w sum_k v_k^T (df~/dx) v_k (THEORY.md §5).


def _rademacher_probes(rng: Array, x: Array, num_probes: int) -> tuple[Array, float]:
  """Skilling-Hutchinson with v uniform on {-1, 1}^D: E[v^T J v] = tr J."""
  return jax.random.rademacher(rng, (num_probes,) + x.shape, x.dtype), 1.0 / num_probes


def _gaussian_probes(rng: Array, x: Array, num_probes: int) -> tuple[Array, float]:
  """Skilling-Hutchinson with v ~ N(0, I): E[v^T J v] = tr J."""
  return jax.random.normal(rng, (num_probes,) + x.shape, x.dtype), 1.0 / num_probes


def _basis_probes(rng: Array, x: Array, num_probes: int) -> tuple[Array, float]:
  """The exact trace sum_i e_i^T J e_i over the D basis vectors (num_probes is ignored)."""
  del rng, num_probes
  dim = math.prod(x.shape[1:])
  basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])
  return jnp.broadcast_to(basis, (dim,) + x.shape), 1.0


DIVERGENCE_ESTIMATORS = {
    "rademacher": _rademacher_probes,
    "gaussian": _gaussian_probes,
    "exact": _basis_probes,
}


def _drift_and_divergence(flow: sde_lib.ReverseSDE, x: Array, t: Array, probes: Array, weight: float):
  """f~(x, t) and w sum_k v_k^T (df~/dx) v_k, one vector-Jacobian product per probe."""
  drift, vjp_fn = jax.vjp(lambda y: flow.sde(y, t)[0], x)
  (v_jac,) = jax.vmap(vjp_fn)(probes)
  divergence = weight * jnp.sum(jax.vmap(_sum_except_batch)(v_jac * probes), axis=0)
  return drift, divergence


@functools.partial(jax.jit, static_argnames=(
    "score_fn", "sde", "estimator", "num_probes", "rtol", "atol", "eps", "prior_logp", "max_steps"))
def _log_likelihood(rng, x, *, score_fn, sde, estimator, num_probes, rtol, atol, eps, prior_logp,
                    max_steps):
  flow = sde.reverse(score_fn, probability_flow=True)
  probes, weight = DIVERGENCE_ESTIMATORS[estimator](rng, x, num_probes)

  def vector_field(t, state, args):
    del args
    y, _ = state
    return _drift_and_divergence(flow, y, jnp.full(y.shape[:1], t, y.dtype), probes, weight)

  # Forward in time, eps -> T: the state at T is (x(T), int_eps^T div f~ dt).
  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), diffrax.Tsit5(), t0=eps, t1=sde.T, dt0=None,
      y0=(x, jnp.zeros(x.shape[:1], x.dtype)),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  x_end, integral = jax.tree.map(lambda leaf: leaf[-1], solution.ys)
  nfe = _TSIT5_EVALS_PER_STEP * solution.stats["num_steps"] + 1
  return prior_logp(x_end) + integral, nfe


def log_likelihood(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, estimator: str = "rademacher",
                   rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5, *, num_probes: int = 1,
                   prior_logp: PriorLogp | None = None, max_steps: int = 4096) -> tuple[Array, Array]:
  """log p_eps(x) in nats, shape [B], of the probability-flow model at x [B, ...] in model space.

  log p_eps(x) = prior_logp(x(T)) + int_eps^T div f~(x(t), t) dt with f~ = f - g^2 s / 2 (THEORY.md §5):
  x is taken to be a sample at time eps and carried up to T together with the divergence integral
  (Tsit5, PIDController(rtol, atol)). With the exact score and prior_logp = log p_T this is exactly
  log p_eps(x), the log-density of the data perturbed to time eps.

  Args:
    estimator: a key of DIVERGENCE_ESTIMATORS. Random probes are drawn once and kept fixed along
      the trajectory; each field evaluation costs one score evaluation and one VJP per probe
      (D VJPs for "exact", meant for small D).
    num_probes: probes averaged per sample for the Hutchinson estimators.
    prior_logp: log-density of the ODE's initial distribution at T; defaults to `sde.prior_logp`.
    max_steps: solver step budget; diffrax raises if it is exhausted.
  Returns:
    (logp [B], nfe): nfe is the number of score (and field) evaluations of the solve.
  """
  if estimator not in DIVERGENCE_ESTIMATORS:
    raise ValueError(f"unknown estimator {estimator!r}; choose from {sorted(DIVERGENCE_ESTIMATORS)}")
  if num_probes < 1:
    raise ValueError(f"num_probes must be >= 1, got {num_probes}")
  if not 0.0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
  return _log_likelihood(
      rng, x, score_fn=score_fn, sde=sde, estimator=estimator, num_probes=num_probes, rtol=rtol,
      atol=atol, eps=eps, prior_logp=prior_logp or sde.prior_logp, max_steps=max_steps)


def _log2_scale(inverse_scaler: Callable[[Array], Array], event_shape: tuple[int, ...]) -> Array:
  """Mean over dimensions of log2 |dx/du| for the affine map u = inverse_scaler(x) to [0, 1] data."""
  ones = jnp.ones(event_shape, jnp.float32)
  _, slope = jax.jvp(inverse_scaler, (jnp.zeros_like(ones),), (ones,))
  _, slope_at_one = jax.jvp(inverse_scaler, (ones,), (ones,))
  if not np.allclose(slope, slope_at_one) or not np.all(np.asarray(slope) > 0):
    raise ValueError("bits_per_dim needs an increasing affine inverse_scaler (model space -> [0, 1])")
  return -jnp.mean(jnp.log2(slope))


def bits_per_dim(logp: Array, event_shape: tuple[int, ...], *,
                 inverse_scaler: Callable[[Array], Array]) -> Array:
  """Bits/dim on the 256-level scale of a log-density `logp` (nats) evaluated in model space.

  With u = inverse_scaler(x) in [0, 1] and x = scale u + shift, a density on dequantized pixels
  y = 256 u satisfies log2 p_y = log2 p_x + D log2(scale) - 8 D, hence (THEORY.md §5)
    bpd = -logp / (D ln 2) + 8 - log2(scale),
  i.e. an offset of 8 for [0, 1] data (scale 1) and of 7 for centered [-1, 1] data (scale 2).
  """
  dim = math.prod(event_shape)
  return -logp / (dim * np.log(2.0)) + 8.0 - _log2_scale(inverse_scaler, tuple(event_shape)).astype(logp.dtype)


def dequantize(rng: Array, images: Array, num_draws: int = 1, dtype=jnp.float32) -> Array:
  """Uniform dequantization u = (y + U[0, 1)) / 256 in [0, 1) of {0..255}-valued images [B, ...].

  Returns [num_draws, B, ...], one independent draw of the noise per leading index.
  """
  noise = jax.random.uniform(rng, (num_draws,) + images.shape, dtype)
  return (images.astype(dtype)[None] + noise) / 256.0


def dequantized_bits_per_dim(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, images: Array, *,
                             scaler: Callable[[Array], Array], inverse_scaler: Callable[[Array], Array],
                             num_draws: int = 1, **likelihood_options) -> tuple[Array, Array]:
  """Bits/dim [B] of {0..255} images, averaged over `num_draws` dequantizations and probes.

  E_U[-log2 p(y + U)] upper-bounds the discrete negative log-likelihood (uniform dequantization);
  `scaler` maps [0, 1] data to model space. Returns (bpd [B], total nfe).
  """
  dequant_rng, probe_rng = jax.random.split(rng)
  draws = dequantize(dequant_rng, images, num_draws)
  flat = scaler(draws.reshape((-1,) + images.shape[1:]))
  logp, nfe = log_likelihood(probe_rng, score_fn, sde, flat, **likelihood_options)
  bpd = bits_per_dim(logp, images.shape[1:], inverse_scaler=inverse_scaler)
  return jnp.mean(bpd.reshape(num_draws, images.shape[0]), axis=0), nfe
