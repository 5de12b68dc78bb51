"""NCSNv2 (Song & Ermon 2020) on CelebA 64x64: 500 noise scales up to sigma = 90, annealed Langevin."""
from configs import default_celeba


def get_config():
  config = default_celeba.get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = False
  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 5
  sampling.snr = 0.128
  model = config.model
  model.name = "ncsnv2_64"
  model.scale_by_sigma = True
  model.num_scales = 500
  model.ema_rate = 0.999
  model.normalization = "InstanceNorm++"
  model.nonlinearity = "elu"
  model.nf = 128
  optim = config.optim
  optim.lr = 1e-4
  optim.warmup = 0
  optim.grad_clip = -1.0
  return config
