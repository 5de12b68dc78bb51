"""Noise schedules in log-SNR form: the fixed ones reproduce sde.py; a learned one is a working SDE."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sampling_convergence import BOUND_2D, CASES, check_convergence

from score_sde import schedules
from score_sde import sde as sde_lib

SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE()}
TIMES = jnp.linspace(1e-4, 1.0, 9)


@pytest.mark.parametrize("name", sorted(SDES))
def test_fixed_schedules_give_the_numbers_of_the_sde_classes(name):
  sde = SDES[name]
  ours = schedules.ScheduleSDE(schedules.schedule_of(sde), N=sde.N)
  x = jax.random.normal(jax.random.key(0), (len(TIMES), 3))
  for theirs, mine in [(sde.marginal_coeffs(TIMES), ours.marginal_coeffs(TIMES)), (sde.sde(x, TIMES), ours.sde(x, TIMES)),
                       (sde.marginal_lambda(TIMES), ours.marginal_lambda(TIMES))]:
    for a, b in zip(jax.tree.leaves(theirs), jax.tree.leaves(mine)):
      np.testing.assert_allclose(b, a, rtol=3e-5, atol=1e-6)
  np.testing.assert_allclose(ours.inverse_lambda(sde.marginal_lambda(TIMES)), TIMES, atol=1e-6)
  np.testing.assert_allclose(ours.prior_logp(x), sde.prior_logp(x), rtol=1e-5)


def learned_sde(sharpness: float = 1.0, features: int = 16, gamma_min: float = -10.0, gamma_max: float = 6.0):
  """A bound MonotoneGamma schedule; sharpness > 1 makes it far from linear (sigmoid units saturate)."""
  module = schedules.MonotoneGamma(gamma_min, gamma_max, features=features)
  params = module.init(jax.random.key(1), jnp.zeros(1))["params"]
  params = {**params, "l1": {"kernel": params["l1"]["kernel"] * 0.02},
            "l2": {"kernel": params["l2"]["kernel"] * sharpness, "bias": params["l2"]["bias"]}}
  return schedules.ScheduleSDE(schedules.Learned(module, params))


def test_learned_schedule_is_monotone_with_its_end_points_and_vp_marginals():
  sde = learned_sde(sharpness=8.0)
  t = jnp.linspace(0.0, 1.0, 201)
  x = jnp.ones((len(t), 2))

  @jax.jit
  def evaluate(t):
    gamma, rate = jax.jvp(lambda s: -sde.log_snr(s), (t,), (jnp.ones_like(t),))
    return gamma, rate, sde.marginal_coeffs(t), sde.sde(x, t), sde.inverse_lambda(sde.marginal_lambda(t[1:-1]))

  gamma, rate, (alpha, sigma), (drift, diffusion), inverse = evaluate(t)
  assert np.all(np.diff(np.asarray(gamma)) > 0)
  np.testing.assert_allclose([gamma[0], gamma[-1]], [-10.0, 6.0], atol=1e-4)
  linear = -10.0 + 16.0 * t
  assert np.max(np.abs(gamma - linear)) > 1.0  # really not linear, so the tests below test something
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(sigma**2, jax.nn.sigmoid(gamma), rtol=1e-5)
  # VP: f = -beta x / 2, g^2 = beta with beta = sigmoid(gamma) dgamma/dt.
  beta = jax.nn.sigmoid(gamma) * rate
  np.testing.assert_allclose(diffusion**2, beta, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(drift, -0.5 * beta[:, None] * x, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(inverse, t[1:-1], atol=1e-5)


def test_an_unbound_learned_schedule_says_how_to_bind_it():
  module = schedules.MonotoneGamma(-10.0, 6.0, features=8)
  with pytest.raises(ValueError, match="schedules.bind"):
    schedules.ScheduleSDE(schedules.Learned(module)).marginal_coeffs(TIMES)


# Two samplers on the learned-schedule SDE in the default suite, every other one in the slow suite.
DEFAULT_CASES = ("ddim", "dpm_solver_2")


@pytest.mark.parametrize("case", DEFAULT_CASES)
def test_samplers_reproduce_the_mixture_on_a_learned_schedule(mixture2d, case):
  check_convergence(mixture2d, learned_sde(sharpness=8.0), case, num=2000, bound=BOUND_2D)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(set(CASES) - set(DEFAULT_CASES)))
def test_every_sampler_reproduces_the_mixture_on_a_learned_schedule(mixture2d, case):
  check_convergence(mixture2d, learned_sde(sharpness=8.0), case, num=2000, bound=BOUND_2D)
