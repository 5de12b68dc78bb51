"""`make demo`: train the digits config on bundled data for a few minutes, sample with the
probability-flow ODE, print test-split bits/dim and write <workdir>/samples.png.

score-sde-demo --workdir runs/demo [--train_minutes 4] [--config configs/digits/vp_unet.py]
[--config.training.n_iters=...] (or `python scripts/demo.py ...`). Offline: scikit-learn's 8x8
digits ship with it. Training stops at n_iters or after --train_minutes, whichever comes first, and
resumes if run again. Bits/dim are computed over the first config.eval.bpd_num_examples test digits.
"""
import pathlib
import time

import configs
import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from score_sde import evaluate, train
from score_sde.cli import common

config_flags.DEFINE_config_file("config", str(pathlib.Path(configs.__file__).parent / "digits/vp_unet.py"),
                                "leaf config file", lock_config=True)
flags.DEFINE_string("workdir", "runs/demo", "output directory")
flags.DEFINE_float("train_minutes", 4.0, "wall-clock budget for training")
flags.DEFINE_integer("num_samples", 64, "digits to sample for samples.png", lower_bound=1)
common.define_verbose_flag()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config, workdir = FLAGS.config, pathlib.Path(FLAGS.workdir)
  start = time.perf_counter()
  print(f"training {config.model.name} ({config.training.sde}) on {config.data.dataset} for up to "
        f"{config.training.n_iters} steps or {FLAGS.train_minutes:g} minutes in {workdir}")
  with config.unlocked():
    config.eval.enable_bpd = False  # sampled and evaluated below, once
    config.training.snapshot_sampling = False
  common.check_training_inputs(config)
  state = train.train_and_evaluate(config, workdir, time_limit_s=60 * FLAGS.train_minutes)
  print(f"trained {int(state.step)} steps in {time.perf_counter() - start:.0f} s")

  setup = train.build(config)
  sample_fn = evaluate.get_sample_fn(config, setup.sde, setup.model, FLAGS.num_samples)
  tic = time.perf_counter()
  samples, nfe = sample_fn(setup.keys.sample, train.evaluation_params(state))
  evaluate.save_image_grid(workdir / "samples.png", np.asarray(samples))
  print(f"sampled {FLAGS.num_samples} digits with the probability-flow ODE ({config.sampling.solver}, "
        f"{int(nfe)} score evaluations, {time.perf_counter() - tic:.0f} s) -> {workdir / 'samples.png'}")

  tic = time.perf_counter()
  params = train.evaluation_params(state)
  bpd, bpd_nfe = evaluate.bits_per_dim_over_split(setup.keys.likelihood, config, setup.sde, setup.model, params,
                                                  "test", config.eval.bpd_num_examples, progress=True)
  print(f"test bits/dim: {bpd.mean():.3f} +- {bpd.std() / np.sqrt(len(bpd)):.3f} over {len(bpd)} held-out digits "
        f"(uniform dequantization, probability-flow ODE, {bpd_nfe} score evaluations, "
        f"{time.perf_counter() - tic:.0f} s)")
  print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} minutes on {jax.device_count()} device(s)")


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
