"""The VDM variational bound in SNR form (Kingma et al. 2021; THEORY.md §1) and its training step.

For 8-bit data x (model space), the encoder z_t = alpha_t x + sigma_t eps with log-SNR
lambda(t) = log(alpha_t^2 / sigma_t^2) on [t0, T], and a noise prediction eps_hat(z_t, t):

  -ELBO(x) = reconstruction + prior + diffusion                                     (nats)
  reconstruction = -E log p(x | z_t0),  p(x_i = v_k | z) ∝ exp(-(z_i / alpha_t0 - v_k)^2 / (2 e^{-lambda_t0}))
  prior          = KL(N(alpha_T x, sigma_T^2 I) || N(0, prior_std^2 I))
  diffusion      = -1/2 (T - t0) E_{t ~ U[t0, T]} [ lambda'(t) ||eps - eps_hat(z_t, t)||^2 ]      (T = inf steps)
                 = T_steps / 2 E_i [ expm1(lambda(s_i) - lambda(t_i)) ||eps - eps_hat(z_{t_i}, t_i)||^2 ]  (T_steps)

over the grid v_k = scaler(k / 255) of the 256 pixel values (`likelihood.grid_decoder_nll`; dimensions
independent; without a grid, continuous data get the Gaussian decoder N(z_t0 / alpha_t0, e^{-lambda_t0} I)).
The continuous diffusion term depends on the schedule only through lambda(t0), lambda(T); the schedule in between changes its Monte-Carlo variance, which VDM minimises with the
gradient 2 L_diff dL_diff/d eta for the schedule's shape parameters eta (`variance_minimising_grads`).
"""
from __future__ import annotations

from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import datasets, likelihood, losses, models, schedules
from score_sde import sde as sde_lib

Array = jax.Array
# eps_hat(z_t, t, lambda_t) -> like z_t.
EpsFn = Callable[[Array, Array, Array], Array]


@flax.struct.dataclass
class VDMTerms:
  """Per-example terms of -ELBO in nats, each [B]."""

  reconstruction: Array
  prior: Array
  diffusion: Array

  @property
  def total(self) -> Array:
    return self.reconstruction + self.prior + self.diffusion


def time_samples(rng: Array, batch: int, t0: float, t1: float, low_discrepancy: bool = True, dtype=jnp.float32) -> Array:
  """t in [t0, t1]: u_i = (u_0 + i / B) mod 1 (VDM's low-discrepancy sampler) or i.i.d. uniform."""
  if low_discrepancy:
    u = jnp.mod(jax.random.uniform(rng, (), dtype) + jnp.arange(batch, dtype=dtype) / batch, 1.0)
  else:
    u = jax.random.uniform(rng, (batch,), dtype)
  return t0 + (t1 - t0) * u


def schedule_values(sde: sde_lib.SDE, t: Array, t0: float, num_steps: int = 0) -> dict[str, Array]:
  """lambda, lambda' (or lambda at the previous step s = t - (T - t0) / num_steps), alpha, sigma at t,
  and (alpha, sigma) at t0 and T: everything of the schedule the bound uses.

  For an SDE of sde.py lambda = 2 sde.marginal_lambda; the coefficients come from marginal_coeffs.
  """
  log_snr_fn = lambda s: 2.0 * sde.marginal_lambda(s)  # noqa: E731
  log_snr, rate = schedules.log_snr_and_rate(log_snr_fn, t)
  alpha, sigma = sde.marginal_coeffs(t)
  ends = jnp.asarray([t0, sde.T], t.dtype)
  alpha_ends, sigma_ends = sde.marginal_coeffs(ends)
  values = {"log_snr": log_snr, "rate": rate, "alpha": alpha, "sigma": sigma,
            "log_snr_0": log_snr_fn(ends[:1])[0], "alpha_0": alpha_ends[0], "sigma_0": sigma_ends[0],
            "alpha_1": alpha_ends[1], "sigma_1": sigma_ends[1]}
  if num_steps:
    values["log_snr_prev"] = log_snr_fn(t - (sde.T - t0) / num_steps)
  return values


def gaussian_reconstruction_nll(x: Array, z0: Array, alpha0: Array, log_snr0: Array) -> Array:
  """-log N(x; z_0 / alpha_0, e^{-lambda_0} I) [B]: the decoder of continuous data (no grid)."""
  var = jnp.exp(-log_snr0)
  per_dim = 0.5 * (jnp.log(2.0 * np.pi * var) + (z0 / alpha0 - x) ** 2 / var)
  return jnp.sum(per_dim.reshape(x.shape[0], -1), axis=-1)


