"""`make demo`: train the digits config on bundled data for a few minutes, sample with the
probability-flow ODE, print test-split bits/dim and write <workdir>/samples.png.

python scripts/demo.py --workdir runs/demo [--train_minutes 4] [--config configs/digits/vp_unet.py]
[--config.training.n_iters=...]. Offline: scikit-learn's 8x8 digits ship with the package. Training
stops at n_iters or after --train_minutes, whichever comes first, and resumes if run again.
"""
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: `configs`

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from score_sde import configs_util, evaluate, train  # noqa: E402

config_flags.DEFINE_config_file("config", str(ROOT / "configs/digits/vp_unet.py"), "leaf config file",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/demo", "output directory")
flags.DEFINE_float("train_minutes", 4.0, "wall-clock budget for training")
flags.DEFINE_integer("num_samples", 64, "digits to sample for samples.png")
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
  state = train.train_and_evaluate(config, workdir, time_limit_s=60 * FLAGS.train_minutes)
  print(f"trained {int(state.step)} steps in {time.perf_counter() - start:.0f} s")

  setup = train.build(config)
  sample_fn = evaluate.get_sample_fn(config, setup.sde, setup.model, FLAGS.num_samples)
  tic = time.perf_counter()
  samples, nfe = sample_fn(setup.keys.sample, train.evaluation_params(config, state))
  evaluate.save_image_grid(workdir / "samples.png", np.asarray(samples))
  print(f"sampled {FLAGS.num_samples} digits with the probability-flow ODE ({config.sampling.solver}, "
        f"{int(nfe)} score evaluations, {time.perf_counter() - tic:.0f} s) -> {workdir / 'samples.png'}")

  tic = time.perf_counter()
  params = train.evaluation_params(config, state)
  bpd, bpd_nfe = evaluate.bits_per_dim_over_split(setup.keys.likelihood, config, setup.sde, setup.model, params,
                                                  "test", config.eval.bpd_num_examples)
  print(f"test bits/dim: {bpd.mean():.3f} +- {bpd.std() / np.sqrt(len(bpd)):.3f} over {len(bpd)} held-out digits "
        f"(uniform dequantization, probability-flow ODE, {bpd_nfe} score evaluations, "
        f"{time.perf_counter() - tic:.0f} s)")
  print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} minutes on {jax.device_count()} device(s)")


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: configs_util.parse_config_flags(argv, FLAGS))
