"""256x256 family defaults (LSUN; also CelebA-HQ and FFHQ at 256) of Song et al. 2021."""
import ml_collections

from configs import base


def get_default_configs() -> ml_collections.ConfigDict:
  config = base.get_base_config()
  config.seed = 42
  training = config.training
  training.batch_size = 64
  training.n_iters = 2400001
  training.snapshot_freq = 50000
  training.snapshot_freq_for_preemption = 5000
  training.log_freq = 50
  training.eval_freq = 100
  config.sampling.snr = 0.075
  evaluate = config.eval
  evaluate.batch_size = 512
  data = config.data
  data.dataset = "LSUN/church_outdoor"
  data.image_size = 256
  data.num_channels = 3
  data.centered = False
  data.random_flip = True
  model = config.model
  model.sigma_min = 0.01
  model.sigma_max = 378.0
  model.num_scales = 2000
  model.dropout = 0.0
  model.embedding_type = "fourier"
  return config


def ncsnpp_256(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """NCSN++ cont. (VE) at 256x256: 7 resolutions, 2 blocks each, output and input skip pyramids."""
  config.training.sde = "vesde"
  config.training.continuous = True
  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  model = config.model
  model.name = "ncsnpp"
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "output_skip"
  model.progressive_input = "input_skip"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.fourier_scale = 16.0
  model.conv_size = 3
  return config
