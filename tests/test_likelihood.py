"""Likelihood, bits/dim and variational bounds against closed forms and the Gaussian-mixture oracle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_sde import likelihood, schedules
from score_sde import sde as sde_lib
from score_sde import testing

SDES = {
    "vp": lambda: sde_lib.VPSDE(),
    "subvp": lambda: sde_lib.subVPSDE(),
    "ve": lambda: sde_lib.VESDE(),
}
EPS = 1e-5


def _at(x, t):
  return jnp.full((x.shape[0],), t, x.dtype)


def _exact_prior(mixture, sde):
  """log p_T of the diffused mixture: the ODE then returns log p_eps exactly (no prior mismatch)."""
  return lambda z: mixture.log_prob(z, sde, _at(z, sde.T))


@pytest.mark.parametrize("solver", ["tsit5", "bosh3"])
@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_divergence_recovers_oracle_log_density(name, solver, mixture2d):
  """estimator="exact" with the exact score: |logp - log p_eps(x)| < 0.01 nats in 2-D, and nfe counts."""
  sde = SDES[name]()
  evaluations = []
  exact_score = mixture2d.score_fn(sde)

  def counted_score(x, t):
    jax.debug.callback(lambda: evaluations.append(1))
    return exact_score(x, t)

  x, _ = mixture2d.sample(jax.random.PRNGKey(0), 16)
  logp, nfe = likelihood.log_likelihood(jax.random.PRNGKey(1), counted_score, sde, x, "exact",
                                        rtol=1e-5, atol=1e-5, eps=EPS, prior_logp=_exact_prior(mixture2d, sde),
                                        solver=solver)
  jax.block_until_ready(logp)
  expected = mixture2d.log_prob(x, sde, _at(x, EPS))
  assert logp.shape == (16,)
  np.testing.assert_allclose(logp, expected, atol=1e-2)
  assert int(nfe) == len(evaluations) > 6


@pytest.mark.parametrize("estimator", ["rademacher", "gaussian"])
def test_hutchinson_estimators_are_unbiased_in_32d(estimator):
  """Mean over 64 independent probes lies within 3 standard errors of the oracle log p_eps (VP, 32-D)."""
  mixture = testing.high_dim_mixture(dim=32)
  sde = sde_lib.VPSDE()
  points, _ = mixture.sample(jax.random.PRNGKey(0), 4)
  num_repeats = 64
  x = jnp.tile(points, (num_repeats, 1))  # row r * 4 + i is point i with its own probe
  logp, _ = likelihood.log_likelihood(jax.random.PRNGKey(1), mixture.score_fn(sde), sde, x, estimator,
                                      prior_logp=_exact_prior(mixture, sde))
  draws = np.asarray(logp).reshape(num_repeats, 4)
  std_err = draws.std(axis=0, ddof=1) / np.sqrt(num_repeats)
  expected = np.asarray(mixture.log_prob(points, sde, _at(points, EPS)))
  assert np.all(std_err > 1e-3)  # the probes are random
  assert np.all(np.abs(draws.mean(axis=0) - expected) < 3 * std_err + 2e-3)


def test_error_norms():
  """batch_rms: RMS of every component; per_example: the worst example's state RMS or |log-density error|."""
  state = jnp.array([[3.0, 4.0], [0.0, 0.0], [1.0, 1.0]])  # per-example RMS 3.536, 0, 1
  log_density = jnp.array([0.5, 2.0, 0.0])
  np.testing.assert_allclose(likelihood.ERROR_NORMS["batch_rms"]((state, log_density)),
                             np.sqrt((9 + 16 + 1 + 1 + 0.25 + 4) / 9), rtol=1e-6)
  np.testing.assert_allclose(likelihood.ERROR_NORMS["per_example"]((state, log_density)), np.sqrt(12.5), rtol=1e-6)
  np.testing.assert_allclose(likelihood.ERROR_NORMS["per_example"]((state, 10 * log_density)), 20.0, rtol=1e-6)


