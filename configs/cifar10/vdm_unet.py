"""VDM on CIFAR-10 after Kingma et al. 2021 (Table 3 / google-research/vdm configs/cifar10.py), for accelerators.

The paper's network is a 32-block, 128-channel U-Net without down-sampling, attention only in the
middle, Fourier features (2^6, 2^7), dropout 0.1, AdamW (lr 2e-4, b2 0.99, weight decay 0.01),
batch 128, EMA 0.9999, gamma from -13.3 to 5 with a learned schedule. Our "unet" down-samples, so
this is the closest configuration of it: 128 channels, 8 resolution-preserving levels (ch_mult all 1)
of 4 blocks each, attention at 32 (the middle block always has attention).
"""
import ml_collections

from configs.default_cifar10 import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()
  training = config.training
  training.sde = "vdm"
  training.objective = "vdm"
  training.batch_size = 128
  training.n_iters = 10_000_000

  data = config.data
  data.centered = True
  data.uniform_dequantization = False
  data.random_flip = False  # the paper's headline 2.65 bits/dim is without augmentation

  evaluate = config.eval
  evaluate.ode_dequantization = "encoder"  # 8-bit data: the forward process at eps is the dequantizer
  evaluate.ode_variables = "ddim"

  model = config.model
  model.name = "unet"
  model.nf = 128
  model.ch_mult = (1,)
  model.num_res_blocks = 32
  model.attn_resolutions = ()
  model.dropout = 0.1
  model.ema_rate = 0.9999
  model.embedding_type = "positional"
  model.fourier_features = True
  model.gamma_min = -13.3
  model.gamma_max = 5.0
  model.schedule_features = 1024

  optim = config.optim
  optim.optimizer = "AdamW"
  optim.lr = 2e-4
  optim.weight_decay = 0.01
  optim.warmup = 100
  optim.grad_clip = 0.0
  return config
