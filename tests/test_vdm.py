"""The VDM bound on the Gaussian-mixture oracle with the exact denoiser, and its variance-minimising schedule gradient."""
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_sde import configs_util, datasets, evaluate, likelihood, models, schedules, testing, train, vdm
from score_sde.models import scheduled

ROOT = pathlib.Path(__file__).resolve().parents[1]
GAMMA_MIN, GAMMA_MAX = -10.0, 0.0  # gamma(1) = 0 leaves a clear gap (~0.4 nats) to log p, so that test can fail
NUM_POINTS, REPEATS = 512, 64  # x fixed, (t, eps) drawn REPEATS times per point


@pytest.fixture(scope="module")
def data():
  x, _ = testing.two_dim_mixture().sample(jax.random.key(0), NUM_POINTS)
  return x, jnp.tile(x, (REPEATS, 1))


def learned(sharpness: float, features: int = 16):
  module = schedules.MonotoneGamma(GAMMA_MIN, GAMMA_MAX, features=features)
  params = module.init(jax.random.key(1), jnp.zeros(1))["params"]
  params = {**params, "l1": {"kernel": params["l1"]["kernel"] * 0.02},
            "l2": {"kernel": params["l2"]["kernel"] * sharpness, "bias": params["l2"]["bias"]}}
  return module, params


def exact_terms(sde, x, num_steps=0, seed=2):
  mixture = testing.two_dim_mixture()
  fn = jax.jit(lambda key: vdm.vdm_terms(key, vdm.eps_fn_of_score(sde, mixture.score_fn(sde)), sde, x, grid=None,
                                         t0=0.0, num_steps=num_steps))
  return jax.tree.map(np.asarray, fn(jax.random.key(seed)))


def test_continuous_elbo_depends_only_on_the_end_points_and_bounds_log_p(data):
  x, xs = data
  linear = schedules.ScheduleSDE(schedules.LinearGamma(GAMMA_MIN, GAMMA_MAX))
  module, params = learned(sharpness=8.0)
  curved = schedules.ScheduleSDE(schedules.Learned(module, params))
  t = jnp.linspace(0, 1, 11)
  assert np.max(np.abs(linear.log_snr(t) - curved.log_snr(t))) > 1.0  # really different schedules
  a, b = exact_terms(linear, xs), exact_terms(curved, xs)
  np.testing.assert_allclose(a.reconstruction + a.prior, b.reconstruction + b.prior, atol=1e-3)
  difference = a.total - b.total
  assert abs(difference.mean()) < 4 * difference.std() / np.sqrt(len(difference)), difference.mean()
  # -ELBO >= -log p on average over the same points, by more than the Monte-Carlo error.
  nll = -np.mean(np.asarray(testing.two_dim_mixture().log_prob(x)))
  for terms in (a, b):
    stderr = terms.total.std() / np.sqrt(len(terms.total))
    assert terms.total.mean() - nll > 4 * stderr, (terms.total.mean(), nll, stderr)


def test_discrete_elbo_approaches_the_continuous_one_from_above(data):
  _, xs = data
  sde = schedules.ScheduleSDE(schedules.LinearGamma(GAMMA_MIN, GAMMA_MAX))
  continuous = exact_terms(sde, xs).total
  means = {steps: exact_terms(sde, xs, num_steps=steps).total.mean() for steps in (5, 20, 200)}
  stderr = continuous.std() / np.sqrt(len(continuous))
  assert means[5] > means[20] > means[200], means
  assert means[20] - continuous.mean() > 4 * stderr, (means, continuous.mean())
  assert abs(means[200] - continuous.mean()) < (means[20] - continuous.mean()) / 4, (means, continuous.mean())


class ExactDenoiser(nn.Module):
  """The mixture's exact noise prediction at noise label 999 (gamma - gamma_min) / (gamma_max - gamma_min)."""

  mixture: testing.GaussianMixture

  @nn.compact
  def __call__(self, z, labels, train=False):
    gamma = GAMMA_MIN + labels / 999.0 * (GAMMA_MAX - GAMMA_MIN)
    alpha, sigma = jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))
    return -sigma[:, None] * self.mixture.score_at(z, alpha, sigma)


