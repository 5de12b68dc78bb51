"""Samplers of score-based models: `x, nfe = sample(rng, score_fn, sde, shape, method, **options)`.

Methods (THEORY.md §4): "pc" predictor-corrector (pc.py), "ode" probability-flow ODE and "sde"
reverse SDE through diffrax (ode.py, sde_solve.py), and the few-step ODE solvers "ddim",
"dpm_solver", "dpm_solver_pp", "edm_heun" (fast.py). Each sampler is one jitted program.
"""
from __future__ import annotations

import functools
import inspect

import jax
import numpy as np

from score_sde import sde as sde_lib
from score_sde.sampling import fast, ode, pc, sde_solve
from score_sde.sampling.ode import decode, encode

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


def options_of(method: str) -> dict:
  """The options `method` accepts and their defaults."""
  if method not in SAMPLERS:
    raise ValueError(f"unknown sampling method {method!r}; choose from {sorted(SAMPLERS)}")
  parameters = inspect.signature(SAMPLERS[method]).parameters.values()
  return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_values(sde: sde_lib.SDE, options: dict) -> None:
  """Numeric options every method shares: step counts positive, eps inside (0, T)."""
  for name, low in (("num_steps", 1), ("n_steps", 0), ("max_steps", 1)):
    value = options.get(name)
    if value is not None and (not isinstance(value, (int, np.integer)) or value < low):
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  if "eps" in options and not 0.0 < options["eps"] < sde.T:
    raise ValueError(f"eps must lie in (0, T={sde.T}), got {options['eps']!r}")


@functools.partial(jax.jit, static_argnames=("score_fn", "sde", "shape", "method", "options"))
def _run(rng: Array, num_steps: dict, *, score_fn, sde, shape, method, options) -> tuple[Array, Array]:
  return SAMPLERS[method](rng, score_fn, sde, shape, **num_steps, **dict(options))


def sample(rng: Array, score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, shape, method: str = "pc", *,
           condition=None, **options) -> tuple[Array, Array]:
  """Samples of shape `shape` from the model whose score is `score_fn`, and the score evaluations used.

  `condition` (a `controllable.Observation` for inpainting / colorization, or a
  `controllable.Guidance`) routes to `controllable.sample_conditional`.

  Options are checked against the method's signature. num_steps is a traced argument, so one
  compilation per (score_fn, sde, shape, method, other options) serves every step count
  (score_fn and sde are compared by identity).
  """
  if condition is not None:
    from score_sde import controllable  # pylint: disable=import-outside-toplevel  (it imports this package)
    return controllable.sample_conditional(rng, score_fn, sde, shape, condition, method=method, **options)
  valid = options_of(method)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid options: {sorted(valid)}")
  _check_values(sde, options)
  num_steps = {"num_steps": options.pop("num_steps")} if options.get("num_steps") is not None else {}
  return _run(rng, num_steps, score_fn=score_fn, sde=sde, shape=tuple(shape), method=method,
              options=tuple(sorted(options.items())))


__all__ = ["SAMPLERS", "decode", "encode", "options_of", "sample"]
