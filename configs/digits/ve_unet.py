"""vesde + unet on the digits family (configs/default_digits.py)."""
import ml_collections

from configs.default_digits import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vesde"
  config.model.embedding_type = "fourier"
  config.model.scale_by_sigma = True
  config.model.sigma_max = 20.0  # ~ the largest distance between two 8x8 images in [-1, 1]
  return config