def prior_kl(x: Array, alpha1: Array, sigma1: Array, prior_std: float) -> Array:
  """KL(N(alpha_1 x, sigma_1^2 I) || N(0, s^2 I)) = 1/2 sum[(alpha_1^2 x^2 + sigma_1^2) / s^2 - 1 - log(sigma_1^2 / s^2)]."""
  ratio = sigma1**2 / prior_std**2
  per_dim = (alpha1**2 * x**2) / prior_std**2 + ratio - 1.0 - jnp.log(ratio)
  return 0.5 * jnp.sum(per_dim.reshape(x.shape[0], -1), axis=-1)


def diffusion_loss(values: dict[str, Array], mse: Array, t0: float, t1: float, num_steps: int = 0) -> Array:
  """-1/2 (T - t0) lambda'(t) ||eps - eps_hat||^2, or num_steps / 2 expm1(lambda(s) - lambda(t)) ||...||^2."""
  if num_steps:
    return 0.5 * num_steps * jnp.expm1(values["log_snr_prev"] - values["log_snr"]) * mse
  return -0.5 * (t1 - t0) * values["rate"] * mse


def terms_from_values(values: dict[str, Array], eps_fn: EpsFn, x: Array, t: Array, noise: tuple[Array, Array], *,
                      grid: Array | None, prior_std: float, t0: float, t1: float, num_steps: int = 0) -> VDMTerms:
  """The three terms of -ELBO for schedule values `values` at times t and standard normal noises (eps_0, eps_t)."""
  eps_0, eps = noise
  z0 = values["alpha_0"] * x + values["sigma_0"] * eps_0
  b = lambda v: sde_lib.batch_broadcast(v, x)  # noqa: E731
  z_t = b(values["alpha"]) * x + b(values["sigma"]) * eps
  mse = jnp.sum(((eps - eps_fn(z_t, t, values["log_snr"])) ** 2).reshape(x.shape[0], -1), axis=-1)
  if grid is None:
    reconstruction = gaussian_reconstruction_nll(x, z0, values["alpha_0"], values["log_snr_0"])
  else:
    reconstruction = likelihood.grid_decoder_nll(x, z0, values["alpha_0"], values["log_snr_0"], grid)
  return VDMTerms(reconstruction=reconstruction,
                  prior=prior_kl(x, values["alpha_1"], values["sigma_1"], prior_std),
                  diffusion=diffusion_loss(values, mse, t0, t1, num_steps))


def _draws(rng: Array, x: Array, t0: float, t1: float, low_discrepancy: bool):
  t_rng, n0_rng, n_rng = jax.random.split(rng, 3)
  t = time_samples(t_rng, x.shape[0], t0, t1, low_discrepancy, x.dtype)
  return t, (jax.random.normal(n0_rng, x.shape, x.dtype), jax.random.normal(n_rng, x.shape, x.dtype))


def vdm_terms(rng: Array, eps_fn: EpsFn, sde: sde_lib.SDE, x: Array, *, grid: Array, t0: float = 1e-5,
              num_steps: int = 0, low_discrepancy: bool = True) -> VDMTerms:
  """A one-sample Monte-Carlo estimate of the terms of -ELBO(x) [B] (module docstring); num_steps=0: continuous."""
  t1 = sde.T
  t, noise = _draws(rng, x, t0, t1, low_discrepancy)
  t = _on_step_grid(t, t0, t1, num_steps)
  return terms_from_values(schedule_values(sde, t, t0, num_steps), eps_fn, x, t, noise, grid=grid,
                           prior_std=sde.prior_std, t0=t0, t1=t1, num_steps=num_steps)


def eps_fn_of_score(sde: sde_lib.SDE, score_fn) -> EpsFn:
  """eps_hat(z, t) = -sigma_t score(z, t): the noise prediction of any score function."""
  return lambda z, t, log_snr: -sde_lib.batch_broadcast(sde.marginal_coeffs(t)[1], z) * score_fn(z, t)


def bits_per_dim(nats: Array, shape) -> Array:
  """-ELBO in nats -> bits/dim over the D = prod(shape) dimensions (a discrete likelihood: no offset)."""
  return nats / (np.prod(shape) * np.log(2.0))


