"""NCSN++ cont. (VE, sigma_max = 348) on FFHQ 256x256, read from local files (--config.data.path)."""
from configs import default_lsun


def get_config():
  config = default_lsun.ncsnpp_256(default_lsun.get_default_configs())
  config.data.dataset = "files"
  config.model.sigma_max = 348.0
  return config
