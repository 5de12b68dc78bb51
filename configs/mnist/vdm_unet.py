"""VDM on MNIST: the small U-Net, a learned noise schedule and the VDM bound (configs/default_mnist.py).

training.objective="vdm" trains the network on -ELBO in bits/dim (score_sde/vdm.py) with VDM's
low-discrepancy times; training.sde="vdm" learns the schedule gamma(t) (end points by the bound,
shape by VDM's variance-minimising gradient). 8-bit data: no dequantization.
"""
import ml_collections

from configs.default_mnist import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vdm"
  config.training.objective = "vdm"
  config.data.uniform_dequantization = False
  # The ODE bits/dim of a model of 8-bit values: dequantized by its own forward process (likelihood.encoder_bound_nll),
  # in DDIM variables (the learned schedule reaches sigma_0 / alpha_0 ~ 1e-3, stiff in t), at the tolerance and step
  # control of its README measurement (the VP family's looser per-example setting is not checked on it). Off at the
  # end of training: scripts/likelihood.py computes it.
  config.eval.enable_bpd = False
  config.eval.ode_dequantization = "encoder"
  config.eval.update(ode_solver="tsit5", ode_error_norm="batch_rms", rtol=1e-4, atol=1e-4)
  config.model.fourier_features = True
  config.model.gamma_min = -13.3
  config.model.gamma_max = 5.0
  config.model.schedule_features = 256
  return config
