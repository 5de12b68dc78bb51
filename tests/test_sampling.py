"""Sampling API, predictor-corrector combinations, NFE accounting and the exact reductions of each step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from score_sde import discrete, sampling
from score_sde import sde as sde_lib
from score_sde.sampling import fast, pc, utils

SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}


class CountingScore:
  """Wraps a score function with a host callback that counts the evaluations actually executed."""

  def __init__(self, score_fn):
    self.score_fn = score_fn
    self.calls = 0

  def _tick(self, _):
    self.calls += 1
    return np.zeros((), np.float32)

  def __call__(self, x, t):
    tick = io_callback(self._tick, jax.ShapeDtypeStruct((), jnp.float32), x.reshape(-1)[0])
    return self.score_fn(x, t) + tick


def test_unknown_method_is_named_with_the_valid_ones(mixture2d):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match=r"'langevin_dynamics'.*'ddim'.*'pc'"):
    sampling.sample(jax.random.key(0), mixture2d.score_fn(sde), sde, (4, 2), method="langevin_dynamics")


def test_unknown_option_is_named_with_the_valid_ones(mixture2d):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match=r"\['n_step'\].*'pc'.*'corrector'.*'n_steps'"):
    sampling.sample(jax.random.key(0), mixture2d.score_fn(sde), sde, (4, 2), method="pc", n_step=2)


@pytest.mark.parametrize("method, options, name", [
    ("pc", {"predictor": "heun"}, "predictor 'heun'"),
    ("pc", {"corrector": "hmc"}, "corrector 'hmc'"),
    ("ode", {"solver": "rk4"}, "solver 'rk4'"),
    ("ode", {"solver": "euler"}, "num_steps"),
    ("sde", {"solver": "milstein"}, "solver 'milstein'"),
    ("dpm_solver", {"order": 4}, "order 4"),
    ("ddim", {"skip_type": "logsnr"}, "skip_type 'logsnr'"),
])
def test_bad_option_values_are_named(mixture2d, method, options, name):
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match=name):
    sampling.sample(jax.random.key(0), mixture2d.score_fn(sde), sde, (4, 2), method=method, **options)


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("corrector", sorted(pc.CORRECTORS))
@pytest.mark.parametrize("predictor", sorted(pc.PREDICTORS))
def test_every_predictor_corrector_sde_combination_runs(mixture2d, sde_name, predictor, corrector):
  """The 2021 reference crashed for sub-VP + Langevin; every combination must run and count its NFE.

  Run eagerly (no compilation) to keep 36 cases fast; the jitted path is exercised by the NFE tests.
  """
  sde = SDES[sde_name]()
  num_steps, n_steps = 6, 2
  with jax.disable_jit():
    x, nfe = sampling.sample(jax.random.key(0), mixture2d.score_fn(sde), sde, (64, 2), method="pc",
                             predictor=predictor, corrector=corrector, num_steps=num_steps, n_steps=n_steps)
  assert x.shape == (64, 2) and bool(jnp.all(jnp.isfinite(x)))
  expected = num_steps * (pc.PREDICTORS[predictor].nfe + n_steps * pc.CORRECTORS[corrector].nfe)
  assert int(nfe) == expected


@pytest.mark.parametrize("predictor, corrector, n_steps, denoise", [
    ("euler_maruyama", "langevin", 2, False),
    ("none", "ald", 3, False),
    ("ancestral", "none", 1, True),
    ("reverse_diffusion", "langevin", 1, True),
])
def test_pc_returns_the_number_of_score_evaluations_it_executes(mixture2d, predictor, corrector, n_steps, denoise):
  """One evaluation per predictor step and per corrector step (plus the Tweedie step), counted on the host."""
  sde = sde_lib.subVPSDE()
  score = CountingScore(mixture2d.score_fn(sde))
  num_steps = 7
  _, nfe = sampling.sample(jax.random.key(0), score, sde, (8, 2), method="pc", predictor=predictor,
                           corrector=corrector, n_steps=n_steps, num_steps=num_steps, denoise=denoise)
  jax.effects_barrier()
  per_step = pc.PREDICTORS[predictor].nfe + n_steps * pc.CORRECTORS[corrector].nfe
  assert score.calls == int(nfe) == num_steps * per_step + int(denoise)


@pytest.mark.parametrize("method, options", [
    ("ode", {"solver": "tsit5", "rtol": 1e-3, "atol": 1e-3}),
    ("ode", {"solver": "dopri5", "rtol": 1e-3, "atol": 1e-3}),
    ("ode", {"solver": "heun", "rtol": 1e-3, "atol": 1e-3}),
    ("ode", {"solver": "heun", "num_steps": 9}),
    ("ode", {"solver": "euler", "num_steps": 9, "denoise": True}),
    ("sde", {"solver": "euler", "num_steps": 9}),
    ("sde", {"solver": "heun", "num_steps": 9}),
    ("ddim", {"num_steps": 9, "eta": 0.5}),
    ("dpm_solver", {"order": 2, "num_steps": 4}),
    ("dpm_solver", {"order": 3, "num_steps": 3}),
    ("dpm_solver_pp", {"num_steps": 9}),
    ("edm_heun", {"num_steps": 4, "denoise": True}),
])
def test_solvers_return_the_number_of_score_evaluations_they_execute(mixture2d, method, options):
  """diffrax NFE from sol.stats (stages per step attempt + 1 for FSAL) equals the host-counted calls."""
  sde = sde_lib.VPSDE()
  score = CountingScore(mixture2d.score_fn(sde))
  _, nfe = sampling.sample(jax.random.key(0), score, sde, (8, 2), method=method, **options)
  jax.effects_barrier()
  assert score.calls == int(nfe)


def test_ancestral_step_is_ddpm_ancestral_sampling_on_the_ddpm_grid():
  """posterior_step with the DDPM chain's coefficients = (x_i + beta_i s) / sqrt(1 - beta_i) + sigma_i z,

  sigma_i^2 = beta_i (1 - abar_{i-1}) / (1 - abar_i) (THEORY.md §1)."""
  chain = discrete.DDPMChain.from_sde(sde_lib.VPSDE(N=1000))
  rng = np.random.RandomState(0)
  x, score, noise = (rng.normal(size=(5, 3)) for _ in range(3))
  for i in (2, 10, 500, 1000):  # chain steps t = 1..N
    abar, abar_prev, beta = chain.alphas_cumprod[i], chain.alphas_cumprod[i - 1], chain.betas[i - 1]
    got = pc.posterior_step(x, score, (np.sqrt(abar), np.sqrt(1 - abar)), (np.sqrt(abar_prev), np.sqrt(1 - abar_prev)),
                            noise)
    ddpm = (x + beta * score) / np.sqrt(1 - beta) + np.sqrt(beta * (1 - abar_prev) / (1 - abar)) * noise
    np.testing.assert_allclose(got, ddpm, rtol=1e-5, atol=1e-6)
    # The sampler's step is the chain's tested posterior q(x_{t-1} | x_t, x0_hat) with Tweedie's x0_hat.
    t = jnp.full((5,), i)
    mean, var = chain.posterior_mean_variance(jnp.asarray(x), chain.x0_from_score(jnp.asarray(x), score, t), t)
    np.testing.assert_allclose(got, mean + np.sqrt(np.asarray(var))[:, None] * noise, rtol=1e-4, atol=1e-5)


def test_ancestral_step_is_smld_ancestral_sampling_on_the_smld_grid():
  """posterior_step with alpha = 1: x_i + (sigma_i^2 - sigma_{i-1}^2) s + sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2) z."""
  sde = sde_lib.VESDE(N=1000)
  rng = np.random.RandomState(1)
  x, score, noise = (rng.normal(size=(5, 3)) for _ in range(3))
  for i in (1, 10, 500, 999):
    sig, sig_prev = sde.discrete_sigmas[i], sde.discrete_sigmas[i - 1]
    got = pc.posterior_step(x, score, (1.0, sig), (1.0, sig_prev), noise)
    smld = x + (sig**2 - sig_prev**2) * score + np.sqrt(sig_prev**2 * (sig**2 - sig_prev**2) / sig**2) * noise
    np.testing.assert_allclose(got, smld, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_ddim_limits_are_dpm_solver_1_and_ancestral_sampling(mixture2d, sde_name):
  """DDIM with eta = 0 is DPM-Solver-1; with eta = 1 it samples the posterior q(x_s | x_t, x0_hat) as ancestral."""
  sde = SDES[sde_name]()
  score_fn = mixture2d.score_fn(sde)
  x = 2.0 * jax.random.normal(jax.random.key(0), (16, 2))
  t, s, rng = jnp.float32(0.6), jnp.float32(0.45), jax.random.key(1)

  @jax.jit
  def steps(x):
    noise_pred = utils.noise_prediction(score_fn, sde, x, t)
    return (fast.ddim_step(rng, x, t, s, score_fn, sde, eta=0.0),
            fast.DPM_SOLVER_STEPS[1](x, t, s, score_fn, sde, noise_pred),
            fast.ddim_step(rng, x, t, s, score_fn, sde, eta=1.0),
            pc.ancestral(rng, x, t, s, score_fn, sde))

  ddim_0, dpm_1, ddim_1, ancestral = steps(x)
  np.testing.assert_allclose(ddim_0, dpm_1, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ddim_1, ancestral, rtol=1e-4, atol=1e-5)
  assert float(jnp.max(jnp.abs(ddim_0 - ddim_1))) > 1e-2  # the two limits differ: the check has teeth


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("skip_type", sorted(utils.SKIP_TYPES))
def test_time_grids_run_from_T_to_eps(sde_name, skip_type):
  sde = SDES[sde_name]()
  times = np.asarray(utils.time_grid(sde, 10, 1e-3, skip_type))
  assert times.shape == (11,) and times[0] == sde.T and np.isclose(times[-1], 1e-3)
  assert np.all(np.diff(times) < 0)
  if skip_type == "logSNR":
    steps = np.diff(np.asarray(sde.marginal_lambda(jnp.asarray(times))))
    np.testing.assert_allclose(steps, steps[0], rtol=2e-3)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_reverse_diffusion_is_the_reversed_sde_discretization(mixture2d, sde_name):
  """The predictor is x_s = x_t - rev_f + G z with (rev_f, G) = ReverseSDE.discretize(x_t, t, s); on the VE
  grid that step is SMLD's: G^2 = sigma_i^2 - sigma_{i-1}^2."""
  sde = SDES[sde_name](N=50)
  score_fn = mixture2d.score_fn(sde)
  x = 2.0 * jax.random.normal(jax.random.key(0), (16, 2))
  t, s, rng = sde.discrete_time(30), sde.discrete_time(29), jax.random.key(1)
  rev_f, G = sde.reverse(score_fn).discretize(x, jnp.full((16,), t), jnp.full((16,), s))
  expected = x - rev_f + G[:, None] * jax.random.normal(rng, x.shape)
  np.testing.assert_allclose(pc.reverse_diffusion(rng, x, t, s, score_fn, sde), expected, rtol=1e-5, atol=1e-5)
  if sde_name == "ve":
    np.testing.assert_allclose(G**2, sde.discrete_sigmas[30]**2 - sde.discrete_sigmas[29]**2, rtol=1e-4)
    np.testing.assert_allclose(G, sde.discretize(x, jnp.full((16,), t))[1], rtol=1e-4)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_annealed_langevin_step_size_follows_the_noise_level_not_the_score(sde_name):
  """ALD (score_sde's AnnealedLangevinDynamics): x + tau s + sqrt(2 tau) z with tau = 2 alpha (snr sigma_t)^2,
  alpha = 1 for VE and the DDPM 1 - beta_i for VP / sub-VP; scaling the score leaves tau unchanged."""
  sde = SDES[sde_name](N=1000)
  x = jax.random.normal(jax.random.key(0), (32, 3))
  rng, snr = jax.random.key(1), 0.2
  i = 600
  t, s = sde.discrete_time(i), sde.discrete_time(i - 1)
  alpha = pc.corrector_alpha(sde, t, s)
  if sde_name == "ve":
    assert float(alpha) == 1.0
  else:  # the reference's sde.alphas[i] = 1 - beta_i, up to O(1/N^2) (here 0.6% of beta_i ~ 0.012)
    np.testing.assert_allclose(1.0 - float(alpha), sde.discrete_betas[i], rtol=1e-2)
  sigma = float(sde.marginal_coeffs(jnp.full((1,), s))[1][0])
  z = jax.random.normal(rng, x.shape)
  for scale in (1.0, 10.0):
    score_fn = lambda y, _: -scale * y
    tau = 2.0 * float(alpha) * (snr * sigma) ** 2
    expected = x - scale * tau * x + np.sqrt(2.0 * tau) * z
    got = pc.annealed_langevin(rng, x, s, alpha, score_fn, sde, snr)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    langevin = pc.langevin(rng, x, s, alpha, score_fn, sde, snr)  # the other corrector scales with 1 / ||s||^2
    assert float(jnp.max(jnp.abs(langevin - got))) > 1e-3


