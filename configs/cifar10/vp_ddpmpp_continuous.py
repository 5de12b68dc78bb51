"""DDPM++ cont. on CIFAR-10 with the VP SDE (Song et al. 2021, Table 3)."""
from configs import default_cifar10


def get_config():
  config = default_cifar10.ddpmpp(default_cifar10.get_default_configs())
  config.training.sde = "vpsde"
  return config
