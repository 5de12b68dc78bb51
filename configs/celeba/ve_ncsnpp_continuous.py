"""NCSN++ cont. (VE, sigma_max = 90) on CelebA 64x64, with the CIFAR-10 NCSN++ architecture."""
from configs import default_celeba, default_cifar10


def get_config():
  config = default_cifar10.ncsnpp(default_celeba.get_default_configs())
  config.model.sigma_max = 90.0
  return config
