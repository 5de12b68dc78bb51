"""DDPM++ cont. (deep: 8 residual blocks per resolution) on CIFAR-10 with the VP SDE."""
from configs import default_cifar10


def get_config():
  config = default_cifar10.ddpmpp(default_cifar10.get_default_configs())
  config.training.sde = "vpsde"
  config.model.num_res_blocks = 8
  return config
