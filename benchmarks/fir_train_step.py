"""NCSN++ training step with FIR resampling as separable passes against the per-plane convolution, in one process.

python benchmarks/fir_train_step.py [--nf 0] [--rounds 3]   (--nf 0: the config's full size)

Builds cifar10/ve_ncsnpp_continuous (batch 8) twice, with `upfirdn2d` as now and with
`upfirdn2d_depthwise` (the previous implementation), and alternates their jitted steps; prints the
first (compiling) step, the sorted step times and the load average.
"""
import argparse
import os
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from score_sde import configs_util, train  # noqa: E402
from score_sde.models import up_or_down_sampling  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nf", type=int, default=0)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  overrides = ["--config.training.batch_size=8"] + ([f"--config.model.nf={args.nf}"] if args.nf else [])
  config = configs_util.load_config(str(ROOT / "configs/cifar10/ve_ncsnpp_continuous.py"), overrides)
  separable = up_or_down_sampling.upfirdn2d
  runs = {}
  for name, impl in (("depthwise", up_or_down_sampling.upfirdn2d_depthwise), ("separable", separable)):
    up_or_down_sampling.upfirdn2d = impl  # traced below, so the compiled step keeps this implementation
    setup = train.build(config, jax.devices()[:1])
    step, _ = train.get_step_fns(config, setup)
    images = np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)
    batch = train.shard_batch({"image": images, "label": np.zeros(8, np.int32)}, setup.mesh)
    state = train.init_state(config, setup)
    start = time.perf_counter()
    state, metrics = step(state, batch, setup.keys.train)
    jax.block_until_ready(metrics)
    print(f"{name}: first step {time.perf_counter() - start:.1f} s", flush=True)
    runs[name] = [step, state, batch, setup.keys.train, []]
  up_or_down_sampling.upfirdn2d = separable
  for r in range(args.rounds):
    for run in runs.values():
      start = time.perf_counter()
      run[1], metrics = run[0](run[1], run[2], jax.random.fold_in(run[3], r))
      jax.block_until_ready(metrics)
      run[4].append(time.perf_counter() - start)
  for name, run in runs.items():
    print(f"{name}: s/step {', '.join(f'{s:.2f}' for s in sorted(run[4]))}")
  print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
