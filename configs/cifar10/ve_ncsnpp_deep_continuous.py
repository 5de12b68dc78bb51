"""NCSN++ cont. (deep: 8 residual blocks per resolution) on CIFAR-10 with the VE SDE."""
from configs import default_cifar10


def get_config():
  config = default_cifar10.ncsnpp(default_cifar10.get_default_configs())
  config.model.num_res_blocks = 8
  return config