def test_per_example_control_holds_each_example_to_the_tolerance():
  """One atypical point among 63 typical ones (VP, 32-D mixture, exact trace, rtol = atol = 1e-4): under
  the batch RMS norm the typical points dilute the atypical one's error (3.3 nats when written); the
  per-example norm takes more steps and holds every point within 0.05 nats (0.02 when written)."""
  mixture = testing.high_dim_mixture(dim=32)
  sde = sde_lib.VPSDE()
  points, _ = mixture.sample(jax.random.PRNGKey(0), 63)
  x = jnp.concatenate([jnp.ones((1, 32)), points])  # out in the tails: log p_eps = -104 nats
  expected = np.asarray(mixture.log_prob(x, sde, _at(x, EPS)))
  errors, nfes = {}, {}
  for error_norm in ("batch_rms", "per_example"):
    logp, nfe = likelihood.log_likelihood(jax.random.PRNGKey(1), mixture.score_fn(sde), sde, x, "exact", rtol=1e-4,
                                          atol=1e-4, eps=EPS, prior_logp=_exact_prior(mixture, sde),
                                          error_norm=error_norm)
    errors[error_norm], nfes[error_norm] = np.abs(np.asarray(logp) - expected), int(nfe)
  assert nfes["per_example"] > nfes["batch_rms"]
  assert errors["batch_rms"][0] > 1.0
  assert errors["per_example"].max() < 0.05


def test_unknown_error_norm_is_rejected(mixture2d):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="'max'"):
    likelihood.log_likelihood(jax.random.PRNGKey(0), mixture2d.score_fn(sde), sde, jnp.zeros((2, 2)),
                              error_norm="max")


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_solver_without_error_estimate_or_unknown_is_rejected(solver, mixture2d):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match=f"unknown adaptive ODE solver '{solver}'"):
    likelihood.log_likelihood(jax.random.PRNGKey(0), mixture2d.score_fn(sde), sde, jnp.zeros((2, 2)), solver=solver)


def test_unknown_estimator_is_rejected(mixture2d):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="'hutch'"):
    likelihood.log_likelihood(jax.random.PRNGKey(0), mixture2d.score_fn(sde), sde, jnp.zeros((2, 2)), "hutch")


SCALERS = {  # inverse scalers from model space to [0, 1] data
    "unit": lambda x: x,
    "centered": lambda x: (x + 1.0) / 2.0,
}


@pytest.mark.parametrize("name, log_volume", [("unit", 0.0), ("centered", np.log(2.0))])
def test_uniform_density_has_eight_bits_per_dim(name, log_volume):
  """Uniform data on 256 levels carry exactly 8 bits/dim: logp = -D log(model-space width)."""
  shape = (3, 4, 4)
  logp = jnp.full((5,), -np.prod(shape) * log_volume, jnp.float32)
  np.testing.assert_allclose(likelihood.bits_per_dim(logp, shape, inverse_scaler=SCALERS[name]), 8.0, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(SCALERS))
def test_dequantized_gaussian_bits_per_dim_match_discrete_entropy(name):
  """Pixels from a discretized N(128, 20^2): E bpd of the dequantized density = H(discrete) (+ ~1e-4)."""
  levels = np.arange(257.0)
  probs = np.diff(stats.norm.cdf(levels, loc=128.0, scale=20.0))
  probs /= probs.sum()
  entropy_bits = -np.sum(probs * np.log2(probs))
  num, dim = 4096, 16
  pixels = jax.random.choice(jax.random.PRNGKey(0), 256, (num, dim), p=jnp.asarray(probs))
  u = likelihood.dequantize(jax.random.PRNGKey(1), pixels)[0]  # [0, 1)
  inverse_scaler = SCALERS[name]
  scale = 1.0 / (inverse_scaler(1.0) - inverse_scaler(0.0))
  x = scale * (u - inverse_scaler(0.0))  # model space
  mean, std = scale * (0.5 - inverse_scaler(0.0)), scale * 20.0 / 256.0
  logp = jnp.sum(stats.norm.logpdf(np.asarray(x), loc=mean, scale=std), axis=-1)
  bpd = np.asarray(likelihood.bits_per_dim(logp, (dim,), inverse_scaler=inverse_scaler))
  assert np.all((0.0 <= u) & (u < 1.0))
  assert abs(bpd.mean() - entropy_bits) < 4 * bpd.std() / np.sqrt(num) + 1e-3


def test_bits_per_dim_rejects_nonlinear_scaler():
  with pytest.raises(ValueError, match="affine"):
    likelihood.bits_per_dim(jnp.zeros(2), (4,), inverse_scaler=jax.nn.sigmoid)


