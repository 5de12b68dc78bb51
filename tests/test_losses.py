"""DSM losses against the oracle's irreducible floor; the optimisation step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from score_sde import discrete, losses, models
from score_sde import sde as sde_lib
from score_sde.train_state import TrainState

SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}
NUM = 40000


def _mean_and_error(values):
  values = np.asarray(values, np.float64)
  return values.mean(), values.std() / np.sqrt(len(values))


@pytest.mark.parametrize("name", sorted(SDES))
def test_dsm_loss_of_exact_score_equals_irreducible_floor(name, mixture2d):
  """E||sigma s* + z||^2 = D - E sigma^2 ||s*(x_t)||^2, since E[z | x_t] = -sigma s*(x_t).

  The right side is estimated independently from exact samples of p_t.
  """
  sde = SDES[name]()
  x0, _ = mixture2d.sample(jax.random.PRNGKey(0), NUM)
  loss, loss_error = _mean_and_error(losses.dsm_loss(jax.random.PRNGKey(1), mixture2d.score_fn(sde), sde, x0))
  t = jax.random.uniform(jax.random.PRNGKey(2), (NUM,), minval=1e-5, maxval=1.0)
  x_t, _ = mixture2d.sample(jax.random.PRNGKey(3), NUM, sde=sde, t=t)
  _, sigma = sde.marginal_coeffs(t)
  floor_terms = 0.5 * (mixture2d.dim - sigma**2 * jnp.sum(mixture2d.score(x_t, sde, t) ** 2, -1))
  floor, floor_error = _mean_and_error(floor_terms)
  assert abs(loss - floor) < 4 * np.hypot(loss_error, floor_error)
  assert floor > 0.05  # the floor is far from zero: a loss of zero would be wrong


@pytest.mark.parametrize("name", sorted(SDES))
def test_dsm_loss_grows_by_the_score_error(name, mixture2d):
  """For s = s* + delta: E loss(s) - E loss(s*) = 0.5 E sigma^2 ||delta||^2 > 0 (the cross term vanishes)."""
  sde = SDES[name]()
  x0, _ = mixture2d.sample(jax.random.PRNGKey(0), NUM)
  delta = jnp.array([0.3, -0.2])
  exact = losses.dsm_loss(jax.random.PRNGKey(1), mixture2d.score_fn(sde), sde, x0)
  perturbed_fn = lambda x, t: mixture2d.score(x, sde, t) + delta
  perturbed = losses.dsm_loss(jax.random.PRNGKey(1), perturbed_fn, sde, x0)
  excess, excess_error = _mean_and_error(perturbed - exact)
  t = jax.random.uniform(jax.random.split(jax.random.PRNGKey(1))[0], (NUM,), minval=1e-5, maxval=1.0)
  expected = float(jnp.mean(0.5 * sde.marginal_coeffs(t)[1] ** 2) * jnp.sum(delta**2))
  assert excess > 5 * excess_error
  assert excess == pytest.approx(expected, abs=4 * excess_error + 1e-3 * expected)


@pytest.mark.parametrize("name", sorted(SDES))
def test_importance_sampled_likelihood_weighting_is_unbiased_with_lower_variance(name, mixture2d):
  sde = SDES[name]()
  x0, _ = mixture2d.sample(jax.random.PRNGKey(0), NUM)
  score_fn = mixture2d.score_fn(sde)
  plain = losses.dsm_loss(jax.random.PRNGKey(1), score_fn, sde, x0, likelihood_weighting=True)
  weighted = losses.dsm_loss(jax.random.PRNGKey(2), score_fn, sde, x0, likelihood_weighting=True,
                             importance_weighting=True)
  plain_mean, plain_error = _mean_and_error(plain)
  weighted_mean, weighted_error = _mean_and_error(weighted)
  assert abs(plain_mean - weighted_mean) < 4 * np.hypot(plain_error, weighted_error)
  assert weighted_error <= plain_error * 1.01


def _vp_proposal_cdf(sde, eps):
  """For VP, int_eps^t g^2 / sigma^2 = [log(expm1(u))]_eps^t with u(t) = -2 log alpha_t (closed form)."""
  u = lambda t: -2 * (-0.25 * t**2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0)
  return lambda t: np.log(np.expm1(u(t))) - np.log(np.expm1(u(eps)))


@pytest.mark.parametrize("name", sorted(SDES))
def test_importance_normaliser_is_the_integral_of_the_proposal(name):
  sde = SDES[name]()
  eps = 1e-5
  _, normaliser = sde.likelihood_weighting_time(jnp.zeros((1,)), eps)
  grid = np.geomspace(eps, 1.0, 200001)
  _, diffusion = sde.sde(jnp.zeros((len(grid), 1)), jnp.asarray(grid, jnp.float32))
  density = np.asarray(diffusion, np.float64) ** 2 / np.asarray(sde.marginal_coeffs(jnp.asarray(grid))[1],
                                                                 np.float64) ** 2
  trapezoid = np.sum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))
  assert float(normaliser) == pytest.approx(trapezoid, rel=2e-3)
  if name == "vp":
    assert float(normaliser) == pytest.approx(_vp_proposal_cdf(sde, eps)(1.0), rel=1e-4)


def test_importance_times_follow_the_proposal_density():
  sde = sde_lib.VPSDE()
  t, normaliser = sde.likelihood_weighting_time(jax.random.uniform(jax.random.PRNGKey(0), (200000,)), 1e-5)
  cdf = _vp_proposal_cdf(sde, 1e-5)
  assert bool(jnp.all((t >= 1e-5) & (t <= 1.0)))
  for threshold in (1e-4, 1e-3, 1e-2, 0.1, 0.5):
    assert float(jnp.mean(t < threshold)) == pytest.approx(cdf(threshold) / float(normaliser), abs=0.005)


def test_smld_discrete_loss_of_exact_score_equals_floor(mixture2d):
  """VE's SMLD sigmas are sigma(t_i), so the exact continuous score is the exact discrete one."""
  sde = sde_lib.VESDE(N=100)
  x0, _ = mixture2d.sample(jax.random.PRNGKey(0), NUM)
  loss, loss_error = _mean_and_error(losses.discrete_loss(jax.random.PRNGKey(1), mixture2d.score_fn(sde), sde, x0))
  index = jax.random.randint(jax.random.PRNGKey(2), (NUM,), 0, sde.N)
  t = index / (sde.N - 1)
  x_t, _ = mixture2d.sample(jax.random.PRNGKey(3), NUM, sde=sde, t=t)
  sigma = jnp.asarray(sde.discrete_sigmas)[index]
  floor, floor_error = _mean_and_error(0.5 * (2 - sigma**2 * jnp.sum(mixture2d.score(x_t, sde, t) ** 2, -1)))
  assert abs(loss - floor) < 4 * np.hypot(loss_error, floor_error)


