"""CelebA 64x64 family defaults (Song et al. 2021)."""
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
  config.sampling.snr = 0.17
  data = config.data
  data.dataset = "CELEBA"
  data.image_size = 64
  data.num_channels = 3
  data.centered = False
  data.random_flip = True
  model = config.model
  model.sigma_min = 0.01
  model.sigma_max = 90.0
  model.num_scales = 1000
  model.dropout = 0.1
  model.embedding_type = "fourier"
  return config
