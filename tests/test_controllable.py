"""Controllable generation against closed forms: guided mixtures, Gaussian inpainting and colorization."""
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from score_sde import controllable, losses, models, sampling, testing
from score_sde.sampling import inverse
from score_sde import sde as sde_lib

SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}


def gaussian_score_fn(mean: np.ndarray, cov: np.ndarray, sde: sde_lib.SDE):
  """Exact score of p_t = N(alpha_t mean, alpha_t^2 cov + sigma_t^2 I) for data ~ N(mean, cov) (flattened)."""
  mean, cov = jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32)
  dim = mean.shape[0]

  def score_fn(x, t):
    alpha, sigma = sde.marginal_coeffs(t)
    flat = x.reshape(x.shape[0], -1)
    covs = alpha[:, None, None] ** 2 * cov + sigma[:, None, None] ** 2 * jnp.eye(dim)
    return -jnp.linalg.solve(covs, (flat - alpha[:, None] * mean)[..., None])[..., 0].reshape(x.shape)

  return score_fn


def linear_gaussian_posterior(mean, cov, a, b):
  """Mean and covariance of x ~ N(mean, cov) given A x = b (Schur complement)."""
  gain = cov @ a.T @ np.linalg.inv(a @ cov @ a.T)
  return mean + gain @ (b - a @ mean), cov - gain @ a @ cov


def assert_covariance_close(samples: np.ndarray, cov: np.ndarray, bias: float = 0.01):
  """Sample covariance within 4 standard errors sqrt((C_ii C_jj + C_ij^2) / n) of each entry, plus `bias`."""
  diag = np.diag(cov)
  standard_error = np.sqrt((np.outer(diag, diag) + cov**2) / len(samples))
  np.testing.assert_array_less(np.abs(np.cov(samples.T) - cov), 4 * standard_error + bias)


def correlated_gaussian(dim: int, seed: int = 0):
  rs = np.random.RandomState(seed)
  factor = rs.normal(size=(dim, dim))
  return rs.normal(size=dim), factor @ factor.T / dim + 0.05 * np.eye(dim)


def component_log_prob_fn(mixture: testing.GaussianMixture, sde: sde_lib.SDE):
  """Exact log p_t(k | x) [B, K] = log w_k + log N_k(x) - log p_t(x), each term in closed form."""
  components = [testing.GaussianMixture(np.ones(1), mixture.means[k:k + 1], mixture.stds[k:k + 1])
                for k in range(len(mixture.weights))]

  def log_probs_fn(x, t):
    log_joint = jnp.stack([np.log(w) + c.log_prob(x, sde, t) for w, c in zip(mixture.weights, components)], -1)
    return log_joint - mixture.log_prob(x, sde, t)[:, None]

  return log_probs_fn, components


# ------------------------------------------------------------------------------------------ guidance
@pytest.mark.parametrize("name", sorted(SDES))
def test_classifier_guidance_with_exact_posterior_is_the_component_score(name, mixture2d):
  """grad log p_t(x) + grad log p_t(k | x) = grad log p_t(x | k), the diffused component's score."""
  sde = SDES[name]()
  log_probs_fn, components = component_log_prob_fn(mixture2d, sde)
  x, _ = mixture2d.sample(jax.random.key(0), 256)
  t = jax.random.uniform(jax.random.key(1), (256,), minval=0.01, maxval=1.0)
  x = x * sde.marginal_coeffs(t)[0][:, None] + 0.5 * jax.random.normal(jax.random.key(2), x.shape)
  for k, component in enumerate(components):
    labels = jnp.full((256,), k)
    guided = controllable.classifier_guided_score_fn(mixture2d.score_fn(sde), log_probs_fn, labels, scale=1.0)
    np.testing.assert_allclose(guided(x, t), component.score(x, sde, t), rtol=1e-4, atol=1e-4)