def test_ddpm_discrete_loss_is_noise_prediction_error():
  """Through get_score_fn(continuous=False), the VP discrete loss is Ho et al.'s 0.5 ||eps_theta - z||^2."""
  sde = sde_lib.VPSDE(N=50)
  scale = 0.3
  eps_model = lambda x, labels: scale * x * (1 + labels[:, None])
  score_fn = models.score_from_model_fn(sde, eps_model, continuous=False)
  x0 = jnp.ones((5, 2))
  rng = jax.random.PRNGKey(0)
  loss = losses.discrete_loss(rng, score_fn, sde, x0)
  i_rng, z_rng = jax.random.split(rng)
  index = jax.random.randint(i_rng, (5,), 0, sde.N)
  z = jax.random.normal(z_rng, x0.shape)
  abar = discrete.DDPMChain.from_sde(sde).alphas_cumprod[np.asarray(index) + 1]  # grid index i is chain step i + 1
  x_i = np.sqrt(abar)[:, None] * x0 + np.sqrt(1 - abar)[:, None] * z
  expected = 0.5 * jnp.sum((eps_model(x_i, index.astype(jnp.float32)) - z) ** 2, -1)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_loss_configuration_errors():
  with pytest.raises(ValueError, match="no discrete chain"):
    losses.discrete_loss(jax.random.PRNGKey(0), lambda x, t: x, sde_lib.subVPSDE(), jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="importance_weighting"):
    losses.dsm_loss(jax.random.PRNGKey(0), lambda x, t: x, sde_lib.VPSDE(), jnp.ones((2, 2)),
                    importance_weighting=True)
  config = base.get_base_config()
  config.optim.optimizer = "Adamm"
  with pytest.raises(ValueError, match="Adamm"):
    losses.get_optimizer(config)


def _mlp_config(warmup=0, lr=1e-2):
  config = base.get_base_config()
  config.model.update(name="mlp", nf=64, num_res_blocks=2, embedding_type="positional", dropout=0.0)
  config.optim.update(warmup=warmup, lr=lr)
  return config


def test_step_fn_trains_on_the_mixture_and_updates_ema(mixture2d):
  config = _mlp_config()
  sde = sde_lib.VPSDE()
  model = models.get_model(config)
  optimizer = losses.get_optimizer(config)
  state = TrainState.create(models.init_params(jax.random.PRNGKey(0), model, (2,)), optimizer)
  ema_rate = 0.9
  train_step = jax.jit(losses.get_step_fn(sde, model, optimizer, train=True, ema_rate=ema_rate))
  eval_step = jax.jit(losses.get_step_fn(sde, model, optimizer, train=False))
  data, _ = mixture2d.sample(jax.random.PRNGKey(1), 4096)
  batch = {"image": data}
  _, before = eval_step(state, batch, jax.random.PRNGKey(2))
  previous = state
  for step in range(150):
    previous, state = state, train_step(state, {"image": data[(step % 16) * 256:(step % 16 + 1) * 256]},
                                        jax.random.PRNGKey(step))[0]
  expected_ema = jax.tree.map(lambda e, p: ema_rate * e + (1 - ema_rate) * p, previous.ema_params, state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.ema_params, expected_ema)
  assert int(state.step) == 150
  same_state, after = eval_step(state, batch, jax.random.PRNGKey(2))
  jax.tree.map(np.testing.assert_array_equal, same_state, state)
  assert float(after["loss"]) < 0.8 * float(before["loss"])


def test_warmup_starts_from_zero_learning_rate():
  config = _mlp_config(warmup=10)
  model = models.get_model(config)
  optimizer = losses.get_optimizer(config)
  state = TrainState.create(models.init_params(jax.random.PRNGKey(0), model, (2,)), optimizer)
  step = losses.get_step_fn(sde_lib.VPSDE(), model, optimizer, train=True)
  new_state, metrics = step(state, {"image": jnp.ones((8, 2))}, jax.random.PRNGKey(1))
  assert float(metrics["grad_norm"]) > 0
  jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)
  newer_state, _ = step(new_state, {"image": jnp.ones((8, 2))}, jax.random.PRNGKey(2))
  assert optax.global_norm(jax.tree.map(jnp.subtract, newer_state.params, new_state.params)) > 0
