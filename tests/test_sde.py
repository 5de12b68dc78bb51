"""SDEs against Monte Carlo, closed forms and the reference discretizations."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import sde as sde_lib
from score_sde import testing

SDES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}


def _simulate_forward(sde, x0, t_end, num_paths, num_steps, rng):
  """Euler-Maruyama paths of the forward SDE from a fixed x0 to t_end."""
  dt = t_end / num_steps
  x = jnp.broadcast_to(x0, (num_paths,) + x0.shape[1:])

  def step(x, inputs):
    t, key = inputs
    drift, diffusion = sde.sde(x, jnp.full((num_paths,), t))
    return x + drift * dt + diffusion[:, None] * np.sqrt(dt) * jax.random.normal(key, x.shape), None

  times = jnp.arange(num_steps) * dt
  x, _ = jax.lax.scan(step, x, (times, jax.random.split(rng, num_steps)))
  return x


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("t_end", [0.3, 1.0])
def test_marginal_prob_matches_simulated_forward_sde(name, t_end):
  sde = SDES[name]()
  x0 = jnp.array([[1.0, -0.5]])
  paths = _simulate_forward(sde, x0, t_end, num_paths=20000, num_steps=2000, rng=jax.random.PRNGKey(0))
  mean, std = sde.marginal_prob(x0, jnp.array([t_end]))
  std = float(std[0])
  # Sampling error of the mean is std / sqrt(n); of the std about std / sqrt(2n); plus O(dt) bias.
  n = paths.shape[0]
  np.testing.assert_allclose(paths.mean(0), mean[0], atol=5 * std / np.sqrt(n) + 2e-3 * (1 + std))
  np.testing.assert_allclose(paths.std(0), std, rtol=5 / np.sqrt(2 * n) + 2e-3)


@pytest.mark.parametrize("name", sorted(SDES))
def test_prior_logp_integrates_to_one(name):
  sde = SDES[name]()
  half_width = 8 * sde.prior_std
  grid = np.linspace(-half_width, half_width, 801)
  dx = grid[1] - grid[0]
  xx, yy = np.meshgrid(grid, grid)
  points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
  mass_2d = float(jnp.sum(jnp.exp(sde.prior_logp(points)))) * dx**2
  mass_1d = float(jnp.sum(jnp.exp(sde.prior_logp(jnp.asarray(grid[:, None], jnp.float32))))) * dx
  assert mass_1d == pytest.approx(1.0, abs=1e-4)
  assert mass_2d == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", sorted(SDES))
def test_prior_sampling_matches_prior_std(name):
  sde = SDES[name]()
  z = sde.prior_sampling(jax.random.PRNGKey(0), (4000, 8))
  assert z.shape == (4000, 8)
  assert float(z.std()) == pytest.approx(sde.prior_std, rel=0.03)


def test_vp_discretize_is_the_ddpm_transition():
  N = 1000
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=N)
  i = np.array([0, 1, 500, 999])
  expected_beta = 0.1 / N + i * (20.0 - 0.1) / (N * (N - 1))
  x = jnp.array(np.random.RandomState(0).normal(size=(4, 3)), jnp.float32)
  f, G = sde.discretize(x, jnp.asarray(i / (N - 1), jnp.float32))
  np.testing.assert_allclose(G**2, expected_beta, rtol=1e-5)
  np.testing.assert_allclose(x + f, np.sqrt(1 - expected_beta)[:, None] * np.asarray(x), rtol=1e-5, atol=1e-6)


def test_ve_discretize_is_the_smld_transition():
  N = 100
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=N)
  t = jnp.arange(N, dtype=jnp.float32) / (N - 1)
  x = jnp.ones((N, 2))
  f, G = sde.discretize(x, t)
  np.testing.assert_array_equal(f, 0.0)
  # Variances telescope: sum_{j <= i} G_j^2 = sigma_i^2, the SMLD noise level of step i.
  np.testing.assert_allclose(np.cumsum(np.asarray(G, np.float64) ** 2), sde.discrete_sigmas**2, rtol=1e-4)
  np.testing.assert_allclose(sde.discrete_sigmas, np.asarray(sde.marginal_coeffs(t)[1]), rtol=1e-4)


@pytest.mark.parametrize("name", sorted(SDES))
def test_discretize_between_two_times_is_the_exact_kernel(name):
  """discretize(x, t, s): x_t = x_s + f + G z with f = (a - 1) x_s, G = b, so that p_0s maps exactly onto p_0t:
  a alpha_s = alpha_t and a^2 sigma_s^2 + G^2 = sigma_t^2. On the VE grid it is the SMLD chain step."""
  sde = SDES[name]()
  t, s = jnp.full((3,), 0.6), jnp.full((3,), 0.35)
  x = jnp.array(np.random.RandomState(0).normal(size=(3, 2)), jnp.float32)
  f, G = sde.discretize(x, t, s)
  (alpha_t, sigma_t), (alpha_s, sigma_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(s)
  a = alpha_t / alpha_s
  np.testing.assert_allclose(x + f, a[:, None] * x, rtol=1e-5)
  np.testing.assert_allclose(a**2 * sigma_s**2 + G**2, sigma_t**2, rtol=1e-4)
  if name == "ve":
    i = np.array([1, 500, 999])
    chain_f, chain_G = sde.discretize(x, sde.discrete_time(i))
    f, G = sde.discretize(x, sde.discrete_time(i), sde.discrete_time(i - 1))
    np.testing.assert_allclose(G, chain_G, rtol=1e-4)
    np.testing.assert_array_equal(f, chain_f)


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_drift_and_diffusion(name, probability_flow, mixture2d):
  sde = SDES[name]()
  score_fn = mixture2d.score_fn(sde)
  x, _ = mixture2d.sample(jax.random.PRNGKey(0), 16)
  t = jax.random.uniform(jax.random.PRNGKey(1), (16,), minval=1e-3, maxval=1.0)
  reverse = sde.reverse(score_fn, probability_flow=probability_flow)
  drift, diffusion = reverse.sde(x, t)
  f, g = sde.sde(x, t)
  coeff = 0.5 if probability_flow else 1.0
  np.testing.assert_allclose(drift, f - coeff * g[:, None] ** 2 * score_fn(x, t), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(diffusion, 0.0 if probability_flow else g, rtol=1e-6)
  rev_f, rev_G = reverse.discretize(x, t)
  fd, Gd = sde.discretize(x, t)
  np.testing.assert_allclose(rev_f, fd - coeff * Gd[:, None] ** 2 * score_fn(x, t), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rev_G, 0.0 if probability_flow else Gd, rtol=1e-6)
  assert reverse.T == sde.T and reverse.N == sde.N


def test_subvp_std_below_vp_std():
  t = jnp.linspace(1e-3, 1.0, 50)
  _, vp_std = sde_lib.VPSDE().marginal_coeffs(t)
  _, subvp_std = sde_lib.subVPSDE().marginal_coeffs(t)
  assert bool(jnp.all(subvp_std < vp_std))


@pytest.mark.parametrize("name", sorted(SDES))
def test_subvp_and_vp_diffusion_consistent_with_marginal_variance(name):
  """d sigma_t^2 / dt = 2 (d log alpha / dt) sigma_t^2 + g^2 for a linear SDE with f = (d log alpha/dt) x."""
  sde = SDES[name]()
  t = jnp.linspace(0.05, 0.95, 7)
  var = lambda s: sde.marginal_coeffs(s)[1] ** 2
  log_alpha = lambda s: jnp.log(sde.marginal_coeffs(s)[0])
  dvar = jax.vmap(jax.grad(lambda s: var(s[None])[0]))(t)
  dlog_alpha = jax.vmap(jax.grad(lambda s: log_alpha(s[None])[0]))(t)
  _, g = sde.sde(jnp.zeros((7, 1)), t)
  np.testing.assert_allclose(dvar, 2 * dlog_alpha * var(t) + g**2, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SDES))
def test_inverse_lambda_inverts_marginal_lambda(name):
  sde = SDES[name]()
  t = jnp.linspace(1e-3, 1.0, 33)
  np.testing.assert_allclose(sde.inverse_lambda(sde.marginal_lambda(t)), t, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", sorted(SDES))
def test_dtype_preserved_and_jit_vmap_safe(name, mixture2d):
  sde = SDES[name]()
  with jax.enable_x64(True):
    x = jnp.ones((3, 4, 4, 1), jnp.float64)
    t = jnp.full((3,), 0.5, jnp.float64)
    outputs = [*sde.sde(x, t), *sde.marginal_prob(x, t), *sde.discretize(x, t), sde.prior_logp(x)]
    assert all(o.dtype == jnp.float64 for o in outputs)
  x = jnp.ones((3, 4, 4, 1), jnp.float32)
  t = jnp.full((3,), 0.5, jnp.float32)
  outputs = [*sde.sde(x, t), *sde.marginal_prob(x, t), *sde.discretize(x, t), sde.prior_logp(x)]
  assert all(o.dtype == jnp.float32 for o in outputs)
  jitted = jax.jit(lambda x, t: sde.marginal_prob(x, t))
  np.testing.assert_allclose(jitted(x, t)[0], sde.marginal_prob(x, t)[0])
  per_example = jax.vmap(lambda xi, ti: sde.sde(xi[None], ti[None])[0][0])(x, t)
  np.testing.assert_allclose(per_example, sde.sde(x, t)[0], rtol=1e-6)


def test_get_sde_builds_configured_sde_and_rejects_unknown_names():
  config = ml_collections.ConfigDict({"training": {"sde": "vesde"},
                                      "model": {"sigma_min": 0.02, "sigma_max": 10.0, "num_scales": 50,
                                                "beta_min": 0.1, "beta_max": 20.0}})
  sde = sde_lib.get_sde(config)
  assert isinstance(sde, sde_lib.VESDE) and sde.N == 50 and sde.sigma_max == 10.0
  config.training.sde = "vpsdee"
  with pytest.raises(ValueError, match="vpsdee"):
    sde_lib.get_sde(config)


def test_oracle_score_is_gradient_of_oracle_log_prob(mixture2d):
  sde = sde_lib.VPSDE()
  x, _ = mixture2d.sample(jax.random.PRNGKey(0), 8)
  t = jnp.linspace(0.01, 1.0, 8)
  grad = jax.vmap(jax.grad(lambda xi, ti: mixture2d.log_prob(xi[None], sde, ti[None])[0]))(x, t)
  np.testing.assert_allclose(mixture2d.score(x, sde, t), grad, rtol=1e-4, atol=1e-5)


def test_oracle_diffused_samples_match_marginal_moments(mixture2d):
  sde = sde_lib.VESDE()
  t = jnp.full((20000,), 0.4)
  x, _ = mixture2d.sample(jax.random.PRNGKey(0), 20000, sde=sde, t=t)
  mean0 = np.sum(mixture2d.weights[:, None] * mixture2d.means, 0)
  np.testing.assert_allclose(x.mean(0), mean0, atol=0.05)
  second0 = np.sum(mixture2d.weights[:, None] * (mixture2d.means**2 + mixture2d.stds[:, None] ** 2), 0)
  sigma = float(sde.marginal_coeffs(t[:1])[1][0])
  np.testing.assert_allclose((x**2).mean(0), second0 + sigma**2, rtol=0.05)


def test_sliced_wasserstein_separates_distributions():
  rng = jax.random.PRNGKey(0)
  a = jax.random.normal(jax.random.PRNGKey(1), (2000, 4))
  b = jax.random.normal(jax.random.PRNGKey(2), (2000, 4))
  shifted = b + 1.0
  same = float(testing.sliced_wasserstein(rng, a, b))
  different = float(testing.sliced_wasserstein(rng, a, shifted))
  assert same < 0.1 < different
  # A shift by the all-ones vector moves each unit projection by its sum: RMS over directions = 1.
  assert different == pytest.approx(1.0, rel=0.25)


def test_vpsde_rejects_a_chain_with_betas_outside_the_unit_interval():
  with pytest.raises(ValueError, match="beta_max=20.0, N=10"):
    sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=10)
