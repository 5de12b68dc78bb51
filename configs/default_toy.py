"""2-D toy distributions with the residual MLP: trains in seconds on one CPU core."""
import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.seed = 0

  training = config.training
  training.batch_size = 512
  training.n_iters = 4000
  training.snapshot_freq = 2000
  training.snapshot_freq_for_preemption = 500
  training.log_freq = 100
  training.eval_freq = 500
  training.eval_batches = 4
  training.snapshot_num_samples = 2000
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = "ode"
  sampling.rtol = 1e-4
  sampling.atol = 1e-4

  data = config.data
  data.dataset = "checkerboard"
  data.dim = 2
  data.centered = False
  data.random_flip = False

  model = config.model
  model.name = "mlp"
  model.nf = 128
  model.num_res_blocks = 3
  model.dropout = 0.0
  model.ema_rate = 0.999
  model.embedding_type = "positional"

  optim = config.optim
  optim.lr = 2e-3
  optim.warmup = 200
  optim.grad_clip = 1.0
  return config
