"""NCSNv2 (Song & Ermon 2020) on CIFAR-10: 232 noise scales, discrete SMLD training, annealed Langevin."""
from configs import default_cifar10


def get_config():
  config = default_cifar10.get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = False
  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 5
  sampling.snr = 0.176
  model = config.model
  model.name = "ncsnv2_64"
  model.scale_by_sigma = True
  model.num_scales = 232
  model.ema_rate = 0.999
  model.normalization = "InstanceNorm++"
  model.nonlinearity = "elu"
  model.nf = 128
  optim = config.optim
  optim.lr = 1e-4
  optim.warmup = 0
  optim.grad_clip = -1.0
  return config