def _oracle_loss(mixture):
  module, params = learned(sharpness=1.0, features=8)
  model = scheduled.ScheduledNetwork(net=ExactDenoiser(mixture), schedule=module)
  sde = schedules.ScheduleSDE(schedules.Learned(module))
  loss = vdm.VDMLoss(sde, model, train=False, grid=None, t0=0.0, schedule_grad="variance")
  return loss, {"schedule": params}


def test_custom_gradient_is_the_variance_gradient_for_the_shape_and_the_loss_gradient_for_the_end_points(data):
  x = data[0][:64]
  loss, params = _oracle_loss(testing.two_dim_mixture())
  key, batch = jax.random.key(3), {"image": x}
  square = lambda p: jnp.mean(loss.terms(p, key, x).diffusion ** 2)  # noqa: E731
  mean = lambda p: jnp.mean(loss.terms(p, key, x).total)  # noqa: E731
  value, grads, want_shape, want_ends, want_value = jax.jit(lambda p: (
      loss(p, key, batch), jax.grad(loss)(p, key, batch), jax.grad(square)(p), jax.grad(mean)(p), mean(p)))(params)
  for name in ("l1", "l2", "l3"):
    for got, want in zip(jax.tree.leaves(grads["schedule"][name]), jax.tree.leaves(want_shape["schedule"][name])):
      np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-6)
  for name in schedules.MonotoneGamma.ENDPOINT_PARAMS:
    np.testing.assert_allclose(grads["schedule"][name], want_ends["schedule"][name], rtol=2e-3, atol=1e-6)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  # ... and that really is another gradient than the loss's (so the comparison above can fail).
  assert not np.allclose(grads["schedule"]["l2"]["kernel"], want_ends["schedule"]["l2"]["kernel"], rtol=0.1)


def test_learning_the_schedule_lowers_the_loss_variance_and_keeps_its_mean():
  # In 32 dimensions ||eps - eps_hat||^2 concentrates, so the variance over t, which the schedule shapes, dominates.
  mixture = testing.high_dim_mixture(dim=32)
  x, _ = mixture.sample(jax.random.key(0), 256)
  xs = jnp.tile(x, (16, 1))
  loss, params = _oracle_loss(mixture)
  # The shape parameters alone: the end points (which the loss gradient would move) stay, so the mean must too.
  labels = {"schedule": {k: "end" if k in schedules.MonotoneGamma.ENDPOINT_PARAMS else "shape"
                          for k in params["schedule"]}}
  optimizer = optax.multi_transform({"shape": optax.adam(1e-1), "end": optax.set_to_zero()}, labels)

  @jax.jit
  def step(params, opt_state, key):
    grads = jax.grad(loss)(params, key, {"image": x})
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  evaluate = jax.jit(lambda p: loss.terms(p, jax.random.key(4), xs).total)
  before = np.asarray(evaluate(params))
  opt_state = optimizer.init(params)
  for i in range(100):
    params, opt_state = step(params, opt_state, jax.random.key(10 + i))
  after = np.asarray(evaluate(params))
  assert after.var() < 0.7 * before.var(), (before.var(), after.var())
  paired = after - before
  assert abs(paired.mean()) < 4 * paired.std() / np.sqrt(len(paired)) + 2e-3, (before.mean(), after.mean())


def _tiny_vdm_digits(**training):
  """VDM with a learned schedule and Fourier features on the 8x8 digits: compiles in seconds."""
  config = configs_util.load_config(ROOT / "configs/digits/vp_unet.py", [
      "--config.training.sde=vdm", "--config.training.objective=vdm", "--config.data.uniform_dequantization=False",
      "--config.model.fourier_features=True", "--config.model.schedule_features=16", "--config.model.nf=8",
      "--config.training.batch_size=16", "--config.training.log_freq=2", "--config.training.eval_freq=4",
      "--config.training.snapshot_freq=1000", "--config.training.snapshot_freq_for_preemption=3",
      "--config.training.snapshot_sampling=True", "--config.training.snapshot_num_samples=4",
      "--config.sampling.method=dpm_solver", "--config.sampling.num_steps=2", "--config.eval.enable_bpd=False",
      "--config.optim.warmup=0"])
  config.training.update(training)
  return config


