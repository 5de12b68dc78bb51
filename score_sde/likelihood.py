"""Exact likelihoods of the probability-flow ODE, bits/dim, and variational bounds (THEORY.md §5).

- `log_likelihood`: instantaneous change of variables along dx/dt = f~(x, t) = f - g^2 s / 2,
    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt,
  x and the divergence integral solved together, from eps up to T, in one jitted diffrax call.
- `bits_per_dim`, `dequantize`, `dequantized_bits_per_dim`: the bits/dim of {0..255} images.
- `encoder_bound_nll`: -log P of 8-bit images through the ODE, dequantized by the forward process itself
    (z_eps ~ q(z_eps | x), decoded by the pixel-grid decoder `grid_decoder_nll`), for models of 8-bit data.
- `elbo`: the continuous-time likelihood-weighted DSM bound (Song et al. 2021, arXiv 2101.09258).
- `ddpm_elbo`, `ddpm_elbo_bpd`: the discrete DDPM bound (THEORY.md §1) with x_0 predicted from the score.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from score_sde import datasets, discrete, flow_variables
from score_sde import sde as sde_lib
from score_sde.sampling import ode

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
PriorLogp = Callable[[Array], Array]


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


def _drift_and_divergence(drift_fn: Callable[[Array], Array], x: Array, probes: Array, weight: float):
  """(drift_fn(x), its divergence estimated as weight sum_k v_k^T (d drift / dx) v_k) [B].

  J v_k by forward mode (`jax.linearize`): inside the solver's while loop, XLA:CPU runs the
  input-gradient convolutions of reverse mode (kernel in HWOI layout) ~18x slower than at top level,
  which made each field evaluation of a U-Net 8x dearer than with forward mode (benchmarks/divergence_mode.py).
  """
  drift, jvp_fn = jax.linearize(drift_fn, x)
  jac_v = jax.vmap(jvp_fn)(probes)
  divergence = weight * jnp.sum(jax.vmap(sde_lib.sum_except_batch)(jac_v * probes), axis=0)
  return drift, divergence


def _per_example_norm(scaled_error) -> Array:
  """max over examples of max(RMS of the example's scaled state errors, |its scaled log-density error|):
  each example's state and log-density (carried in nats per dimension) stay within rtol/atol, whatever
  its batch mates do."""
  state, log_density = scaled_error
  state_rms = jnp.sqrt(jnp.mean(jnp.reshape(state, (state.shape[0], -1))**2, axis=1))
  return jnp.max(jnp.maximum(state_rms, jnp.abs(log_density)))


# Step-size control of the likelihood solve: the norm of the error scaled by atol + rtol |state|. "batch_rms" is
# diffrax's default, the RMS of all components of the batch together: an example's error is diluted by its batch
# mates', and its log-density, one number, by its D state components.
ERROR_NORMS = {"batch_rms": optx.rms_norm, "per_example": _per_example_norm}


def _solve_with_divergence(field: Callable[[Array, Array], Array], y0: Array, tau0, tau1, probes: Array, weight: float,
                           *, solver: str, rtol: float, atol: float, max_steps: int, error_norm: str
                           ) -> tuple[Array, Array, Array]:
  """(y(tau1), int_tau0^tau1 div_y field dtau [B] in nats, NFE) along dy/dtau = field(tau, y), adaptive
  `solver` (a key of `ode.SOLVERS`).

  The divergence integral is carried in nats per dimension (divided by D = y[0].size), the scale on
  which atol and rtol bound its error under the "per_example" norm.
  """
  dim = math.prod(y0.shape[1:])

  def vector_field(tau, state, args):
    del args
    drift, divergence = _drift_and_divergence(lambda y: field(tau, y), state[0], probes, weight)
    return drift, divergence / dim

  (y1, integral), nfe = ode.integrate(vector_field, (y0, jnp.zeros(y0.shape[:1], y0.dtype)), tau0, tau1, solver,
                                      rtol, atol, None, max_steps, norm=ERROR_NORMS[error_norm])
  return y1, dim * integral, nfe


@functools.partial(jax.jit, static_argnames=(
    "score_fn", "sde", "estimator", "num_probes", "solver", "rtol", "atol", "eps", "prior_logp", "max_steps",
    "variables", "error_norm"))
def _log_likelihood(rng, x, *, score_fn, sde, estimator, num_probes, solver, rtol, atol, eps, prior_logp,
                    max_steps, variables, error_norm):
  """log p_eps(x) for y = x / alpha solved against tau (`flow_variables`; y = x, tau = t for "time"), eps -> T:

  log p_eps(x) = prior_logp(alpha_T y_T) + D log(alpha_T / alpha_eps) + int_{tau_eps}^{tau_T} div_y (dy/dtau) dtau.
  """
  probes, weight = DIVERGENCE_ESTIMATORS[estimator](rng, x, num_probes)
  if variables == "time":
    flow = sde.reverse(score_fn, probability_flow=True)
    y_end, integral, nfe = _solve_with_divergence(
        lambda t, y: flow.sde(y, jnp.full(y.shape[:1], t, y.dtype))[0], x, eps, sde.T, probes, weight,
        solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, error_norm=error_norm)
    return prior_logp(y_end) + integral, nfe
  field = flow_variables.vector_field(score_fn, sde, variables)
  tau_eps, alpha_eps = flow_variables.endpoint(sde, variables, eps, x.dtype)
  tau_end, alpha_end = flow_variables.endpoint(sde, variables, sde.T, x.dtype)
  y_end, integral, nfe = _solve_with_divergence(field, x / alpha_eps, tau_eps, tau_end, probes, weight, solver=solver,
                                                rtol=rtol, atol=atol, max_steps=max_steps, error_norm=error_norm)
  dim = math.prod(x.shape[1:])
  return prior_logp(alpha_end * y_end) + dim * jnp.log(alpha_end / alpha_eps) + integral, nfe


def log_likelihood(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, estimator: str = "rademacher",
                   rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5, *, num_probes: int = 1,
                   prior_logp: PriorLogp | None = None, max_steps: int = 4096,
                   variables: str = "time", error_norm: str = "batch_rms", solver: str = "tsit5"
                   ) -> tuple[Array, Array]:
  """log p_eps(x) in nats, shape [B], of the probability-flow model at x [B, ...] in model space.

  log p_eps(x) = prior_logp(x(T)) + int_eps^T div f~(x(t), t) dt with f~ = f - g^2 s / 2 (THEORY.md §5):
  x is taken to be a sample at time eps and carried up to T together with the divergence integral
  (`solver`, PIDController(rtol, atol, norm=ERROR_NORMS[error_norm])). With the exact score and
  prior_logp = log p_T this is exactly log p_eps(x), the log-density of the data perturbed to time eps;
  with the default prior it is the likelihood of the model started from N(0, prior_std^2 I), off by
  log pi(x(T)) - log p_T(x(T)).
  The batch is solved jointly: one step-size sequence, controlled by `error_norm` (see ERROR_NORMS).

  Args:
    estimator: a key of DIVERGENCE_ESTIMATORS. Random probes are drawn once and kept fixed along
      the trajectory; each field evaluation costs one score evaluation and one VJP per probe
      (D VJPs for "exact", meant for small D).
    num_probes: probes averaged per sample for the Hutchinson estimators.
    prior_logp: log-density of the ODE's initial distribution at T; defaults to `sde.prior_logp`.
    max_steps: solver step budget; diffrax raises if it is exhausted.
    variables: a key of `flow_variables.VARIABLES`: "time" solves x against t; "log_snr" and "ddim"
      solve y = x / alpha_t against log(sigma_t / alpha_t) or sigma_t / alpha_t, where the flow is
      nearly linear (same log-density, fewer steps for the same tolerance on trained models).
    error_norm: a key of ERROR_NORMS: "batch_rms" controls the RMS error of the whole batch;
      "per_example" the worst example's state and its log-density in nats per dimension.
    solver: an adaptive solver of `ode.SOLVERS`. Where a trained network's field is rough in t (its time
      embedding), the 3rd-order "bosh3" (3 evaluations per step) can reach a bits/dim accuracy with fewer
      evaluations than the 5th-order "tsit5" and "dopri5" (6 per step); on smoother fields those win
      (benchmarks/likelihood_cost.py --workdir).
  Returns:
    (logp [B], nfe): nfe is the number of score (and field) evaluations of the solve.
  """
  if estimator not in DIVERGENCE_ESTIMATORS:
    raise ValueError(f"unknown estimator {estimator!r}; choose from {sorted(DIVERGENCE_ESTIMATORS)}")
  if num_probes < 1:
    raise ValueError(f"num_probes must be >= 1, got {num_probes}")
  if not 0.0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
  flow_variables.check(variables)
  if error_norm not in ERROR_NORMS:
    raise ValueError(f"unknown error_norm {error_norm!r}; choose from {sorted(ERROR_NORMS)}")
  if solver not in ode.ADAPTIVE_SOLVERS:
    raise ValueError(f"unknown adaptive ODE solver {solver!r}; choose from {ode.ADAPTIVE_SOLVERS}")
  return _log_likelihood(
      rng, x, score_fn=score_fn, sde=sde, estimator=estimator, num_probes=num_probes, solver=solver, rtol=rtol,
      atol=atol, eps=eps, prior_logp=prior_logp or sde.prior_logp, max_steps=max_steps, variables=variables,
      error_norm=error_norm)


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
  return datasets.dequantize(images.astype(dtype)[None], noise)


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


def pixel_grid(scaler: Callable[[Array], Array]) -> Array:
  """The 256 model-space values scaler(k / 255) of 8-bit pixels."""
  return scaler(jnp.arange(256, dtype=jnp.float32) / 255.0)


def grid_decoder_nll(x: Array, z: Array, alpha: Array, log_snr: Array, grid: Array) -> Array:
  """-log p(x | z) [B] of x on `grid` (K values), VDM's decoder of z = alpha x + sigma eps:

    p(x_i = v_k | z) = softmax_k(-(z_i / alpha - v_k)^2 e^{lambda} / 2),  lambda = log(alpha^2 / sigma^2),

  dimensions independent: the posterior of x_i given z_i under a uniform prior over the grid.
  """
  logits = -0.5 * jnp.exp(log_snr) * (z[..., None] / alpha - grid) ** 2
  index = jnp.argmin(jnp.abs(x[..., None] - grid), axis=-1)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), index[..., None], axis=-1)[..., 0]
  return -jnp.sum(logp.reshape(x.shape[0], -1), axis=-1)


def encoder_bound_nll(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, *, grid: Array,
                      eps: float = 1e-5, **likelihood_options) -> tuple[Array, Array]:
  """An upper bound on -log P(x) in nats [B] of 8-bit x (model-space values on `grid`), and the ODE's nfe.

  The forward process at time eps is the dequantizer: with q(z | x) = N(alpha_eps x, sigma_eps^2 I),
    -log P(x) <= E_{z ~ q(z | x)}[-log p(x | z) - log p_eps(z) + log q(z | x)],
  the decoder p(x | z) of `grid_decoder_nll` and p_eps the probability-flow density (`log_likelihood`,
  `likelihood_options`). This is VDM's bound (score_sde/vdm.py) with its prior and diffusion terms
  replaced by the exact ODE density of z; one draw of z per example. A model trained on 8-bit values
  (no uniform dequantization) puts its density within ~sigma_eps / alpha_eps of the grid, far inside a
  dequantization bin, so for it this bound, not `dequantized_bits_per_dim`, measures the ODE model.
  """
  noise_rng, probe_rng = jax.random.split(rng)
  at_eps = jnp.full((1,), eps, x.dtype)
  alpha, sigma = sde.marginal_coeffs(at_eps)
  noise = jax.random.normal(noise_rng, x.shape, x.dtype)
  z = alpha[0] * x + sigma[0] * noise
  logp, nfe = log_likelihood(probe_rng, score_fn, sde, z, eps=eps, **likelihood_options)
  # log q(z | x) = log N(noise; 0, I) - D log sigma: exact, where z - alpha x would lose the noise to rounding.
  log_q = discrete.gaussian_log_prob(noise, 0.0, 1.0) - math.prod(x.shape[1:]) * jnp.log(sigma[0])
  log_snr = 2.0 * sde.marginal_lambda(at_eps)[0]
  return grid_decoder_nll(x, z, alpha[0], log_snr, grid) - logp + log_q, nfe


def bin_log_density(log_prob: Array, event_shape: tuple[int, ...], scaler: Callable[[Array], Array]) -> Array:
  """log P(x) of 8-bit x spread uniformly over each pixel's bin in model space: log P - D log(bin width).

  `bits_per_dim` turns it into -log2 P / D, so discrete bounds and dequantized densities share one reader.
  """
  bin_width = (scaler(jnp.ones(())) - scaler(jnp.zeros(()))) / 256.0
  return log_prob - math.prod(event_shape) * jnp.log(bin_width)


# Time samplers for the continuous ELBO: times t [num_t, B] in [eps, T] and importance weights
# w(t) = (g^2 / sigma^2)(t) / q(t), stratified over num_t. Since g^2 / sigma^2 = -2 d lambda / dt for
# every linear SDE (lambda = log(alpha / sigma)), sampling lambda uniformly makes w constant.


def _stratified_uniform(rng: Array, shape: tuple[int, int], dtype) -> Array:
  """u[k, b] uniform on [k / K, (k + 1) / K): one draw per stratum of [0, 1)."""
  offsets = jnp.arange(shape[0], dtype=dtype)[:, None]
  return (offsets + jax.random.uniform(rng, shape, dtype)) / shape[0]


def _log_snr_times(rng: Array, sde: sde_lib.SDE, eps: float, shape: tuple[int, int], dtype):
  """lambda ~ U[lambda_T, lambda_eps], t = t(lambda) (`SDE.likelihood_weighting_time`); weight Z."""
  t, normaliser = sde.likelihood_weighting_time(_stratified_uniform(rng, shape, dtype), eps)
  return t, jnp.full(shape, normaliser, dtype)


def _uniform_times(rng: Array, sde: sde_lib.SDE, eps: float, shape: tuple[int, int], dtype):
  """t ~ U[eps, T]; weight (T - eps) g(t)^2 / sigma_t^2."""
  t = eps + (sde.T - eps) * _stratified_uniform(rng, shape, dtype)
  flat = t.reshape(-1)
  g2 = sde.sde(jnp.zeros_like(flat), flat)[1] ** 2
  return t, ((sde.T - eps) * g2 / sde.marginal_coeffs(flat)[1] ** 2).reshape(shape)


ELBO_TIME_SAMPLERS = {"log_snr": _log_snr_times, "uniform": _uniform_times}


@functools.partial(jax.jit, static_argnames=("score_fn", "sde", "num_t", "eps", "time_sampling"))
def elbo(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, num_t: int = 64, eps: float = 1e-5,
         time_sampling: str = "log_snr") -> Array:
  """Likelihood-weighted DSM lower bound, nats [B] (Song et al. 2021, arXiv 2101.09258; Huang et al. 2021).

  With x_t = alpha_t x + sigma_t z and the reverse SDE started from the prior pi = N(0, prior_std^2),
    E_{x_eps ~ p_0eps(.|x)}[log p^SDE_eps(x_eps)] >= E[log pi(x_T)] + D log(alpha_T / alpha_eps)
        - 1/2 int_eps^T (g^2 / sigma_t^2) E_z[||z + sigma_t s(x_t, t)||^2 - ||z||^2] dt,
  i.e. Song et al.'s g^2 ||s - grad log p_0t||^2 - g^2 ||grad log p_0t||^2 - 2 div f with
  div f = D d log(alpha_t) / dt. It bounds the model's log-density at x perturbed to time eps
  (for sigma_eps -> 0, log p_eps(x)); with the exact score and pi = p_T it holds with equality.
  E[log pi(x_T)] is in closed form; the time integral is a Monte-Carlo mean over num_t stratified
  (t, z) draws per sample, with t importance-sampled per ELBO_TIME_SAMPLERS[time_sampling].
  """
  if time_sampling not in ELBO_TIME_SAMPLERS:
    raise ValueError(f"unknown time_sampling {time_sampling!r}; choose from {sorted(ELBO_TIME_SAMPLERS)}")
  batch, dim = x.shape[0], math.prod(x.shape[1:])
  t_rng, z_rng = jax.random.split(rng)
  t, weight = ELBO_TIME_SAMPLERS[time_sampling](t_rng, sde, eps, (num_t, batch), x.dtype)
  t = t.reshape(-1)
  x_rep = jnp.broadcast_to(x[None], (num_t,) + x.shape).reshape((-1,) + x.shape[1:])
  z = jax.random.normal(z_rng, x_rep.shape, x.dtype)
  alpha, sigma = sde.marginal_coeffs(t)
  x_t = sde_lib.batch_broadcast(alpha, x_rep) * x_rep + sde_lib.batch_broadcast(sigma, x_rep) * z
  noise_residual = z + sde_lib.batch_broadcast(sigma, x_rep) * score_fn(x_t, t)
  # ||z + sigma s||^2 - ||z||^2 has the same mean as ||z + sigma s||^2 - c ||z||^2 - (1 - c) D for any
  # c(t). For unit-variance Gaussian data z + sigma s = rho z + (a term in x_0), rho = alpha^2 /
  # (alpha^2 + sigma^2); c = rho^2 halves the standard deviation on the mixture oracle.
  snr_fraction = alpha**2 / (alpha**2 + sigma**2)
  control = snr_fraction**2
  residual = (sde_lib.sum_except_batch(noise_residual**2 - sde_lib.batch_broadcast(control, z) * z**2)
              - (1.0 - control) * dim).reshape(num_t, batch)
  diffusion_term = 0.5 * jnp.mean(weight * residual, axis=0)

  ends = jnp.asarray([eps, sde.T], x.dtype)
  (alpha_eps, alpha_end), (_, sigma_end) = sde.marginal_coeffs(ends)
  prior_var = sde.prior_std**2
  expected_prior_logp = (-0.5 * dim * jnp.log(2 * np.pi * prior_var)
                         - (alpha_end**2 * sde_lib.sum_except_batch(x**2) + dim * sigma_end**2) / (2 * prior_var))
  return expected_prior_logp + dim * jnp.log(alpha_end / alpha_eps) - diffusion_term


# Time grids tau_1 < ... < tau_N in [eps, T] at which a DDPM chain observes an SDE.


def _uniform_grid(sde: sde_lib.SDE, num_steps: int, eps: float) -> Array:
  """tau_k = k T / N (Ho et al.'s chain for VP up to O(1/N^2) in beta); eps is not used.

  Its log-SNR steps near the data, log(k / (k - 1)) / 2 for VP, do not shrink with N, so the bound
  tightens slowly (VP, 2-D oracle, N = 1000: 0.9 nats loose, against 0.09 on the "log_snr" grid).
  """
  del eps
  return jnp.arange(1, num_steps + 1, dtype=jnp.float32) * (sde.T / num_steps)


def _log_snr_grid(sde: sde_lib.SDE, num_steps: int, eps: float) -> Array:
  """lambda(tau_k) equally spaced from lambda(eps) to lambda(T): every step shrinks like 1/N."""
  lambda_eps, lambda_end = sde.marginal_lambda(jnp.asarray([eps, sde.T], jnp.float32))
  lmbda = jnp.linspace(lambda_eps, lambda_end, num_steps)
  return jnp.clip(sde.inverse_lambda(lmbda), eps, sde.T)


DDPM_GRIDS = {"uniform": _uniform_grid, "log_snr": _log_snr_grid}


def _ddpm_chain(sde: sde_lib.SDE, taus: Array) -> tuple[discrete.DDPMChain, Array]:
  """The DDPM chain observing `sde` at times taus [N], and rescalings c_k (k = 0..N).

  abar_k = SNR(tau_k) / (1 + SNR(tau_k)) = sigmoid(2 lambda(tau_k)), so x_k = sqrt(abar_k) x_0 +
  sqrt(1 - abar_k) z and x(tau_k) = c_k x_k with c_k = alpha(tau_k) / sqrt(abar_k) have the same law,
  and grad log q(x_k) = c_k s(c_k x_k, tau_k). For VP, abar_k = alpha(tau_k)^2 and c_k = 1.
  Step 0 (the data, abar_0 = 1) is never evaluated.
  """
  log_snr = np.asarray(sde.marginal_lambda(taus), np.float64)
  log_abar = -np.logaddexp(0.0, -2.0 * log_snr)
  betas = -np.expm1(np.diff(log_abar, prepend=0.0))
  rescale = np.asarray(sde.marginal_coeffs(taus)[0], np.float64) * np.exp(-0.5 * log_abar)
  return discrete.DDPMChain(betas), jnp.asarray(np.concatenate([[1.0], rescale]), jnp.float32)


@functools.partial(jax.jit, static_argnames=("score_fn", "sde", "num_steps", "eps", "grid", "num_timesteps"))
def _ddpm_elbo(rng, x, *, score_fn, sde, num_steps, eps, grid, num_timesteps):
  with jax.ensure_compile_time_eval():
    taus = jnp.concatenate([jnp.zeros(1), DDPM_GRIDS[grid](sde, num_steps, eps)])
    chain, rescale = _ddpm_chain(sde, taus[1:])

  def x0_pred_fn(x_t, step):
    c = sde_lib.batch_broadcast(rescale[step].astype(x_t.dtype), x_t)
    score = c * score_fn(c * x_t, taus[step].astype(x_t.dtype))
    return chain.x0_from_score(x_t, score, step)

  terms = chain.elbo_terms(rng, x, x0_pred_fn, num_timesteps)
  return terms["reconstruction"] - terms["prior"] - terms["denoising"]


def ddpm_elbo(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, *, num_steps: int | None = None,
              eps: float = 1e-3, grid: str = "log_snr", num_timesteps: int | None = None) -> Array:
  """DDPM ELBO, nats [B] <= log p^DDPM(x) (THEORY.md §1): reconstruction - prior - denoising.

  The chain observes `sde` at `num_steps` (default sde.N) times DDPM_GRIDS[grid] in [eps, T]
  (`_ddpm_chain`); its decoder is N(x0_hat(x_1), beta_1 I) and its reverse kernels are
  q(x_{k-1} | x_k, x0_hat) with Tweedie's x0_hat = (x_k + (1 - abar_k) grad log q(x_k)) / sqrt(abar_k),
  the score read off `score_fn`. Any x0 predictor gives a valid bound; more steps on the "log_snr"
  grid tighten it. The denoising sum is exact over k, or a Monte-Carlo estimate from `num_timesteps`
  draws of k (DDPMChain.elbo_terms). The chain keeps 1 - abar_k in float64, so even sub-VP's
  1 - abar_1 ~ (beta_min eps)^2 ~ 1e-8 is resolved in float32.
  """
  if grid not in DDPM_GRIDS:
    raise ValueError(f"unknown grid {grid!r}; choose from {sorted(DDPM_GRIDS)}")
  return _ddpm_elbo(rng, x, score_fn=score_fn, sde=sde, num_steps=num_steps or sde.N, eps=eps, grid=grid,
                    num_timesteps=num_timesteps)


def ddpm_elbo_bpd(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, *,
                  inverse_scaler: Callable[[Array], Array], **ddpm_options) -> Array:
  """Upper bound on bits/dim [B] from the DDPM ELBO (`ddpm_elbo`, then `bits_per_dim`)."""
  lower_bound = ddpm_elbo(rng, score_fn, sde, x, **ddpm_options)
  return bits_per_dim(lower_bound, x.shape[1:], inverse_scaler=inverse_scaler)