def elbo_bpd(rng: Array, score_fn, sde: sde_lib.SDE, x: Array, *, grid: Array, t0: float = 1e-5,
             num_steps: int = 0, num_samples: int = 1, low_discrepancy: bool = True) -> Array:
  """Upper bound on the bits/dim of 8-bit x [B]: -ELBO averaged over `num_samples` draws of (t, eps)."""
  def one(key):
    return vdm_terms(key, eps_fn_of_score(sde, score_fn), sde, x, grid=grid, t0=t0, num_steps=num_steps,
                     low_discrepancy=low_discrepancy).total
  nats = jnp.mean(jax.lax.map(one, jax.random.split(rng, num_samples)), axis=0)
  return bits_per_dim(nats, x.shape[1:])


def _network_eps_fn(sde, model: nn.Module, params, *, train: bool, rng: Array) -> EpsFn:
  """The network's noise prediction: labelled by the schedule's noise labels, or through its score."""
  if isinstance(sde, schedules.ScheduleSDE):
    model_fn = models.get_model_fn(model, params, train=train, rng=rng)
    return lambda z, t, log_snr: model_fn(z, sde.noise_labels(t, log_snr))
  return eps_fn_of_score(sde, models.get_score_fn(sde, model, params, train=train, rng=rng))


def _split_schedule(schedule: dict) -> tuple[dict, dict]:
  """(shape parameters, end-point parameters) of a learned schedule's (`MonotoneGamma.ENDPOINT_PARAMS`)."""
  ends = schedules.MonotoneGamma.ENDPOINT_PARAMS
  return ({k: v for k, v in schedule.items() if k not in ends}, {k: v for k, v in schedule.items() if k in ends})


SCHEDULE_GRADS = ("variance", "elbo")


def _on_step_grid(t: Array, t0: float, t1: float, num_steps: int) -> Array:
  """VDM's discrete time: t moved up to the grid t0 + i (T - t0) / num_steps, i = 1..num_steps (0: unchanged)."""
  if not num_steps:
    return t
  return t0 + jnp.ceil((t - t0) / (t1 - t0) * num_steps).clip(1, num_steps) * (t1 - t0) / num_steps