@pytest.mark.parametrize("name", sorted(SDES))
def test_continuous_elbo_is_tight_for_exact_score_and_below_for_a_wrong_one(name, mixture2d):
  """Exact score: ELBO = log p_eps up to Monte Carlo; a score off by 20% loses > 5 standard errors."""
  sde = SDES[name]()
  num = 2048
  x, _ = mixture2d.sample(jax.random.PRNGKey(0), num)
  exact_logp = mixture2d.log_prob(x, sde, _at(x, EPS))
  exact_score = mixture2d.score_fn(sde)
  gaps = {}
  for label, score_fn in [("exact", exact_score), ("wrong", lambda y, t: 0.8 * exact_score(y, t))]:
    bound = likelihood.elbo(jax.random.PRNGKey(1), score_fn, sde, x, num_t=16, eps=EPS)
    diff = np.asarray(exact_logp - bound)
    gaps[label] = (diff.mean(), diff.std() / np.sqrt(num))
  gap, std_err = gaps["exact"]
  assert abs(gap) < 3 * std_err + 5e-3
  wrong_gap, wrong_err = gaps["wrong"]
  assert wrong_gap > 5 * wrong_err
  assert wrong_gap > gap + 3 * np.hypot(std_err, wrong_err)


@pytest.mark.parametrize("name", ["vp", pytest.param("ve", marks=pytest.mark.slow)])
def test_ddpm_elbo_lies_below_log_likelihood_and_tightens_with_steps(name, mixture2d):
  """Mean over data of log p_0 - ELBO_N is >= 0 and decreases with N = 10, 100, 1000; bpd of the bound."""
  sde = SDES[name]()
  num = 1024
  x, _ = mixture2d.sample(jax.random.PRNGKey(0), num)
  exact_logp = mixture2d.log_prob(x)
  score_fn = mixture2d.score_fn(sde)
  gaps, errors = [], []
  for num_steps in (10, 100, 1000):
    bound = likelihood.ddpm_elbo(jax.random.PRNGKey(1), score_fn, sde, x, num_steps=num_steps)
    diff = np.asarray(exact_logp - bound)
    gaps.append(diff.mean())
    errors.append(diff.std() / np.sqrt(num))
  assert np.all(np.asarray(gaps) > -3 * np.asarray(errors))
  assert gaps[0] > gaps[1] + 3 * np.hypot(errors[0], errors[1])
  assert gaps[1] > gaps[2] + 3 * np.hypot(errors[1], errors[2])
  assert gaps[2] < 0.2
  bpd = likelihood.ddpm_elbo_bpd(jax.random.PRNGKey(1), score_fn, sde, x, num_steps=1000,
                                 inverse_scaler=SCALERS["centered"])
  np.testing.assert_allclose(bpd, -bound / (2 * np.log(2.0)) + 7.0, rtol=1e-5)


@pytest.mark.parametrize("call", [
    lambda sf, sde, x: likelihood.elbo(jax.random.PRNGKey(0), sf, sde, x, time_sampling="sobol"),
    lambda sf, sde, x: likelihood.ddpm_elbo(jax.random.PRNGKey(0), sf, sde, x, grid="sobol"),
])
def test_unknown_bound_options_are_rejected(call, mixture2d):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="'sobol'"):
    call(mixture2d.score_fn(sde), sde, jnp.zeros((2, 2)))


def test_ddpm_elbo_resolves_subvp_first_step_in_float32(mixture2d):
  """sub-VP at eps = 1e-3 has 1 - abar_1 ~ 1e-8, which 1 - float32(abar_1) would round to 0 (NaN bound)."""
  sde = sde_lib.subVPSDE()
  x, _ = mixture2d.sample(jax.random.PRNGKey(0), 512)
  gap = np.asarray(mixture2d.log_prob(x) - likelihood.ddpm_elbo(jax.random.PRNGKey(1), mixture2d.score_fn(sde), sde, x,
                                                                num_steps=100))
  assert np.all(np.isfinite(gap))
  assert gap.mean() > -3 * gap.std() / np.sqrt(len(gap))  # still a lower bound
  assert gap.mean() < 5.0


