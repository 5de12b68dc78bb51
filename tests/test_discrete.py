"""The DDPM chain: posterior by Bayes, parametrizations, ELBO against the oracle's exact log-likelihood."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import discrete
from score_sde import sde as sde_lib


@pytest.fixture
def chain():
  return discrete.DDPMChain.linear(beta_min=0.1, beta_max=20.0, N=50)


@pytest.mark.parametrize("t", [1, 2, 25, 50])
def test_posterior_matches_bayes_rule_numerically(chain, t):
  """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), integrated on a 1-D grid."""
  x0, x_t = 0.7, -0.3
  abar = chain.alphas_cumprod
  beta = chain.betas[t - 1]
  grid = np.linspace(-6, 6, 200001)
  log_prior = -0.5 * (grid - np.sqrt(abar[t - 1]) * x0) ** 2 / max(1 - abar[t - 1], 1e-300)
  log_lik = -0.5 * (x_t - np.sqrt(1 - beta) * grid) ** 2 / beta
  mean, var = chain.posterior_mean_variance(jnp.array([[x_t]]), jnp.array([[x0]]), jnp.array([t]))
  if t == 1:  # abar_0 = 1: the posterior is a point mass at x_0.
    assert float(mean[0, 0]) == pytest.approx(x0, abs=1e-4) and float(var[0]) == pytest.approx(0.0, abs=1e-12)
    return
  log_post = log_prior + log_lik
  weights = np.exp(log_post - log_post.max())
  weights /= weights.sum()
  numeric_mean = np.sum(weights * grid)
  numeric_var = np.sum(weights * (grid - numeric_mean) ** 2)
  assert float(mean[0, 0]) == pytest.approx(numeric_mean, abs=1e-4)
  assert float(var[0]) == pytest.approx(numeric_var, rel=1e-3)


def test_parametrizations_round_trip(chain):
  rng = np.random.RandomState(0)
  x_t = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  x0 = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  t = jnp.array([1, 5, 10, 20, 40, 50])
  eps = chain.eps_from_x0(x_t, x0, t)
  np.testing.assert_allclose(chain.x0_from_eps(x_t, eps, t), x0, rtol=1e-4, atol=1e-4)
  score = chain.score_from_eps(eps, t)
  np.testing.assert_allclose(chain.eps_from_score(score, t), eps, rtol=1e-6)
  np.testing.assert_allclose(chain.x0_from_score(x_t, score, t), x0, rtol=1e-4, atol=1e-4)
  # The noise that produced x_t is recovered exactly from (x_t, x_0).
  x_noisy, noise = chain.q_sample(jax.random.PRNGKey(0), x0, t)
  np.testing.assert_allclose(chain.eps_from_x0(x_noisy, x0, t), noise, rtol=1e-4, atol=1e-4)


def test_snr_decreases_and_chain_matches_vpsde(chain):
  snr = np.asarray(chain.snr(jnp.arange(1, chain.N + 1)))
  assert np.all(np.diff(snr) < 0)
  vp = sde_lib.VPSDE(N=50)
  np.testing.assert_array_equal(discrete.DDPMChain.from_sde(vp).betas, vp.discrete_betas)
  np.testing.assert_array_equal(discrete.DDPMChain.linear(N=50).betas, vp.discrete_betas)
  # The chain's abar_i tracks the continuous alpha(t_i)^2 on t_i = i T / (N - 1) (Song et al. 2021, App. B).
  vp, i = sde_lib.VPSDE(N=1000), np.array([0, 1, 500, 999])
  abar = discrete.DDPMChain.from_sde(vp).alphas_cumprod[i + 1]
  alpha = np.asarray(vp.marginal_coeffs(vp.discrete_time(i)))[0]
  np.testing.assert_allclose(np.log(abar), 2 * np.log(alpha), rtol=1e-2, atol=2e-4)


def test_denoising_term_equals_kl_between_posteriors(chain):
  rng = np.random.RandomState(1)
  x0 = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  x0_pred = x0 + 0.1 * jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  t = jnp.array([2, 10, 30, 50])
  x_t, _ = chain.q_sample(jax.random.PRNGKey(0), x0, t)
  mean_q, var = chain.posterior_mean_variance(x_t, x0, t)
  mean_p, _ = chain.posterior_mean_variance(x_t, x0_pred, t)
  var = var[:, None]
  np.testing.assert_allclose(chain.denoising_kl(x0, x0_pred, t), discrete.gaussian_kl(mean_q, var, mean_p, var),
                             rtol=1e-3, atol=1e-6)


def test_prior_kl_matches_closed_form(chain):
  x0 = jnp.array([[0.5, -1.0]])
  abar = chain.alphas_cumprod[-1]
  m2 = abar * np.array([0.25, 1.0])
  expected = np.sum(0.5 * (m2 + (1 - abar) - 1 - np.log(1 - abar)))
  assert float(chain.prior_kl(x0)[0]) == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_elbo_with_exact_posterior_is_a_lower_bound_that_tightens_with_more_steps(mixture2d):
  """E_data[ELBO] <= E_data[log p_model] <= E_data[log p_data] (Gibbs), for the oracle's denoiser.

  The model p(x_{t-1} | x_t) = q(x_{t-1} | x_t, E[x_0 | x_t]) has the exact mean but not the exact
  variance of the true reverse kernel; the gap vanishes as N grows (measured: 3.8, 1.7, 0.9 nats for
  N = 50, 200, 1000 on this mixture).
  """
  x0, _ = mixture2d.sample(jax.random.PRNGKey(0), 4000)
  log_p = mixture2d.log_prob(x0)

  def gap_of(chain, shrink=1.0):
    def denoiser(x_t, t):
      return shrink * chain.x0_from_score(x_t, mixture2d.score(x_t, chain, t), t)

    terms = jax.jit(lambda r, x: chain.elbo_terms(r, x, denoiser))(jax.random.PRNGKey(1), x0)
    return np.asarray(log_p - (terms["reconstruction"] - terms["prior"] - terms["denoising"]))

  coarse = gap_of(discrete.DDPMChain.linear(beta_min=0.1, beta_max=20.0, N=50))
  fine = gap_of(discrete.DDPMChain.linear(beta_min=0.1, beta_max=20.0, N=200))
  for gap in (coarse, fine):
    assert gap.mean() > 3 * gap.std() / np.sqrt(len(gap))  # strictly below the data log-likelihood
  assert fine.mean() < coarse.mean() - 1.0  # tighter with more steps
  assert fine.mean() < 2.5
  worse = gap_of(discrete.DDPMChain.linear(beta_min=0.1, beta_max=20.0, N=200), shrink=0.9)
  assert worse.mean() > fine.mean() + 0.1  # a worse denoiser gives a looser bound


def test_elbo_subsampled_timesteps_are_unbiased(mixture2d):
  chain = discrete.DDPMChain.linear(N=100)
  x0, _ = mixture2d.sample(jax.random.PRNGKey(0), 2000)
  denoiser = lambda x_t, t: chain.x0_from_score(x_t, 0.9 * mixture2d.score(x_t, chain, t), t)
  full = chain.elbo_terms(jax.random.PRNGKey(1), x0, denoiser)["denoising"]
  sub = chain.elbo_terms(jax.random.PRNGKey(2), x0, denoiser, num_timesteps=10)["denoising"]
  standard_error = np.sqrt(np.var(full) / len(full) + np.var(sub) / len(sub))
  assert abs(float(full.mean() - sub.mean())) < 4 * standard_error


def test_smld_sigmas_geometric_ascending_on_the_sde_grid():
  """One convention: sigma_i = sigma(t_i), t_i = i T / (N - 1), ascending (NCSN's label j is i = N - 1 - j)."""
  sigmas = discrete.smld_sigmas(0.01, 50.0, 10)
  assert sigmas[0] == pytest.approx(0.01) and sigmas[-1] == pytest.approx(50.0)
  ratios = sigmas[1:] / sigmas[:-1]
  np.testing.assert_allclose(ratios, ratios[0])
  assert ratios[0] > 1
  ve = sde_lib.VESDE(0.01, 50.0, 10)
  np.testing.assert_array_equal(sigmas, ve.discrete_sigmas)
  np.testing.assert_allclose(sigmas, ve.sigma(ve.discrete_time(np.arange(10))), rtol=1e-5)
