"""CIFAR-10 (32x32x3) family defaults of Song et al. 2021; leaf configs in configs/cifar10/ set SDE and model."""
import ml_collections

from configs import base


def get_default_configs() -> ml_collections.ConfigDict:
  config = base.get_base_config()
  config.seed = 42
  training = config.training
  training.batch_size = 128
  training.n_iters = 1300001
  training.snapshot_freq = 50000
  training.snapshot_freq_for_preemption = 10000
  training.log_freq = 50
  training.eval_freq = 100
  config.sampling.snr = 0.16
  data = config.data
  data.dataset = "CIFAR10"
  data.image_size = 32
  data.num_channels = 3
  data.centered = False
  data.random_flip = True
  model = config.model
  model.sigma_min = 0.01
  model.sigma_max = 50.0
  model.num_scales = 1000
  model.dropout = 0.1
  model.embedding_type = "fourier"
  return config


def ncsnpp(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """NCSN++ (VE): BigGAN blocks, FIR resampling, residual input pyramid, Fourier noise features."""
  model = config.model
  model.name = "ncsnpp"
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "residual"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "fourier"
  model.fourier_scale = 16.0
  model.conv_size = 3
  config.training.sde = "vesde"
  config.training.continuous = True
  config.sampling.method = "pc"
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  return config


def ddpmpp(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """DDPM++ (VP, sub-VP): NCSN++ without FIR or pyramids, positional embedding, centered data."""
  config = ncsnpp(config)
  model = config.model
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.fir = False
  model.progressive_input = "none"
  model.embedding_type = "positional"
  config.training.sde = "vpsde"
  config.training.reduce_mean = True
  config.data.centered = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  return config
