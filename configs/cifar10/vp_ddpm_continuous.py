"""The DDPM U-Net (Ho et al. 2020; 35.7M parameters) trained with the continuous VP SDE objective."""
from configs import default_cifar10


def get_config():
  config = default_cifar10.get_default_configs()
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.training.reduce_mean = True
  config.data.centered = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  model = config.model
  model.name = "ddpm"
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.embedding_type = "positional"
  return config
