"""vpsde + mlp on the toy family (configs/default_toy.py)."""
import ml_collections

from configs.default_toy import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vpsde"
  return config
