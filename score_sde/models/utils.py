"""From a network to a score function: noise labels and output parametrization per SDE."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde import discrete, schedules
from score_sde import sde as sde_lib

Array = jax.Array


def init_params(rng: Array, model: nn.Module, shape: tuple[int, ...]):
  """Initial parameters of `model` for inputs of per-example shape `shape`.

  The init is compiled as one program rather than dispatched op by op.
  """
  x = jnp.zeros((1,) + tuple(shape), jnp.float32)
  labels = jnp.ones((1,), jnp.float32)
  init = jax.jit(lambda key: model.init({"params": key, "dropout": key}, x, labels, train=False)["params"])
  return init(rng)


def get_model_fn(model: nn.Module, params, *, train: bool = False, rng: Array | None = None,
                 y: Array | None = None):
  """(x, noise_labels) -> network output; `rng` feeds dropout when training.

  `y` (int class labels [B]) is passed to class-conditional networks (model.num_classes > 0) only
  when given, so label-free networks keep their (x, noise_labels, train) signature.
  """
  if train and rng is None:
    raise ValueError("get_model_fn(train=True) needs an rng for dropout")
  rngs = {"dropout": rng} if train else {}
  class_kwargs = {} if y is None else {"y": y}
  return lambda x, labels: model.apply({"params": params}, x, labels, train=train, rngs=rngs, **class_kwargs)


def _vp_score(sde: sde_lib.VPSDE, model_fn, x: Array, t: Array, continuous: bool) -> Array:
  """Noise-prediction network eps(x, label): score = -eps / sigma_t (THEORY.md §1).

  Labels are 999 t in continuous time (and always for sub-VP, which has no discrete chain), else
  the fractional DDPM step t (N - 1), divided by the chain's own sqrt(1 - abar_i) at the truncated
  index i = floor(t (N - 1)) — exactly as score_sde's get_score_fn, so released discrete-time
  checkpoints give the reference's scores (tests/test_convert.py).
  """
  if continuous or isinstance(sde, sde_lib.subVPSDE):
    _, std = sde.marginal_coeffs(t)
    return -model_fn(x, t * 999) / sde_lib.batch_broadcast(std, x)
  labels = t * (sde.N - 1)
  # Truncate as the reference does, but not below an integer that t (N - 1) misses by float rounding of t
  # (a few ulps of N - 1: a grid time i / (N - 1) must give chain index i).
  index = jnp.floor(labels + 4 * jnp.finfo(labels.dtype).eps * (sde.N - 1)).astype(jnp.int32)
  _, std = discrete.DDPMChain.from_sde(sde).marginal_coeffs(index + 1, x.dtype)
  return -model_fn(x, labels) / sde_lib.batch_broadcast(std, x)


def _ve_score(sde: sde_lib.VESDE, model_fn, x: Array, t: Array, continuous: bool) -> Array:
  """Score network s(x, label) (which may divide by sigma itself, `scale_by_sigma`).

  Labels are sigma(t) in continuous time, else NCSN's label N - 1 - i for grid index i
  (`sde.discrete_index`; NCSN numbers its noise levels from sigma_max down).
  """
  if continuous:
    labels = sde.marginal_coeffs(t)[1]
  else:
    labels = (sde.N - 1 - sde.discrete_index(t)).astype(x.dtype)
  return model_fn(x, labels)


def _schedule_score(sde: schedules.ScheduleSDE, model_fn, x: Array, t: Array, continuous: bool) -> Array:
  """Noise prediction on a schedule's SDE: score = -eps(x, label) / sigma_t, label = sde.noise_labels(t, lambda_t)."""
  del continuous  # a schedule's SDE is continuous-time only
  log_snr = sde.log_snr(t)
  _, sigma = sde.coeffs_of_log_snr(log_snr)
  return -model_fn(x, sde.noise_labels(t, log_snr)) / sde_lib.batch_broadcast(sigma, x)


_SCORE_PARAMETRIZATIONS = {sde_lib.VPSDE: _vp_score, sde_lib.VESDE: _ve_score, schedules.ScheduleSDE: _schedule_score}


def score_from_model_fn(sde: sde_lib.SDE, model_fn, *, continuous: bool = True) -> Callable[[Array, Array], Array]:
  """score_fn(x, t) from a raw `model_fn(x, noise_labels)` for the parametrization of `sde`."""
  for cls in type(sde).__mro__:
    if cls in _SCORE_PARAMETRIZATIONS:
      parametrization = _SCORE_PARAMETRIZATIONS[cls]
      return lambda x, t: parametrization(sde, model_fn, x, t, continuous)
  raise TypeError(f"no score parametrization for {type(sde).__name__}")


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, params, *, train: bool = False, continuous: bool = True,
                 rng: Array | None = None, y: Array | None = None) -> Callable[[Array, Array], Array]:
  """score_fn(x, t) of a network, handling noise prediction (VP, sub-VP) and direct scores (VE).

  With class labels `y` [B] it is the class-conditional score grad log p_t(x | y); a
  class-conditional network called without `y` gives its unconditional ("null" label) score.
  """
  return score_from_model_fn(sde, get_model_fn(model, params, train=train, rng=rng, y=y), continuous=continuous)