def test_classifier_guided_sampling_reproduces_the_chosen_component(mixture2d):
  """PC sampling with the guided score draws component k: >= 99% assigned to it, its mean and std."""
  sde = sde_lib.VPSDE()
  log_probs_fn, _ = component_log_prob_fn(mixture2d, sde)
  num, k = 2000, 1
  guided = controllable.conditional_score_fn(mixture2d.score_fn(sde),
                                            controllable.class_log_prob_fn(log_probs_fn, jnp.full((num,), k)), 1.0)
  x, _ = sampling.sample(jax.random.key(0), guided, sde, (num, 2), method="pc", num_steps=200, denoise=True)
  x = np.asarray(x)
  assigned = np.argmax(np.asarray(mixture2d.responsibilities(jnp.asarray(x))), axis=-1)
  assert np.mean(assigned == k) > 0.99
  std = mixture2d.stds[k]
  np.testing.assert_allclose(x.mean(0), mixture2d.means[k], atol=4 * std / np.sqrt(num) + 0.02)
  np.testing.assert_allclose(x.std(0), std, rtol=0.08)


def test_classifier_free_guidance_interpolates_the_scores(mixture2d):
  """w = 0: the unconditional score; w = 1: the conditional one; w = 2: 2 s_cond - s_uncond."""
  sde = sde_lib.VPSDE()
  _, components = component_log_prob_fn(mixture2d, sde)
  uncond, cond = mixture2d.score_fn(sde), components[2].score_fn(sde)
  x, _ = mixture2d.sample(jax.random.key(0), 64)
  t = jnp.full((64,), 0.3)
  for w, expected in [(0.0, uncond(x, t)), (1.0, cond(x, t)), (2.0, 2 * cond(x, t) - uncond(x, t))]:
    np.testing.assert_allclose(controllable.classifier_free_score_fn(cond, uncond, w)(x, t), expected,
                               rtol=1e-5, atol=1e-5)


def _tiny_conditional_config(num_classes: int = 3):
  config = base.get_base_config()
  config.data.image_size, config.data.num_channels, config.data.centered = 8, 1, True
  m = config.model
  m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_classes = 8, (1,), 1, (), num_classes
  m.embedding_type, m.dropout = "positional", 0.0
  return config


