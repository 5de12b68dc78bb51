"""Samplers of score-based models: `x, nfe = sample(rng, score_fn, sde, shape, method, **options)`.

Methods (THEORY.md §4): "pc" predictor-corrector (pc.py), "ode" probability-flow ODE and "sde"
reverse SDE through diffrax (ode.py, sde_solve.py), and the few-step ODE solvers "ddim",
"dpm_solver", "dpm_solver_pp", "edm_heun" (fast.py). Each sampler is one jitted program.
Guidance is a score function (`score_sde.controllable`); inverse problems (inpainting,
colorization) go through `sample_inverse` (inverse.py) with the same option checks.
"""
from __future__ import annotations

import functools
import inspect

import jax
import numpy as np

from score_sde import controllable
from score_sde import sde as sde_lib
from score_sde.sampling import fast, inverse, ode, pc, sde_solve
from score_sde.sampling.ode import decode, encode
from score_sde.sampling.utils import Progress

Array = jax.Array

SAMPLERS = {
    "pc": pc.sample,
    "ode": ode.sample,
    "sde": sde_solve.sample,
    "ddim": fast.ddim,
    "dpm_solver": fast.dpm_solver,
    "dpm_solver_pp": fast.dpm_solver_pp,
    "edm_heun": fast.edm_heun,
}
INVERSE_SAMPLERS = inverse.SAMPLERS


def _registry(inverse_problem: bool) -> dict:
  return INVERSE_SAMPLERS if inverse_problem else SAMPLERS


def options_of(method: str, inverse_problem: bool = False) -> dict:
  """The options `method` accepts and their defaults (of `sample_inverse` when `inverse_problem`)."""
  registry = _registry(inverse_problem)
  if method not in registry:
    what = "inverse-problem sampling method" if inverse_problem else "sampling method"
    raise ValueError(f"unknown {what} {method!r}; choose from {sorted(registry)}")
  parameters = inspect.signature(registry[method]).parameters.values()
  return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "progress"}


def _check_values(sde: sde_lib.SDE, options: dict) -> None:
  """Numeric options every method shares: step counts positive, eps inside (0, T)."""
  for name, low in (("num_steps", 1), ("n_steps", 0), ("max_steps", 1)):
    value = options.get(name)
    if value is not None and (not isinstance(value, (int, np.integer)) or value < low):
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  if "eps" in options and not 0.0 < options["eps"] < sde.T:
    raise ValueError(f"eps must lie in (0, T={sde.T}), got {options['eps']!r}")


def _checked(sde: sde_lib.SDE, method: str, options: dict, inverse_problem: bool) -> tuple[dict, tuple]:
  """({"num_steps": n} or {}, the other options as a sorted tuple), after checking names and values.

  For plain sampling num_steps is split off as a traced argument: one compilation serves every step
  count. Inverse sampling keeps it static: with a traced trip count, PC inpainting of a 3000 x 6
  Gaussian (tests/test_controllable.py) hangs in XLA's CPU runtime (jax 0.10.2), with it static it does not.
  """
  valid = options_of(method, inverse_problem)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid options: {sorted(valid)}")
  _check_values(sde, options)
  options = dict(options)
  traced = options.get("num_steps") is not None and not inverse_problem
  num_steps = {"num_steps": options.pop("num_steps")} if traced else {}
  return num_steps, tuple(sorted(options.items()))


_STATIC = ("score_fn", "sde", "shape", "method", "options", "progress")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _run(rng: Array, num_steps: dict, *, score_fn, sde, shape, method, options, progress) -> tuple[Array, Array]:
  return SAMPLERS[method](rng, score_fn, sde, shape, **num_steps, **dict(options), progress=progress)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _run_inverse(rng: Array, observation: controllable.Observation, num_steps: dict, *, score_fn, sde, shape, method,
                 options, progress) -> tuple[Array, Array]:
  return INVERSE_SAMPLERS[method](rng, score_fn, sde, shape, observation, **num_steps, **dict(options),
                                  progress=progress)


def sample(rng: Array, score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, shape, method: str = "pc", *,
           progress: Progress | None = None, **options) -> tuple[Array, Array]:
  """Samples of shape `shape` from the model whose score is `score_fn`, and the score evaluations used.

  Options are checked against the method's signature (`options_of`). Guided sampling is sampling
  with a guided score function (`controllable.conditional_score_fn`, `classifier_free_score_fn`).
  progress: None, or a host function progress(steps_done, steps_total) called after every sampler
  step from inside the jitted program; adaptive ODE solves report the percent of the time interval
  covered (steps_total = 100) at every solver step. One compilation per (score_fn, sde, shape,
  method, other options, progress) serves every num_steps (score_fn, sde and progress are compared
  by identity: reuse one progress callable across calls).
  """
  num_steps, options = _checked(sde, method, options, inverse_problem=False)
  return _run(rng, num_steps, score_fn=score_fn, sde=sde, shape=tuple(shape), method=method, options=options,
              progress=progress)


def sample_inverse(rng: Array, score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, shape,
                   observation: controllable.Observation, method: str = "pc", *, progress: Progress | None = None,
                   **options) -> tuple[Array, Array]:
  """Samples of p(x | observation) with the unconditional score `score_fn`, and the score evaluations used.

  observation: `controllable.inpainting(...)` or `controllable.colorization(...)`. Methods "pc" and
  "ode" (inverse.py), with the options of `options_of(method, inverse_problem=True)`, checked as in
  `sample`; progress as in `sample`.
  """
  num_steps, options = _checked(sde, method, options, inverse_problem=True)
  controllable.check_observation(observation, shape)
  return _run_inverse(rng, observation, num_steps, score_fn=score_fn, sde=sde, shape=tuple(shape), method=method,
                      options=options, progress=progress)


__all__ = ["INVERSE_SAMPLERS", "SAMPLERS", "Progress", "decode", "encode", "options_of", "sample", "sample_inverse"]
