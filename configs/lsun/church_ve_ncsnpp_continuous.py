"""NCSN++ cont. (VE) on LSUN church_outdoor 256x256."""
from configs import default_lsun


def get_config():
  return default_lsun.ncsnpp_256(default_lsun.get_default_configs())
