"""subvpsde + unet on the digits family (configs/default_digits.py)."""
import ml_collections

from configs.default_digits import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "subvpsde"
  return config
