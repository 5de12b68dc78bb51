"""A CPU-sized NCSN++ (VE SDE) on MNIST: FIR resampling, residual input pyramid, Fourier noise features."""
import ml_collections

from configs.default_mnist import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vesde"
  config.training.reduce_mean = True
  config.sampling.method = "pc"
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  model = config.model
  model.name = "ncsnpp"
  model.sigma_max = 40.0  # above the largest distance between MNIST digits in [-1, 1] (~31): Song & Ermon 2020, technique 1
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (14,)
  model.dropout = 0.0
  model.resblock_type = "biggan"
  model.fir = True
  model.progressive = "none"
  model.progressive_input = "residual"
  model.embedding_type = "fourier"
  model.scale_by_sigma = True
  return config
