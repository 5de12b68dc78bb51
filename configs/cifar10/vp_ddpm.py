"""DDPM (Ho et al. 2020): the DDPM U-Net with the discrete 1000-step chain (ancestral sampling)."""
from configs.cifar10 import vp_ddpm_continuous


def get_config():
  config = vp_ddpm_continuous.get_config()
  config.training.continuous = False
  config.sampling.predictor = "ancestral"
  return config