@pytest.mark.parametrize("method, options, total", [
    ("pc", {"num_steps": 7, "n_steps": 2}, 7),
    ("ddim", {"num_steps": 5}, 5),
    ("ode", {"solver": "heun", "num_steps": 6}, 6),
    ("sde", {"solver": "euler", "num_steps": 4}, 4),
])
def test_progress_is_reported_once_per_sampler_step(mixture2d, method, options, total):
  sde = sde_lib.VPSDE()
  calls = []
  sampling.sample(jax.random.key(0), mixture2d.score_fn(sde), sde, (8, 2), method,
                  progress=lambda done, steps: calls.append((done, steps)), **options)
  jax.effects_barrier()
  assert sorted(calls) == [(i, total) for i in range(1, total + 1)]


def test_adaptive_ode_progress_reports_percent_of_the_interval(mixture2d):
  sde = sde_lib.VPSDE()
  calls = []
  _, nfe = sampling.sample(jax.random.key(0), mixture2d.score_fn(sde), sde, (8, 2), "ode", rtol=1e-3, atol=1e-3,
                           progress=lambda done, steps: calls.append((done, steps)))
  jax.effects_barrier()
  assert len(calls) == (int(nfe) - 1) // 6  # one per step attempt (Tsit5: 6 evaluations per step + 1)
  assert {steps for _, steps in calls} == {100} and max(done for done, _ in calls) == 100