class LabelledMLP(nn.Module):
  """A tiny class-conditional network with the NCSN++ label convention (index num_classes = null)."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, noise_labels, train=False, y=None):
    del train
    y = jnp.full(noise_labels.shape, self.num_classes) if y is None else y
    h = nn.Dense(16)(x.reshape(x.shape[0], -1)) + nn.Embed(self.num_classes + 1, 16)(y)
    h = h + nn.Dense(16)(noise_labels[:, None] / 1000.0)
    return nn.Dense(x[0].size)(nn.silu(h)).reshape(x.shape)


def test_classifier_free_model_score_is_one_doubled_batch_call():
  """The doubled-batch guided score equals (1 - w) s(x, null) + w s(x, y) from two separate calls."""
  sde, model = sde_lib.VPSDE(), LabelledMLP()
  params = models.init_params(jax.random.key(0), model, (8, 8, 1))
  x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
  t, labels = jnp.full((4,), 0.5), jnp.array([0, 1, 2, 1])
  scales = (0.0, 1.0, 3.0)

  @jax.jit  # one compilation for every score below
  def scores(x, t):
    guided = [controllable.classifier_free_model_score_fn(sde, model, params, labels, w)(x, t) for w in scales]
    return models.get_score_fn(sde, model, params, y=labels)(x, t), models.get_score_fn(sde, model, params)(x, t), guided

  cond, uncond, guided = scores(x, t)
  assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-3  # the label matters
  for w, guided_w in zip(scales, guided):
    np.testing.assert_allclose(guided_w, uncond + w * (cond - uncond), rtol=1e-4, atol=1e-4)


def test_multiplying_by_another_prior_gives_the_product_gaussian():
  """N(0, v1) times r = N(m, v2): the score of the product is that of N(v m / v2, v), 1/v = 1/v1 + 1/v2."""
  v1, v2, m = 2.0, 0.5, 1.5
  score_fn = lambda x, t: -x / v1
  log_r_fn = lambda x, t: jnp.sum(-0.5 * (x - m) ** 2 / v2, axis=-1)
  x = jnp.linspace(-3, 3, 10)[:, None]
  product_var = 1.0 / (1.0 / v1 + 1.0 / v2)
  expected = -(x - product_var * m / v2) / product_var
  np.testing.assert_allclose(controllable.conditional_score_fn(score_fn, log_r_fn)(x, jnp.zeros(10)), expected,
                             rtol=1e-5)
  assert controllable.conditional_score_fn(score_fn, log_r_fn, 2.0) == controllable.conditional_score_fn(
      score_fn, log_r_fn, 2.0)  # equal guided scores reuse one compiled sampler


# --------------------------------------------------------------------------------- inverse problems
def test_inpainting_a_gaussian_matches_the_schur_complement():
  """Known coordinates 0, 2 of a correlated 4-D Gaussian: conditional mean within 4 standard errors
  + 0.01 and covariance within 4 standard errors + 0.01, with 5 masked Langevin steps per time."""
  mean, cov = correlated_gaussian(4)
  known = np.array([1.0, 0.0, 1.0, 0.0])
  observed = np.array([0.5, 0.0, -0.3, 0.0])
  a = np.eye(4)[known > 0]
  cond_mean, cond_cov = linear_gaussian_posterior(mean, cov, a, a @ observed)
  num, sde = 3000, sde_lib.VESDE(sigma_max=10.0)
  condition = controllable.inpainting(jnp.tile(jnp.asarray(observed, jnp.float32), (num, 1)), known)
  x, nfe = sampling.sample_inverse(jax.random.key(0), gaussian_score_fn(mean, cov, sde), sde, (num, 4), condition,
                                   method="pc", num_steps=100, n_steps=5)
  x = np.asarray(x, np.float64)
  assert int(nfe) == 100 * 6 + 1
  np.testing.assert_array_equal(x[:, known > 0], np.tile(observed[known > 0], (num, 1)).astype(np.float32))
  np.testing.assert_allclose(x.mean(0), cond_mean, atol=4 * np.sqrt(np.diag(cond_cov) / num).max() + 0.01)
  assert_covariance_close(x, cond_cov)


def test_colorizing_a_gaussian_matches_the_linear_gaussian_posterior():
  """2 pixels x 3 channels, correlated; the gray levels are observed. Within the same tolerances."""
  mean, cov = correlated_gaussian(6, seed=1)
  gray = np.array([[0.3], [-0.4]])
  a = np.kron(np.eye(2), np.full((1, 3), 1.0 / 3.0))  # gray = mean of the channels, per pixel
  cond_mean, cond_cov = linear_gaussian_posterior(mean, cov, a, gray[:, 0])
  num, sde = 3000, sde_lib.VESDE(sigma_max=10.0)
  condition = controllable.colorization(jnp.tile(jnp.asarray(gray, jnp.float32), (num, 1, 1)))
  x, _ = sampling.sample_inverse(jax.random.key(1), gaussian_score_fn(mean, cov, sde), sde, (num, 2, 3), condition,
                                 method="pc", num_steps=100, n_steps=5)
  x = np.asarray(x, np.float64)
  np.testing.assert_allclose(x.mean(-1), np.tile(gray[:, 0], (num, 1)), atol=1e-5)
  x = x.reshape(num, 6)
  np.testing.assert_allclose(x.mean(0), cond_mean, atol=4 * np.sqrt(np.diag(cond_cov).max() / num) + 0.01)
  assert_covariance_close(x, cond_cov)


def test_color_basis_is_orthogonal_with_the_gray_axis_first():
  basis = controllable.COLOR_BASIS
  np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
  np.testing.assert_allclose(basis[:, 0], np.full(3, 1 / np.sqrt(3)))


def test_initial_state_diffuses_the_observation_and_keeps_prior_noise_elsewhere():
  """Known part ~ N(alpha_T y, sigma_T^2), unknown ~ prior (the reference mixed clean data and prior noise)."""
  sde, num = sde_lib.VESDE(sigma_max=10.0), 20000
  condition = controllable.inpainting(jnp.full((num, 2), 3.0), jnp.array([1.0, 0.0]))
  x = np.asarray(inverse.initial_state(jax.random.key(0), sde, condition, (num, 2)))
  np.testing.assert_allclose(x.mean(0), [3.0, 0.0], atol=4 * 10.0 / np.sqrt(num))
  np.testing.assert_allclose(x.std(0), [10.0, 10.0], rtol=0.03)


@pytest.mark.parametrize("method", ["pc", "ode"])
def test_final_denoising_acts_on_the_unknown_part_from_the_clean_observation(method):
  """With denoise, the unknown part is the Tweedie step from the un-noised known part; known = observation."""
  mean, cov = correlated_gaussian(4)
  sde, num = sde_lib.VPSDE(), 8
  score_fn = gaussian_score_fn(mean, cov, sde)
  condition = controllable.inpainting(jnp.tile(jnp.asarray([0.5, 0.0, -0.3, 0.0]), (num, 1)),
                                      jnp.array([1.0, 0.0, 1.0, 0.0]))
  options = {"num_steps": 20, "eps": 0.05}
  raw, _ = sampling.sample_inverse(jax.random.key(0), score_fn, sde, (num, 4), condition, method, denoise=False,
                                   **options)
  denoised, _ = sampling.sample_inverse(jax.random.key(0), score_fn, sde, (num, 4), condition, method, denoise=True,
                                        **options)
  np.testing.assert_array_equal(denoised[:, ::2], condition.value[:, ::2])
  alpha, sigma = (float(v[0]) for v in sde.marginal_coeffs(jnp.array([0.05])))
  clean_known = raw.at[:, ::2].set(alpha * condition.value[:, ::2])
  expected = (clean_known + sigma**2 * score_fn(clean_known, jnp.full((num,), 0.05))) / alpha
  np.testing.assert_allclose(denoised[:, 1::2], expected[:, 1::2], rtol=1e-4, atol=1e-5)
  assert float(jnp.max(jnp.abs(denoised[:, 1::2] - raw[:, 1::2]))) > 1e-3


def test_bad_conditions_are_rejected_with_clear_errors():
  sde, score_fn = sde_lib.VPSDE(), lambda x, t: -x
  condition = controllable.inpainting(jnp.zeros((4, 2)), jnp.array([1.0, 0.0]))
  with pytest.raises(ValueError, match=r"unknown inverse-problem sampling method 'ddim'.*'ode', 'pc'"):
    sampling.sample_inverse(jax.random.key(0), score_fn, sde, (4, 2), condition, method="ddim")
  with pytest.raises(ValueError, match="unknown option"):
    sampling.sample_inverse(jax.random.key(0), score_fn, sde, (4, 2), condition, num_step=3)
  with pytest.raises(ValueError, match="observation value has shape"):
    sampling.sample_inverse(jax.random.key(0), score_fn, sde, (8, 2), condition)
  with pytest.raises(ValueError, match="does not broadcast"):
    sampling.sample_inverse(jax.random.key(0), score_fn, sde, (4, 2), condition._replace(mask=jnp.ones(3)))
  with pytest.raises(ValueError, match="one channel"):
    controllable.colorization(jnp.zeros((4, 8, 8, 3)))
  with pytest.raises(TypeError, match="controllable.Observation"):
    sampling.sample_inverse(jax.random.key(0), score_fn, sde, (4, 2), {"label": 3})


@pytest.mark.parametrize("method", ["pc", "ode"])
@pytest.mark.parametrize("options, message", [
    ({"num_steps": 0}, "num_steps must be an integer >= 1"),
    ({"eps": 1.0}, r"eps must lie in \(0, T=1.0\)"),
    ({"eps": 0.0}, r"eps must lie in \(0, T=1.0\)"),
])
def test_inverse_sampling_refuses_the_option_values_plain_sampling_refuses(method, options, message):
  """One option check for plain and inverse sampling: num_steps = 0 and eps outside (0, T) are refused by both."""
  sde, score_fn = sde_lib.VPSDE(), lambda x, t: -x
  condition = controllable.inpainting(jnp.zeros((4, 2)), jnp.array([1.0, 0.0]))
  with pytest.raises(ValueError, match=message):
    sampling.sample(jax.random.key(0), score_fn, sde, (4, 2), method, **options)
  with pytest.raises(ValueError, match=message):
    sampling.sample_inverse(jax.random.key(0), score_fn, sde, (4, 2), condition, method, **options)


# --------------------------------------------------------------------------- training pieces
def test_noise_classifier_gives_logits_per_class():
  config = _tiny_conditional_config(num_classes=5)
  config.model.name = "noise_classifier"
  classifier = models.get_model(config)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  params = classifier.init(jax.random.key(1), x, jnp.full((3,), 0.5))["params"]
  log_probs = controllable.classifier_log_probs_fn(classifier, params)(x, jnp.full((3,), 0.5))
  assert log_probs.shape == (3, 5)
  np.testing.assert_allclose(jnp.sum(jnp.exp(log_probs), -1), 1.0, rtol=1e-5)


def test_label_dropout_rate_and_conditional_loss():
  labels = jnp.arange(20000) % 10
  dropped = losses.drop_labels(jax.random.key(0), labels, 10, 0.2)
  assert abs(float(jnp.mean(dropped == 10)) - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 20000)
  np.testing.assert_array_equal(jnp.where(dropped == 10, labels, dropped), labels)  # kept labels untouched
  config = _tiny_conditional_config()
  sde, model = sde_lib.VPSDE(), models.get_model(config)
  params = models.init_params(jax.random.key(0), model, (8, 8, 1))
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
  batch = {"image": jax.random.normal(jax.random.key(2), (4, 8, 8, 1)), "label": jnp.array([0, 1, 2, 0])}
  null = jnp.full(4, 3)

  @jax.jit  # one compilation for the three losses
  def three_losses():
    loss = lambda drop, labels: losses.get_loss_fn(sde, model, train=True, cond_drop_prob=drop)(
        params, jax.random.key(3), {**batch, "label": labels})
    return loss(0.0, batch["label"]), loss(0.0, null), loss(1.0, batch["label"])

  with_labels, with_null, all_dropped = (float(v) for v in three_losses())
  assert with_labels != pytest.approx(with_null)  # the labels reach the network
  assert all_dropped == pytest.approx(with_null, rel=1e-6)  # dropping every label = the null class
  with pytest.raises(ValueError, match="not class-conditional"):
    losses.get_loss_fn(sde, models.get_model(base.get_base_config()), train=True, cond_drop_prob=0.1)


# ------------------------------------------------------------------------------ digits, end to end
def _train(loss_fn, params, steps: int, lr: float, rng):
  optimizer = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, 100, steps))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for k in range(steps):
    params, opt_state, _ = step(params, opt_state, jax.random.fold_in(rng, k))
  return params


@pytest.fixture(scope="module")
def digits():
  """sklearn's 8x8 digits in [-1, 1], their labels, and a logistic-regression judge trained on them."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  data = load_digits()
  images = (data.images / 16.0 * 2 - 1).astype(np.float32)[..., None]
  judge = LogisticRegression(max_iter=2000).fit(images.reshape(len(images), -1), data.target)
  return images, data.target.astype(np.int32), judge


