"""Every sampler, fed the exact mixture score, converges to the mixture as its steps increase.

Distance: sliced W2 between the sampler's output and exact samples of the mixture. At the largest
step count it must be below a bound and below 0.7 times the distance at the smallest step count;
component proportions (argmax of the t = 0 responsibilities) must match the weights to within
`WEIGHT_TOL` (about 4 standard errors at 2000 samples).
The bounds sit a few times above the Monte-Carlo floor (the distance between two independent exact
sample sets): in 2-D (2000 samples) W2 is dominated by the random component counts and the floor
ranges over ~0.04-0.2 from seed to seed, hence 0.25; in 64-D (1000 samples) it is a stable ~0.047,
hence 0.08. A sampler that misplaces a mode or biases its width lands well above either bound
(the few-step runs reach 0.5-5).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sampling
from score_sde import sde as sde_lib
from score_sde import testing

SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}
WEIGHT_TOL = 0.045
BOUND_2D, BOUND_64D = 0.25, 0.08

# id -> (method, shared options, options at few steps, options at many steps)
CASES = {
    "pc_reverse_diffusion_langevin": ("pc", {}, {"num_steps": 3}, {"num_steps": 200}),
    "pc_euler_maruyama": ("pc", {"predictor": "euler_maruyama", "corrector": "none"}, {"num_steps": 3},
                          {"num_steps": 500}),
    "pc_ancestral": ("pc", {"predictor": "ancestral", "corrector": "none"}, {"num_steps": 3}, {"num_steps": 200}),
    "pc_ancestral_ald": ("pc", {"predictor": "ancestral", "corrector": "ald"}, {"num_steps": 3}, {"num_steps": 200}),
    "ode_tsit5_adaptive": ("ode", {"solver": "tsit5"}, {"rtol": 0.5, "atol": 0.5}, {"rtol": 1e-5, "atol": 1e-5}),
    "ode_heun": ("ode", {"solver": "heun"}, {"num_steps": 1}, {"num_steps": 50}),
    "ode_euler": ("ode", {"solver": "euler"}, {"num_steps": 2}, {"num_steps": 300}),
    "sde_euler": ("sde", {"solver": "euler"}, {"num_steps": 3}, {"num_steps": 500}),
    "sde_heun": ("sde", {"solver": "heun"}, {"num_steps": 3}, {"num_steps": 200}),
    "ddim": ("ddim", {}, {"num_steps": 2}, {"num_steps": 100}),
    "ddim_eta1": ("ddim", {"eta": 1.0}, {"num_steps": 2}, {"num_steps": 200}),
    "dpm_solver_1": ("dpm_solver", {"order": 1}, {"num_steps": 2}, {"num_steps": 50}),
    "dpm_solver_2": ("dpm_solver", {"order": 2}, {"num_steps": 1}, {"num_steps": 20}),
    "dpm_solver_3": ("dpm_solver", {"order": 3}, {"num_steps": 1}, {"num_steps": 10}),
    "dpm_solver_pp": ("dpm_solver_pp", {}, {"num_steps": 2}, {"num_steps": 20}),
    "dpm_solver_pp_time_quadratic": ("dpm_solver_pp", {"skip_type": "time_quadratic"}, {"num_steps": 2},
                                     {"num_steps": 40}),
    "edm_heun": ("edm_heun", {}, {"num_steps": 1}, {"num_steps": 20}),
}
# The default run covers every method on the 2-D oracle, cycling through the SDEs; the rest is slow.
DEFAULT_SDE = {case: sorted(SDES)[i % 3] for i, case in enumerate(CASES)}


def check_convergence(mixture, sde, case, num, bound):
  method, shared, few, many = CASES[case]
  score_fn = mixture.score_fn(sde)
  reference, _ = mixture.sample(jax.random.key(1), num)
  distances = []
  for options in (few, many):
    x, _ = sampling.sample(jax.random.key(0), score_fn, sde, (num,) + mixture.shape, method=method, **shared,
                           **options)
    distances.append(float(testing.sliced_wasserstein(jax.random.key(3), x, reference)))
  coarse, fine = distances
  assert fine < bound, (coarse, fine)
  assert fine < 0.7 * coarse, (coarse, fine)
  labels = jnp.argmax(mixture.responsibilities(x.reshape(num, -1)), axis=-1)
  proportions = np.bincount(np.asarray(labels), minlength=len(mixture.weights)) / num
  np.testing.assert_allclose(proportions, mixture.weights, atol=WEIGHT_TOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_converges_on_2d_mixture(mixture2d, case):
  check_convergence(mixture2d, SDES[DEFAULT_SDE[case]](), case, num=2000, bound=BOUND_2D)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_converges_on_2d_mixture_every_sde(mixture2d, case, sde_name):
  check_convergence(mixture2d, SDES[sde_name](), case, num=2000, bound=BOUND_2D)


@pytest.mark.parametrize("case", ["dpm_solver_pp", "pc_reverse_diffusion_langevin"])
def test_converges_on_64d_mixture(mixture64d, case):
  check_convergence(mixture64d, sde_lib.VESDE(), case, num=1000, bound=BOUND_64D)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_converges_on_64d_mixture_every_sde(mixture64d, case, sde_name):
  check_convergence(mixture64d, SDES[sde_name](), case, num=1000, bound=BOUND_64D)