class VDMLoss:
  """The VDM loss of a network (and of a learned schedule in params["schedule"]) in bits/dim.

  Calling it, loss(params, rng, batch) -> mean -ELBO of batch["image"] in bits/dim, is what the train
  step differentiates. The network and the schedule's end points get the gradient of the loss.
  With a learned schedule and schedule_grad="variance", its shape parameters eta get VDM's
  variance-minimising gradient E[2 L_diff dL_diff / d eta] (L_diff per example, bits/dim) instead
  (a custom VJP): that is d Var / d eta, as the mean of the continuous diffusion term does not
  depend on eta. The network still runs one forward and one backward pass: the per-example schedule
  values are inputs of that pass, and their cotangents are re-weighted by 2 L_diff before the cheap
  pass back through the schedule network.
  """

  def __init__(self, sde: sde_lib.SDE, model: nn.Module, *, train: bool, grid: Array, t0: float = 1e-5,
               num_steps: int = 0, low_discrepancy: bool = True, schedule_grad: str = "variance"):
    if schedule_grad not in SCHEDULE_GRADS:
      raise ValueError(f"unknown vdm.schedule_grad {schedule_grad!r}; choose from {SCHEDULE_GRADS}")
    self.sde, self.model, self.train, self.grid = sde, model, train, grid
    self.t0, self.num_steps, self.low_discrepancy = t0, num_steps, low_discrepancy
    self.learned = isinstance(sde, schedules.ScheduleSDE) and isinstance(sde.schedule, schedules.Learned)
    if self.learned and num_steps and schedule_grad == "variance":
      raise ValueError(f"vdm.schedule_grad='variance' needs the continuous bound (vdm.num_steps=0, got {num_steps}): "
                       "with discrete steps the schedule's shape changes the bound itself; use 'elbo'")
    self._mean = self._mean_loss
    if self.learned and schedule_grad == "variance":
      self._mean = jax.custom_vjp(self._mean_loss)
      self._mean.defvjp(self._mean_loss_fwd, lambda grads, g: (jax.tree.map(lambda v: g * v, grads), None, None))

  def __call__(self, params, rng: Array, batch: dict) -> Array:
    return self._mean(params, rng, batch["image"])

  def _parts(self, params, rng: Array, x: Array):
    dropout_rng, draw_rng = jax.random.split(rng)
    t1 = self.sde.T
    t, noise = _draws(draw_rng, x, self.t0, t1, self.low_discrepancy)
    t = _on_step_grid(t, self.t0, t1, self.num_steps)
    scale = 1.0 / (np.prod(x.shape[1:]) * np.log(2.0))

    def bound_sde(schedule_params):
      return schedules.bind(self.sde, {**params, "schedule": schedule_params}) if self.learned else self.sde

    def values_of(schedule_params):
      return schedule_values(bound_sde(schedule_params), t, self.t0, self.num_steps)

    def terms_of(net_params, values, bound):
      eps_fn = _network_eps_fn(bound, self.model, net_params, train=self.train, rng=dropout_rng)
      terms = terms_from_values(values, eps_fn, x, t, noise, grid=self.grid, prior_std=bound.prior_std, t0=self.t0,
                                t1=t1, num_steps=self.num_steps)
      return jax.tree.map(lambda v: v * scale, terms)

    return bound_sde, values_of, terms_of

  def terms(self, params, rng: Array, x: Array) -> VDMTerms:
    """Per-example terms of -ELBO in bits/dim, [B] each."""
    bound_sde, values_of, terms_of = self._parts(params, rng, x)
    schedule = params.get("schedule")
    return terms_of(params, values_of(schedule), bound_sde(schedule))

  def _mean_loss(self, params, rng: Array, x: Array) -> Array:
    return jnp.mean(self.terms(params, rng, x).total)

  def _mean_loss_fwd(self, params, rng: Array, x: Array):
    loss, grads, _ = self.loss_and_grads(params, rng, x)
    return loss, grads

  def loss_and_grads(self, params, rng: Array, x: Array) -> tuple[Array, dict, VDMTerms]:
    """(mean bits/dim, mixed gradient, per-example terms) for a learned schedule (class docstring)."""
    bound_sde, values_of, terms_of = self._parts(params, rng, x)
    schedule = params["schedule"]
    values, values_vjp = jax.vjp(values_of, schedule)
    bound = bound_sde(schedule)
    net_only = {k: v for k, v in params.items() if k != "schedule"}
    frozen = jax.lax.stop_gradient(schedule)
    terms, terms_vjp = jax.vjp(lambda p, v: terms_of({**p, "schedule": frozen}, v, bound), net_only, values)
    batch = x.shape[0]
    ones = jnp.full((batch,), 1.0 / batch, x.dtype)
    g_net, g_values = terms_vjp(VDMTerms(ones, ones, ones))
    (g_schedule,) = values_vjp(g_values)
    # The per-example entries [B] of g_values are (1/B) dL_diff,i / dvalues_i (reconstruction and prior read only
    # the end-point entries); 2 L_diff,i times them, pulled back through the schedule, is d mean(L_diff^2) / d eta.
    weight = 2.0 * terms.diffusion
    g_var = {k: g * weight if g.shape == (batch,) else jnp.zeros_like(g) for k, g in g_values.items()}
    (g_schedule_var,) = values_vjp(g_var)
    shape_var, _ = _split_schedule(g_schedule_var)
    _, ends = _split_schedule(g_schedule)
    return jnp.mean(terms.total), {**g_net, "schedule": {**shape_var, **ends}}, terms


def get_step_fn(sde: sde_lib.SDE, model: nn.Module, optimizer: optax.GradientTransformation, *, train: bool,
                ema_rate: float, **loss_options):
  """step(state, batch, rng) -> (state, metrics) minimising the VDM loss (bits/dim); as losses.get_step_fn."""
  return losses.step_fn_of_loss(VDMLoss(sde, model, train=train, **loss_options), optimizer, train=train,
                                ema_rate=ema_rate)


def options_from_config(config) -> dict:
  """`get_step_fn` options of a config: config.vdm, training.eps (t0), model.ema_rate and the 8-bit pixel grid.

  Raises ValueError for dequantized data: the reconstruction term is the likelihood of 8-bit values.
  """
  if config.data.uniform_dequantization:
    raise ValueError("training.objective='vdm' models 8-bit pixels through its reconstruction term: "
                     "set data.uniform_dequantization=False")
  return dict(ema_rate=config.model.ema_rate, grid=likelihood.pixel_grid(datasets.get_data_scaler(config)), t0=config.training.eps,
              num_steps=config.vdm.num_steps, low_discrepancy=config.vdm.low_discrepancy,
              schedule_grad=config.vdm.schedule_grad)
