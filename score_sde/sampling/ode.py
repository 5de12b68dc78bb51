"""The probability-flow ODE dx/dt = f - g^2 s(x, t) / 2 solved by diffrax (THEORY.md §3-4).

The whole solve is one jitted `diffrax.diffeqsolve` over the batch (one shared step size). `decode`
runs it from T to eps (sampling), `encode` from eps to T (exact latents, interpolation).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

from score_sde import flow_variables
from score_sde import sde as sde_lib
from score_sde.sampling import utils

Array = jax.Array
ScoreFn = sde_lib.ScoreFn


class OdeSolver(NamedTuple):
  """A diffrax solver and its score evaluations: `stages` per step attempt (accepted or rejected),

  plus one initial evaluation when the first stage of a step reuses the last of the previous one
  (FSAL: Tsit5 and Dopri5 have 7 stages, the 7th is the next step's 1st, so 6 new ones per step;
  Bogacki-Shampine 3(2) has 4, so 3 new ones).
  """
  solver: type
  stages: int
  fsal: bool
  adaptive: bool = True  # has an embedded error estimate for PIDController step-size control


SOLVERS = {
    "tsit5": OdeSolver(diffrax.Tsit5, 6, True),
    "dopri5": OdeSolver(diffrax.Dopri5, 6, True),
    "bosh3": OdeSolver(diffrax.Bosh3, 3, True),
    "heun": OdeSolver(diffrax.Heun, 2, False),
    "euler": OdeSolver(diffrax.Euler, 1, False, adaptive=False),
}
ADAPTIVE_SOLVERS = tuple(sorted(name for name, spec in SOLVERS.items() if spec.adaptive))


class StepProgress(diffrax.AbstractProgressMeter):
  """A diffrax progress meter that calls progress(steps_done, steps_total) on every solver step.

  With a step count (fixed steps) it reports the steps taken of num_steps; adaptive solves have no
  step count in advance, so they report the percent of the time interval covered (of 100), once per
  step attempt (a rejected step repeats the last value).
  """

  progress: utils.Progress = eqx.field(static=True)
  num_steps: Array | int | None = None

  def init(self) -> Array:
    return jnp.zeros((), jnp.int32)

  def step(self, state: Array, progress: Array) -> Array:
    if self.num_steps is None:
      utils.report(self.progress, jnp.round(100 * progress).astype(jnp.int32), 100)
    else:
      utils.report(self.progress, state + 1, self.num_steps)
    return state + 1

  def close(self, state: Array) -> None:
    del state


def progress_meter(progress: utils.Progress | None, num_steps) -> diffrax.AbstractProgressMeter:
  """`StepProgress` for a progress callable, else diffrax's silent meter."""
  return diffrax.NoProgressMeter() if progress is None else StepProgress(progress, num_steps)


def integrate(vector_field, y0, t0: float, t1: float, solver: str, rtol: float, atol: float,
              num_steps: int | None, max_steps: int, progress: utils.Progress | None = None,
              first_step: float | None = None, norm: Callable[[Any], Array] = optx.rms_norm):
  """y(t1) from y(t0) (any pytree) along dy/dt = vector_field(t, y, args) in one diffeqsolve, and the
  field evaluations: `stages` per step attempt, + 1 for FSAL solvers (Tsit5, Dopri5, Bosh3).

  Adaptive (PIDController(rtol, atol, norm); first step `first_step`, or diffrax's choice when None;
  `norm` of the error scaled by atol + rtol |y|, by default diffrax's RMS over all components) when
  num_steps is None, else num_steps constant steps. progress: see `StepProgress`.
  """
  if solver not in SOLVERS:
    raise ValueError(f"unknown ODE solver {solver!r}; choose from {sorted(SOLVERS)}")
  spec = SOLVERS[solver]
  if num_steps is None:
    if not spec.adaptive:
      raise ValueError(f"solver {solver!r} has no error estimate for adaptive stepping; give num_steps")
    controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol, norm=norm), first_step
  else:
    controller, dt0 = diffrax.ConstantStepSize(), (t1 - t0) / num_steps
  sol = diffrax.diffeqsolve(diffrax.ODETerm(vector_field), spec.solver(), t0=t0, t1=t1, dt0=dt0, y0=y0,
                            stepsize_controller=controller, saveat=diffrax.SaveAt(t1=True), max_steps=max_steps,
                            progress_meter=progress_meter(progress, num_steps))
  y1 = jax.tree.map(lambda leaf: leaf[-1], sol.ys)
  return y1, spec.stages * sol.stats["num_steps"] + int(spec.fsal)


