"""Denoising score matching losses (THEORY.md §2), the optimizer, and the pure optimisation step.

Every loss is a function of a score function, so it can be evaluated on the exact score of the
mixture oracle as well as on a network. Per-example losses have shape [B].
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from score_sde import discrete, models
from score_sde import sde as sde_lib
from score_sde.train_state import TrainState

Array = jax.Array
ScoreFn = sde_lib.ScoreFn


def _reduce(x: Array, reduce_mean: bool) -> Array:
  """Per-example reduction: mean over dimensions, or half the sum (the 1/2 of the DSM objective)."""
  flat = x.reshape(x.shape[0], -1)
  return jnp.mean(flat, axis=-1) if reduce_mean else 0.5 * jnp.sum(flat, axis=-1)


def dsm_loss(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, *, reduce_mean: bool = False,
             likelihood_weighting: bool = False, importance_weighting: bool = False, eps: float = 1e-5) -> Array:
  """Continuous-time DSM: E_t lambda(t) E ||s(x_t, t) - grad log p_0t(x_t | x_0)||^2, per example.

  grad log p_0t(x_t | x_0) = -z / sigma_t for x_t = alpha_t x_0 + sigma_t z. lambda(t) = sigma_t^2
  (noise prediction, ||sigma s + z||^2) by default; g(t)^2 with `likelihood_weighting`, then
  optionally with t importance-sampled from p(t) ∝ g^2 / sigma^2, which leaves the bounded
  Z ||sigma s + z||^2 in place of the g^2 / sigma^2 weight that blows up like 1/t near 0 for VP.
  """
  if importance_weighting and not likelihood_weighting:
    raise ValueError("importance_weighting is defined for likelihood_weighting=True only")
  t_rng, z_rng = jax.random.split(rng)
  batch = x.shape[0]
  if importance_weighting:
    t, normaliser = sde.likelihood_weighting_time(jax.random.uniform(t_rng, (batch,), x.dtype), eps)
  else:
    t = jax.random.uniform(t_rng, (batch,), x.dtype, minval=eps, maxval=sde.T)
  z = jax.random.normal(z_rng, x.shape, x.dtype)
  mean, std = sde.marginal_prob(x, t)
  std = sde_lib.batch_broadcast(std, x)
  score = score_fn(mean + std * z, t)
  if importance_weighting:
    return normaliser * _reduce((std * score + z) ** 2, reduce_mean)
  if likelihood_weighting:
    _, diffusion = sde.sde(jnp.zeros_like(x), t)
    return diffusion**2 * _reduce((score + z / std) ** 2, reduce_mean)
  return _reduce((std * score + z) ** 2, reduce_mean)


def _ddpm_marginal(sde: sde_lib.VPSDE, index: Array, dtype) -> tuple[Array, Array]:
  return discrete.DDPMChain.from_sde(sde).marginal_coeffs(index + 1, dtype)  # chain step i + 1 is grid index i


def _smld_marginal(sde: sde_lib.VESDE, index: Array, dtype) -> tuple[Array, Array]:
  sigma = jnp.asarray(sde.discrete_sigmas, dtype)[index]
  return jnp.ones_like(sigma), sigma


# The discrete chains: DDPM for VP (Ho et al. 2020), SMLD for VE (Song & Ermon 2019). Looked up by
# exact type: sub-VP subclasses VPSDE but has no discrete chain.
_DISCRETE_MARGINALS = {sde_lib.VPSDE: _ddpm_marginal, sde_lib.VESDE: _smld_marginal}


def discrete_marginal(sde: sde_lib.SDE, index: Array, dtype) -> tuple[Array, Array]:
  """(mean coefficient, std) of the discrete chain of `sde` at step `index` in 0..N-1."""
  marginal = _DISCRETE_MARGINALS.get(type(sde))
  if marginal is None:
    raise ValueError(f"{type(sde).__name__} has no discrete chain: use training.continuous=True")
  return marginal(sde, index, dtype)


def discrete_loss(rng: Array, score_fn: ScoreFn, sde: sde_lib.SDE, x: Array, *, reduce_mean: bool = False) -> Array:
  """DDPM (VP) / SMLD (VE) loss ||std_i s(x_i, t_i) + z||^2 with i ~ U{0..N-1}, t_i = i T / (N - 1).

  For VP this is Ho et al.'s ||eps_theta - z||^2 (score = -eps / std); for VE it is NCSN's
  sigma_i^2-weighted DSM. `score_fn` must come from `get_score_fn(..., continuous=False)`.
  """
  i_rng, z_rng = jax.random.split(rng)
  index = jax.random.randint(i_rng, (x.shape[0],), 0, sde.N)
  mean_coeff, std = discrete_marginal(sde, index, x.dtype)
  z = jax.random.normal(z_rng, x.shape, x.dtype)
  x_i = sde_lib.batch_broadcast(mean_coeff, x) * x + sde_lib.batch_broadcast(std, x) * z
  score = score_fn(x_i, sde.discrete_time(index, x.dtype))
  return _reduce((sde_lib.batch_broadcast(std, x) * score + z) ** 2, reduce_mean)


def drop_labels(rng: Array, labels: Array, num_classes: int, drop_prob: float) -> Array:
  """Replaces each label by the null class `num_classes` with probability `drop_prob`.

  Training on the null class as well teaches one network both the conditional and the unconditional
  score, which classifier-free guidance combines (Ho & Salimans 2022).
  """
  drop = jax.random.bernoulli(rng, drop_prob, labels.shape)
  return jnp.where(drop, num_classes, labels).astype(jnp.int32)


def get_loss_fn(sde: sde_lib.SDE, model: nn.Module, *, train: bool, reduce_mean: bool = False,
                continuous: bool = True, likelihood_weighting: bool = False, importance_weighting: bool = False,
                eps: float = 1e-5, cond_drop_prob: float = 0.0) -> Callable[[object, Array, dict], Array]:
  """loss(params, rng, batch) -> scalar mean loss over batch["image"].

  A class-conditional network (model.num_classes > 0) receives batch["label"], each replaced by the
  null class with probability `cond_drop_prob` when training (classifier-free guidance).
  """
  if not continuous and likelihood_weighting:
    raise ValueError("likelihood_weighting needs training.continuous=True")
  if not 0.0 <= cond_drop_prob <= 1.0:
    raise ValueError(f"cond_drop_prob (training.cond_drop_prob) must lie in [0, 1], got {cond_drop_prob}")
  num_classes = getattr(model, "num_classes", 0)
  if cond_drop_prob > 0 and not num_classes:
    raise ValueError(f"cond_drop_prob={cond_drop_prob} drops class labels, but the model is not class-conditional "
                     "(model.num_classes is 0)")

  def class_labels(rng: Array, batch: dict) -> Array | None:
    if not num_classes:
      return None
    if "label" not in batch:
      raise ValueError(f"the model is class-conditional (num_classes={num_classes}) but the batch has no 'label'")
    labels = batch["label"]
    return drop_labels(rng, labels, num_classes, cond_drop_prob) if train and cond_drop_prob > 0 else labels

  def loss_fn(params, rng: Array, batch: dict) -> Array:
    dropout_rng, loss_rng = jax.random.split(rng)
    y = class_labels(jax.random.fold_in(rng, 1), batch)
    score_fn = models.get_score_fn(sde, model, params, train=train, continuous=continuous, rng=dropout_rng, y=y)
    if continuous:
      losses = dsm_loss(loss_rng, score_fn, sde, batch["image"], reduce_mean=reduce_mean,
                        likelihood_weighting=likelihood_weighting, importance_weighting=importance_weighting, eps=eps)
    else:
      losses = discrete_loss(loss_rng, score_fn, sde, batch["image"], reduce_mean=reduce_mean)
    return jnp.mean(losses)

  return loss_fn


OPTIMIZERS = {
    "Adam": lambda lr, optim: optax.adam(lr, b1=optim.beta1, eps=optim.eps),
    "AdamW": lambda lr, optim: optax.adamw(lr, b1=optim.beta1, eps=optim.eps, weight_decay=optim.weight_decay),
}


def get_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam(W) with a linear learning-rate warmup over optim.warmup steps and global-norm clipping."""
  optim = config.optim
  if optim.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optim.optimizer {optim.optimizer!r}; choose from {sorted(OPTIMIZERS)}")
  lr = optax.linear_schedule(0.0, optim.lr, optim.warmup) if optim.warmup > 0 else optim.lr
  transforms = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
  return optax.chain(*transforms, OPTIMIZERS[optim.optimizer](lr, optim))


