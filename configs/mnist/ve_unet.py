"""vesde + unet on the mnist family (configs/default_mnist.py)."""
import ml_collections

from configs.default_mnist import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vesde"
  config.model.embedding_type = "fourier"
  config.model.scale_by_sigma = True
  config.model.sigma_max = 50.0  # ~ the largest distance between two 28x28 images in [-1, 1]
  return config
