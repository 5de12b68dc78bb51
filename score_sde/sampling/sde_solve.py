"""The reverse SDE dx = [f - g^2 s] dt + g dw_bar solved by diffrax SDE solvers (THEORY.md §3).

diffrax Brownian paths need t0 < t1, so the solve runs in s = T - t from 0 to T - eps:
dx = -[f - g^2 s](x, T - s) ds + g(T - s) dW_s. The noise is additive (g does not depend on x),
so Ito and Stratonovich solutions agree and Heun (a Stratonovich solver) converges to the right law.
The scan-based `pc.sample(predictor="euler_maruyama", corrector="none")` computes the same
Euler-Maruyama chain without diffrax's per-step overhead and is the default stochastic sampler.
"""
from __future__ import annotations

from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import lineax

from score_sde import sde as sde_lib
from score_sde.sampling import ode, utils

Array = jax.Array
ScoreFn = sde_lib.ScoreFn


class SdeSolver(NamedTuple):
  """A diffrax SDE solver and the drift (score) evaluations it makes per step."""
  solver: type
  stages: int


SOLVERS = {
    "euler": SdeSolver(diffrax.Euler, 1),  # Euler-Maruyama
    "heun": SdeSolver(diffrax.Heun, 2),  # stochastic Heun (strong order 1 for additive noise)
}


def sample(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *, solver: str = "euler",
           num_steps: int | None = None, eps: float = 1e-3, denoise: bool = False,
           max_steps: int = 4096, progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """Reverse-SDE sample with num_steps (default sde.N, at most max_steps) fixed steps of `solver`.

  nfe = stages * (steps diffrax took); progress(i, num_steps) after each step.
  """
  if solver not in SOLVERS:
    raise ValueError(f"unknown SDE solver {solver!r}; choose from {sorted(SOLVERS)}")
  spec = SOLVERS[solver]
  num_steps = sde.N if num_steps is None else num_steps
  rsde = sde.reverse(score_fn)
  s1 = sde.T - eps

  def drift(s, x, args):
    del args
    return -rsde.sde(x, utils.batch_times(sde.T - s, x))[0]

  def diffusion(s, x, args):
    del args
    _, g = sde.sde(x, utils.batch_times(sde.T - s, x))
    return lineax.DiagonalLinearOperator(sde_lib.batch_broadcast(g, x) * jnp.ones_like(x))

  prior_rng, brownian_rng = jax.random.split(rng)
  x = sde.prior_sampling(prior_rng, shape)
  brownian = diffrax.UnsafeBrownianPath(shape=shape, key=brownian_rng)
  terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, brownian))
  sol = diffrax.diffeqsolve(terms, spec.solver(), t0=0.0, t1=s1, dt0=s1 / num_steps, y0=x,
                            saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, adjoint=diffrax.ForwardMode(),
                            progress_meter=ode.progress_meter(progress, num_steps))
  x, denoise_nfe = utils.finish(score_fn, sde, sol.ys[0], eps, denoise)
  return x, spec.stages * sol.stats["num_steps"] + denoise_nfe
