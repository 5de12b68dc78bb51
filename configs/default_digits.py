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
  # y = x / alpha against sigma / alpha, Bogacki-Shampine 3(2), each example's error held to 7e-4: every one of
  # the 297 test digits within 0.0054 bits/dim of a 1e-7 solve at 160 score evaluations, where (x, t) with Tsit5
  # and the batch norm need 487 for 0.0100 and 523 for 0.0059; on the make-demo model 148 for 0.0095 against 433
  # for 0.0086 (benchmarks/likelihood_cost.py --workdir RUN --num_examples 297, README).
  evaluate.ode_variables = "ddim"
  evaluate.ode_solver = "bosh3"
  evaluate.ode_error_norm = "per_example"
  evaluate.rtol = 7e-4
  evaluate.atol = 7e-4

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