@pytest.fixture(scope="module")
def conditional_digits_model(digits):
  """A class-conditional NCSN++ (nf 32) trained 2000 steps on all digits with 10% label dropout."""
  images, labels, _ = digits
  config = _tiny_conditional_config(num_classes=10)
  config.model.nf, config.model.ch_mult = 32, (1, 2)
  sde, model = sde_lib.VPSDE(), models.get_model(config)
  params = models.init_params(jax.random.key(0), model, (8, 8, 1))
  loss_fn = losses.get_loss_fn(sde, model, train=True, cond_drop_prob=0.1)

  def batch_loss(params, rng):
    index = jax.random.randint(jax.random.fold_in(rng, 7), (128,), 0, len(images))
    return loss_fn(params, rng, {"image": jnp.asarray(images)[index], "label": jnp.asarray(labels)[index]})

  return sde, model, _train(batch_loss, params, 2000, 2e-3, jax.random.key(1))


LABELS = np.repeat(np.arange(10), 30)  # 30 samples of each class, in one batch


def _class_rate(judge, samples) -> float:
  """Fraction of samples that the judge assigns to the class they were drawn for."""
  return float(np.mean(judge.predict(np.asarray(samples).reshape(len(samples), -1)) == LABELS))


@pytest.mark.slow
def test_classifier_free_guided_digits_are_judged_the_requested_class(digits, conditional_digits_model):
  """Samples of each class, judged by logistic regression fitted to the real digits: rate above 0.8
  at w = 1, not lower at w = 3, near chance at w = 0. The rates are printed."""
  _, _, judge = digits
  sde, model, params = conditional_digits_model
  rates = {}
  for w in (0.0, 1.0, 3.0):
    score_fn = controllable.classifier_free_model_score_fn(sde, model, params, LABELS, w)
    x, _ = sampling.sample(jax.random.key(0), score_fn, sde, (len(LABELS), 8, 8, 1), method="dpm_solver_pp",
                           num_steps=20)
    rates[w] = _class_rate(judge, x)
  print("classifier-free guidance, fraction judged the requested class:", rates)
  assert rates[1.0] > 0.8
  assert rates[3.0] >= rates[1.0] - 0.03
  assert rates[0.0] < 0.3  # unguided samples hit the class about 1 time in 10


