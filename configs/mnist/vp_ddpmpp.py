"""A CPU-sized DDPM++ (VP SDE) on MNIST: 2 resolutions (28, 14), one BigGAN block each, positional embedding."""
import ml_collections

from configs.default_mnist import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  config.training.sde = "vpsde"
  config.training.reduce_mean = True
  model = config.model
  model.name = "ncsnpp"
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (14,)
  model.dropout = 0.0
  model.resblock_type = "biggan"
  model.fir = False
  model.progressive = "none"
  model.progressive_input = "none"
  model.embedding_type = "positional"
  model.scale_by_sigma = False
  return config
