"""Probability-flow ODE encode/decode: an invertible map between data and prior latents."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sampling
from score_sde import sde as sde_lib

SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_encode_then_decode_recovers_the_data(mixture2d, sde_name):
  """decode(encode(x)) = x to solver tolerance, and the latents of data samples follow the prior p_T."""
  sde = SDES[sde_name]()
  score_fn = mixture2d.score_fn(sde)
  eps = 1e-3
  x, _ = mixture2d.sample(jax.random.key(0), 512, sde, jnp.full((512,), eps))
  z, nfe_encode = sampling.encode(score_fn, sde, x, rtol=1e-6, atol=1e-6, eps=eps)
  x_back, nfe_decode = sampling.decode(score_fn, sde, z, rtol=1e-6, atol=1e-6, eps=eps)
  scale = float(jnp.max(jnp.abs(x)))
  assert float(jnp.max(jnp.abs(x_back - x))) < 2e-3 * scale
  assert int(nfe_encode) > 6 and int(nfe_decode) > 6
  # p_T = N(alpha_T mu_k, alpha_T^2 s_k^2 + sigma_T^2) is within a few percent of the prior N(0, prior_std^2).
  np.testing.assert_allclose(float(jnp.std(z)), sde.prior_std, rtol=0.1)
  assert float(jnp.abs(jnp.mean(z))) < 0.15 * sde.prior_std


@pytest.mark.parametrize("variables", ["log_snr", "ddim"])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_scaled_variables_solve_the_same_flow(mixture2d, sde_name, variables):
  """decode in y = x / alpha against tau inverts encode in (x, t): both solve the same probability-flow ODE."""
  sde = SDES[sde_name]()
  score_fn = mixture2d.score_fn(sde)
  x, _ = mixture2d.sample(jax.random.key(0), 64, sde, jnp.full((64,), 1e-3))
  z, _ = sampling.encode(score_fn, sde, x, rtol=1e-6, atol=1e-6)
  x_back, nfe = sampling.decode(score_fn, sde, z, rtol=1e-6, atol=1e-6, variables=variables)
  assert float(jnp.max(jnp.abs(x_back - x))) < 2e-3 * float(jnp.max(jnp.abs(x)))
  assert int(nfe) > 6