def _solve(score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, t0: float, t1: float, solver: str, rtol: float,
           atol: float, num_steps: int | None, max_steps: int, variables: str = "time",
           progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """x(t1) from x(t0) along the probability-flow ODE, and the score evaluations used.

  variables (`flow_variables.VARIABLES`): "time" solves x against t; the others solve
  y = x / alpha_t against tau(t), where the flow is close to linear.
  """
  flow_variables.check(variables)
  if variables != "time":
    field = flow_variables.vector_field(score_fn, sde, variables)
    tau0, alpha0 = flow_variables.endpoint(sde, variables, t0, x.dtype)
    tau1, alpha1 = flow_variables.endpoint(sde, variables, t1, x.dtype)
    y, nfe = integrate(lambda tau, y, args: field(tau, y), x / alpha0, tau0, tau1, solver, rtol, atol,
                       num_steps, max_steps, progress)
    return alpha1 * y, nfe
  flow = sde.reverse(score_fn, probability_flow=True)

  def vector_field(t, y, args):
    del args
    return flow.sde(y, utils.batch_times(t, y))[0]

  return integrate(vector_field, x, t0, t1, solver, rtol, atol, num_steps, max_steps, progress, (t1 - t0) / 100)


_STATIC = ("score_fn", "sde", "solver", "rtol", "atol", "num_steps", "eps", "max_steps", "variables")


@functools.partial(jax.jit, static_argnames=_STATIC)
def encode(score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, *, solver: str = "tsit5", rtol: float = 1e-5,
           atol: float = 1e-5, num_steps: int | None = None, eps: float = 1e-3,
           max_steps: int = 4096, variables: str = "time") -> tuple[Array, Array]:
  """The latent z = x(T) of data x = x(eps) under the probability-flow ODE, and the NFE used."""
  return _solve(score_fn, sde, x, eps, sde.T, solver, rtol, atol, num_steps, max_steps, variables)


@functools.partial(jax.jit, static_argnames=_STATIC)
def decode(score_fn: ScoreFn, sde: sde_lib.SDE, z: Array, *, solver: str = "tsit5", rtol: float = 1e-5,
           atol: float = 1e-5, num_steps: int | None = None, eps: float = 1e-3,
           max_steps: int = 4096, variables: str = "time") -> tuple[Array, Array]:
  """The data x = x(eps) of a latent z = x(T) under the probability-flow ODE, and the NFE used."""
  return _solve(score_fn, sde, z, sde.T, eps, solver, rtol, atol, num_steps, max_steps, variables)


def sample(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *, solver: str = "tsit5", rtol: float = 1e-5,
           atol: float = 1e-5, num_steps: int | None = None, eps: float = 1e-3, denoise: bool = False,
           max_steps: int = 4096, variables: str = "time",
           progress: utils.Progress | None = None) -> tuple[Array, Array]:
  """decode(prior sample): adaptive (PIDController) when num_steps is None, else num_steps fixed steps.

  max_steps bounds the solver loop (adaptive or not); nfe comes from the steps diffrax took.
  variables: the ODE's variables (`flow_variables.VARIABLES`).
  progress: per step of a fixed-step solve, else percent of the integration interval (`StepProgress`).
  """
  z = sde.prior_sampling(rng, shape)
  x, nfe = _solve(score_fn, sde, z, sde.T, eps, solver, rtol, atol, num_steps, max_steps, variables, progress)
  x, denoise_nfe = utils.finish(score_fn, sde, x, eps, denoise)
  return x, nfe + denoise_nfe
