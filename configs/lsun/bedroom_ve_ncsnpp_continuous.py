"""NCSN++ cont. (VE) on LSUN bedroom 256x256."""
from configs import default_lsun


def get_config():
  config = default_lsun.ncsnpp_256(default_lsun.get_default_configs())
  config.data.dataset = "LSUN/bedroom"
  return config