def test_dequantized_bits_per_dim_end_to_end():
  """Images of a discretized N(128, 20^2) under the exact Gaussian model: bpd = H(discrete) bits."""
  levels = np.arange(257.0)
  probs = np.diff(stats.norm.cdf(levels, loc=128.0, scale=20.0))
  probs /= probs.sum()
  entropy_bits = -np.sum(probs * np.log2(probs))
  model = testing.GaussianMixture(weights=np.ones(1), means=np.zeros((1, 4)), stds=np.full(1, 40.0 / 256.0),
                                  event_shape=(2, 2))
  sde = sde_lib.VPSDE()
  num = 256
  images = jax.random.choice(jax.random.PRNGKey(0), 256, (num, 2, 2), p=jnp.asarray(probs))
  bpd, nfe = likelihood.dequantized_bits_per_dim(
      jax.random.PRNGKey(1), model.score_fn(sde), sde, images, scaler=lambda u: 2.0 * u - 1.0,
      inverse_scaler=SCALERS["centered"], num_draws=2, estimator="exact", prior_logp=_exact_prior(model, sde))
  bpd = np.asarray(bpd)
  assert bpd.shape == (num,) and int(nfe) > 0
  assert abs(bpd.mean() - entropy_bits) < 4 * bpd.std() / np.sqrt(num) + 1e-2


@pytest.mark.parametrize("variables", ["log_snr", "ddim"])
@pytest.mark.parametrize("name", sorted(SDES))
def test_scaled_variables_recover_oracle_log_density(name, variables, mixture2d):
  """variables != "time" (y = x / alpha against tau) gives the same exact log p_eps(x) within 1e-3 nats."""
  sde = SDES[name]()
  x, _ = mixture2d.sample(jax.random.PRNGKey(0), 16)
  logp, nfe = likelihood.log_likelihood(jax.random.PRNGKey(1), mixture2d.score_fn(sde), sde, x, "exact",
                                        rtol=1e-5, atol=1e-5, eps=EPS, prior_logp=_exact_prior(mixture2d, sde),
                                        variables=variables)
  np.testing.assert_allclose(logp, mixture2d.log_prob(x, sde, _at(x, EPS)), atol=1e-3)
  assert int(nfe) > 6


def test_unknown_variables_are_rejected(mixture2d):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="unknown ODE variables"):
    likelihood.log_likelihood(jax.random.PRNGKey(0), mixture2d.score_fn(sde), sde, jnp.zeros((2, 2)),
                              variables="lambda")


def test_encoder_bound_recovers_the_discrete_likelihood_of_8_bit_atoms():
  """Data on three 8-bit atoms of P = (0.5, 0.3, 0.2), exact score and prior: the forward-process bound is
  -log P(x) up to the ODE's tolerance. Its gap, E[-log p(x | z)] + KL to the posterior, vanishes here:
  sigma_eps / alpha_eps = e^{-8} is 1/23 of the grid spacing and the atoms lie far apart (at VDM's e^{-6.65}
  a 3-sigma draw of z already costs the decoder ~0.1 nats)."""
  grid = likelihood.pixel_grid(lambda u: 2.0 * u - 1.0)
  atoms = grid[jnp.array([[10, 200], [128, 40], [250, 5]])]
  weights = np.array([0.5, 0.3, 0.2])
  mixture = testing.GaussianMixture(weights, np.asarray(atoms), np.zeros(3))
  sde = schedules.ScheduleSDE(schedules.LinearGamma(-16.0, 5.0))
  x = jnp.repeat(atoms, 16, axis=0)
  nll, nfe = likelihood.encoder_bound_nll(jax.random.PRNGKey(0), mixture.score_fn(sde), sde, x, grid=grid, eps=EPS,
                                          estimator="exact", rtol=1e-5, atol=1e-5, variables="ddim",
                                          prior_logp=_exact_prior(mixture, sde))
  per_atom = np.asarray(nll).reshape(3, 16)
  np.testing.assert_allclose(per_atom, np.broadcast_to(-np.log(weights)[:, None], (3, 16)), atol=0.02)
  assert int(nfe) > 6
  # The same through the model-space bin density that bits_per_dim reads: -log2 P / D.
  density = likelihood.bin_log_density(-nll, (2,), lambda u: 2.0 * u - 1.0)
  bpd = likelihood.bits_per_dim(density, (2,), inverse_scaler=lambda x: (x + 1.0) / 2.0)
  np.testing.assert_allclose(bpd, np.asarray(nll) / (2 * np.log(2.0)), rtol=1e-5)