@pytest.mark.slow  # three runs, each compiling a U-Net train step, eval step and sampler: minutes on 2 cores
def test_vdm_training_learns_the_schedule_snapshots_samples_and_resumes_exactly(tmp_path):
  straight = train.train_and_evaluate(_tiny_vdm_digits(n_iters=6), tmp_path / "straight", progress=False)
  train.train_and_evaluate(_tiny_vdm_digits(n_iters=3), tmp_path / "resumed", progress=False)
  resumed = train.train_and_evaluate(_tiny_vdm_digits(n_iters=6), tmp_path / "resumed", progress=False)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config = _tiny_vdm_digits()
  initial = models.init_params(train.build(config).keys.init, models.get_model(config), datasets.data_shape(config))
  for name in ("gamma_0", "range", "l2"):  # end points and shape both trained
    moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in
             zip(jax.tree.leaves(straight.params["schedule"][name]), jax.tree.leaves(initial["schedule"][name]))]
    assert max(moved) > 0, name
  records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
  assert (tmp_path / "straight" / "samples" / "step_6.png").exists()


def test_encoder_bits_per_dim_of_a_vdm_model_are_a_discrete_bound_of_8_bit_digits():
  """eval.ode_dequantization="encoder" on an untrained VDM digits model: finite bits/dim of the 8-bit values,
  the same whether the pipeline hands over 8-bit values or their uniform dequantization (floor(256 x))."""
  config = _tiny_vdm_digits()
  config.eval.update(ode_dequantization="encoder", ode_variables="ddim", rtol=1e-2, atol=1e-2)
  setup = train.build(config)
  params = models.init_params(setup.keys.init, setup.model, datasets.data_shape(config))
  results = []
  for dequantized in (False, True):
    config.data.uniform_dequantization = dequantized
    bpd, nfe = evaluate.bits_per_dim_over_split(jax.random.key(0), config, setup.sde, setup.model, params,
                                                num_examples=4, batch_size=4)
    results.append(bpd)
  assert np.all(np.isfinite(results[0])) and np.all(results[0] > 0) and nfe > 0
  np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
  config.eval.ode_dequantization = "gaussian"
  with pytest.raises(ValueError, match="unknown eval.ode_dequantization 'gaussian'"):
    evaluate.get_logp_fn(config, setup.sde, setup.model)


def test_vdm_objective_refuses_dequantized_data():
  config = _tiny_vdm_digits()
  config.data.uniform_dequantization = True
  with pytest.raises(ValueError, match="uniform_dequantization=False"):
    train.get_step_fns(config, train.build(config))


def test_variance_gradient_is_refused_for_the_discrete_bound():
  module = schedules.MonotoneGamma(GAMMA_MIN, GAMMA_MAX, features=4)
  sde = schedules.ScheduleSDE(schedules.Learned(module))
  with pytest.raises(ValueError, match="num_steps=0"):
    vdm.VDMLoss(sde, ExactDenoiser(testing.two_dim_mixture()), train=False, grid=None, num_steps=10)


def test_reconstruction_term_is_the_discrete_likelihood_of_8_bit_values():
  # At high SNR the decoder puts almost all mass on the pixel value; at zero SNR it is uniform over the 256 values.
  grid = likelihood.pixel_grid(lambda u: 2.0 * u - 1.0)
  x = grid[jnp.array([[0, 17, 255]])]
  sharp = likelihood.grid_decoder_nll(x, x, jnp.ones(()), jnp.asarray(20.0), grid)
  flat = likelihood.grid_decoder_nll(x, x, jnp.ones(()), jnp.asarray(-30.0), grid)
  np.testing.assert_allclose(sharp, 0.0, atol=1e-4)
  np.testing.assert_allclose(flat, 3 * np.log(256.0), rtol=1e-4)


def test_fourier_features_are_vdm_base_2_sines_and_cosines():
  x = jnp.array([[[[0.25 / 64.0]]]])
  np.testing.assert_allclose(scheduled.fourier_features(x)[0, 0, 0], [1.0, 0.0, 0.0, -1.0], atol=1e-6)


def test_a_learned_schedule_needs_the_vdm_objective():
  config = _tiny_vdm_digits()
  config.training.objective = "dsm"
  with pytest.raises(ValueError, match="training.objective='vdm'"):
    train.get_step_fns(config, train.build(config))
