"""scikit-learn's 8x8 digits (bundled, offline) with a small U-Net: the `make demo` family."""
import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.seed = 0

  training = config.training
  training.batch_size = 128
  training.n_iters = 4000
  training.snapshot_freq = 2000
  training.snapshot_freq_for_preemption = 500
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_num_samples = 64

  sampling = config.sampling
  sampling.method = "ode"

  evaluate = config.eval
  evaluate.batch_size = 300  # the 297 test digits in one likelihood solve
  evaluate.enable_bpd = True
  evaluate.bpd_num_examples = 100  # a bounded end-of-run evaluation; --num_examples 0 in scripts/likelihood.py: all
  # y = x / alpha against sigma / alpha at 1e-2: 109 score evaluations for 64 test digits against 361 for
  # (x, t) at 1e-4, mean bits/dim within 0.001 of a 1e-7 solve (benchmarks/likelihood_cost.py --workdir).
  evaluate.ode_variables = "ddim"
  evaluate.rtol = 1e-2
  evaluate.atol = 1e-2

  data = config.data
  data.dataset = "digits"
  data.image_size = 8
  data.num_channels = 1
  data.centered = True
  data.random_flip = False
  data.uniform_dequantization = True
  data.num_heldout = 297  # 1500 training and 297 test digits

  model = config.model
  model.name = "unet"
  model.nf = 16
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
  model.dropout = 0.0
  model.ema_rate = 0.99  # an averaging window of ~100 steps suits runs of a few thousand steps
  model.embedding_type = "positional"

  optim = config.optim
  optim.lr = 2e-3
  optim.warmup = 200
  return config
