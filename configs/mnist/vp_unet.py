"""vpsde + unet on the mnist family (configs/default_mnist.py)."""
import ml_collections

from configs.default_mnist import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vpsde"
  return config
