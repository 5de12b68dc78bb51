"""vesde + mlp on the toy family (configs/default_toy.py)."""
import ml_collections

from configs.default_toy import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vesde"
  config.model.embedding_type = "fourier"
  config.model.scale_by_sigma = True
  config.model.sigma_min = 0.01
  config.model.sigma_max = 10.0  # ~ the diameter of the toy distributions
  return config
