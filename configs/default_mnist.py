"""MNIST (28x28 grayscale) with the small U-Net; TFDS `mnist`, or IDX files via data.path."""
import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.seed = 0

  training = config.training
  training.batch_size = 32
  training.n_iters = 2000
  training.snapshot_freq = 1000
  training.snapshot_freq_for_preemption = 200
  training.log_freq = 50
  training.eval_freq = 500
  training.snapshot_num_samples = 36

  sampling = config.sampling
  sampling.method = "ode"

  evaluate = config.eval
  evaluate.batch_size = 250
  evaluate.enable_bpd = True
  evaluate.bpd_num_examples = 500  # a bounded end-of-run evaluation; --num_examples 0 in scripts/likelihood.py: all
  # y = x / alpha against sigma / alpha, Dormand-Prince 5(4), each example's error held to 3e-3: every one of 32
  # held-out digits of the one-hour VP run within 0.0027 bits/dim of a 1e-7 solve at 79 score evaluations, where
  # (x, t) with Tsit5 and the batch norm needs 319 for 0.0090 (benchmarks/likelihood_cost.py --workdir RUN
  # --num_examples 32 --skip_sampling, README).
  evaluate.ode_variables = "ddim"
  evaluate.ode_solver = "dopri5"
  evaluate.ode_error_norm = "per_example"
  evaluate.rtol = 3e-3
  evaluate.atol = 3e-3

  data = config.data
  data.dataset = "MNIST"
  data.image_size = 28
  data.num_channels = 1
  data.centered = True
  data.random_flip = False
  data.uniform_dequantization = True
  data.num_heldout = 1000

  model = config.model
  model.name = "unet"
  model.nf = 16
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (7,)
  model.dropout = 0.0
  model.ema_rate = 0.99  # an averaging window of ~100 steps suits runs of a few thousand steps
  model.embedding_type = "positional"

  optim = config.optim
  optim.lr = 2e-3
  optim.warmup = 100
  return config
