"""NCSN++ cont. on CIFAR-10 with the VE SDE (Song et al. 2021, Table 3)."""
from configs import default_cifar10


def get_config():
  return default_cifar10.ncsnpp(default_cifar10.get_default_configs())
