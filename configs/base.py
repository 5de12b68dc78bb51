"""Every config field the project knows, with defaults; families and leaf configs override them.

Configs are locked before use, so a misspelt field on the command line or in a leaf config fails
instead of being silently added.
"""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.training = training = ml_collections.ConfigDict()
  training.sde = "vpsde"  # vpsde | subvpsde | vesde | vdm (VP-type with a learned schedule, model.gamma_*)
  training.objective = "dsm"  # dsm (score matching, the fields below) | vdm (the VDM bound, config.vdm)
  training.batch_size = 128
  training.n_iters = 1300001
  training.snapshot_freq = 50000
  training.snapshot_freq_for_preemption = 10000
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.importance_weighting = False
  training.continuous = True
  training.reduce_mean = False
  training.eps = 1e-5
  training.cond_drop_prob = 0.0
  training.snapshot_num_samples = 64  # samples drawn for the PNG grid at each snapshot
  training.eval_batches = 1  # batches averaged for the periodic eval loss
  training.fsdp_size = 1  # devices each parameter is split over (mesh axis 'fsdp'); 1: replicated

  config.vdm = vdm = ml_collections.ConfigDict()  # training.objective = "vdm" (score_sde/vdm.py)
  vdm.num_steps = 0  # 0: the continuous-time bound; T: the bound of T discrete steps
  vdm.low_discrepancy = True  # times (u_0 + i / B) mod 1 over the batch instead of i.i.d.
  vdm.schedule_grad = "variance"  # a learned schedule's shape: minimise the loss variance | "elbo": the loss

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.n_steps_each = 1
  sampling.snr = 0.16
  sampling.noise_removal = True
  sampling.solver = "tsit5"  # probability-flow ODE solver (method "ode")
  sampling.rtol = 1e-5
  sampling.atol = 1e-5
  sampling.ode_variables = "time"  # "time" (x against t), "ddim", "log_snr": flow_variables.py (method "ode")
  sampling.num_steps = 0  # 0: adaptive ODE steps / the SDE's N for PC; else a fixed step count

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.batch_size = 1024
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = "test"
  evaluate.bpd_num_examples = 0  # examples of bpd_dataset evaluated after training and by scripts/likelihood.py; 0: all
  evaluate.rtol = 1e-5  # likelihood ODE tolerances
  evaluate.atol = 1e-5
  evaluate.ode_variables = "time"  # likelihood ODE variables: "time" (x against t), "ddim", "log_snr"
  # Step-size control of the likelihood ODE: "batch_rms" (RMS error of the whole batch) or "per_example" (the worst
  # example's state and log-density: each image's bits/dim to the tolerance; likelihood.ERROR_NORMS).
  evaluate.ode_error_norm = "batch_rms"
  evaluate.ode_solver = "tsit5"  # adaptive solver of the likelihood ODE (sampling.ode.ADAPTIVE_SOLVERS)
  # How the ODE density becomes bits/dim of 8-bit data: "uniform" dequantization, or "encoder" (the forward process
  # at training.eps with the pixel-grid decoder, for models trained on 8-bit values: likelihood.encoder_bound_nll).
  evaluate.ode_dequantization = "uniform"

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "CIFAR10"
  data.path = ""
  data.image_size = 32
  data.num_channels = 3
  data.centered = False
  data.random_flip = True
  data.uniform_dequantization = False
  data.dim = 2  # event size of the 2-D toy distributions
  data.num_heldout = 1000  # local files without a test split: the last num_heldout examples are the test split
  data.prefetch = 2  # batches read ahead by background threads (grain; toys are always sampled in step); 0: read when asked

  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"
  model.sigma_min = 0.01
  model.sigma_max = 50.0
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.gamma_min = -13.3  # training.sde = "vdm": initial end points gamma(0), gamma(1) of the learned schedule
  model.gamma_max = 5.0
  model.schedule_features = 1024  # hidden units of the learned schedule's monotone network
  model.fourier_features = False  # VDM's Fourier features sin/cos(2 pi 2^k x), k = 6, 7, of the network input
  model.dropout = 0.1
  model.ema_rate = 0.9999
  model.embedding_type = "fourier"
  model.fourier_scale = 16.0
  model.scale_by_sigma = False
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.conv_size = 3
  model.num_classes = 0
  model.dtype = "float32"

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "Adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 5000
  optim.grad_clip = 1.0
  return config