@pytest.mark.slow
def test_classifier_guided_digits_are_judged_the_requested_class(digits, conditional_digits_model):
  """The null-label (unconditional) score guided by a noise-conditional classifier trained here."""
  images, labels, judge = digits
  sde, model, params = conditional_digits_model
  config = _tiny_conditional_config(num_classes=10)
  config.model.name, config.model.nf = "noise_classifier", 32
  classifier = models.get_model(config)
  clf_params = classifier.init(jax.random.key(2), jnp.zeros((1, 8, 8, 1)), jnp.ones((1,)))["params"]

  def batch_loss(clf_params, rng):
    index = jax.random.randint(jax.random.fold_in(rng, 7), (128,), 0, len(images))
    logits_fn = lambda x, t: classifier.apply({"params": clf_params}, x, t)
    return jnp.mean(controllable.noisy_classifier_loss(rng, logits_fn, sde, jnp.asarray(images)[index],
                                                       jnp.asarray(labels)[index]))

  clf_params = _train(batch_loss, clf_params, 1000, 2e-3, jax.random.key(3))
  uncond = models.get_score_fn(sde, model, params)
  log_probs_fn = controllable.classifier_log_probs_fn(classifier, clf_params)
  rates = {}
  for scale in (1.0, 4.0):
    score_fn = controllable.classifier_guided_score_fn(uncond, log_probs_fn, LABELS, scale)
    x, _ = sampling.sample(jax.random.key(0), score_fn, sde, (len(LABELS), 8, 8, 1), method="dpm_solver_pp",
                           num_steps=20)
    rates[scale] = _class_rate(judge, x)
  print("classifier guidance, fraction judged the requested class:", rates)
  assert rates[4.0] > 0.6


def test_controllable_imports_no_sampler():
  """controllable is score transforms and observation builders: importing it loads no sampler module."""
  code = ("import sys, score_sde.controllable; "
          "print(sorted(m for m in sys.modules if m.startswith('score_sde.sampling')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"


def test_inverse_sampling_reports_progress_per_step():
  sde = sde_lib.VESDE(sigma_max=5.0)
  condition = controllable.inpainting(jnp.tile(jnp.array([[1.5, 0.0]]), (8, 1)), jnp.array([1.0, 0.0]))
  calls = []
  x, _ = sampling.sample_inverse(jax.random.key(0), lambda x, t: -x, sde, (8, 2), condition, "pc", num_steps=5,
                                 progress=lambda done, total: calls.append((done, total)))
  jax.effects_barrier()
  assert sorted(calls) == [(i, 5) for i in range(1, 6)]
  np.testing.assert_allclose(x[:, 0], 1.5, atol=1e-5)  # the known coordinate is kept