def get_step_fn(sde: sde_lib.SDE, model: nn.Module, optimizer: optax.GradientTransformation, *, train: bool,
                reduce_mean: bool = False, continuous: bool = True, likelihood_weighting: bool = False,
                importance_weighting: bool = False, eps: float = 1e-5, ema_rate: float = 0.999,
                cond_drop_prob: float = 0.0):
  """A pure step(state, batch, rng) -> (state, metrics) on the DSM loss (`step_fn_of_loss`)."""
  loss_fn = get_loss_fn(sde, model, train=train, reduce_mean=reduce_mean, continuous=continuous,
                        likelihood_weighting=likelihood_weighting, importance_weighting=importance_weighting, eps=eps,
                        cond_drop_prob=cond_drop_prob)
  return step_fn_of_loss(loss_fn, optimizer, train=train, ema_rate=ema_rate)


def step_fn_of_loss(loss_fn: Callable, optimizer: optax.GradientTransformation, *, train: bool,
                    ema_rate: float = 0.999):
  """A pure step(state, batch, rng) -> (state, metrics) of `loss_fn(params, rng, batch)`, ready for jax.jit.

  Training: one optimizer update on the loss, then EMA ema <- ema_rate ema + (1 - ema_rate) params.
  Evaluation: the loss of the EMA parameters (with the true class labels: labels are dropped in
  training only).
  """

  def train_step(state: TrainState, batch: dict, rng: Array) -> tuple[TrainState, dict]:
    loss, grads = jax.value_and_grad(loss_fn)(state.params, rng, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_rate)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

  def eval_step(state: TrainState, batch: dict, rng: Array) -> tuple[TrainState, dict]:
    return state, {"loss": loss_fn(state.ema_params, rng, batch)}

  return train_step if train else eval_step
