"""Images/s of the small U-Net training step at a fixed global batch, on one CPU device and on two.

python benchmarks/train_throughput.py [--config configs/mnist/vp_unet.py] [--batch 32] [--steps 10]

Both meshes run in one process (two host devices are forced through XLA_FLAGS before jax loads) on
the same random batch and initial state; the table reports the median seconds per step and the ratio.
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2"])

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from score_sde import configs_util, datasets, train  # noqa: E402


def seconds_per_step(config, devices, steps: int) -> float:
  """Median wall time of a jitted, sharded train step after one warm-up (compile) step."""
  setup = train.build(config, devices)
  state = train.init_state(config, setup)
  train_step, _ = train.get_step_fns(config, setup)
  shape = (config.training.batch_size,) + datasets.data_shape(config)
  images = np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)  # data content does not matter
  batch = train.shard_batch({"image": images, "label": np.zeros(shape[0], np.int32)}, setup.mesh)
  state, metrics = train_step(state, batch, setup.keys.train)
  jax.block_until_ready(metrics)
  times = []
  for step in range(steps):
    tic = time.perf_counter()
    state, metrics = train_step(state, batch, jax.random.fold_in(setup.keys.train, step))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - tic)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(ROOT / "configs/mnist/vp_unet.py"))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  config = configs_util.load_config(args.config, [f"--config.training.batch_size={args.batch}"])
  shape = "x".join(map(str, (config.data.image_size, config.data.image_size, config.data.num_channels)))
  print(f"small U-Net train step ({config.model.name}, nf={config.model.nf}, ch_mult={tuple(config.model.ch_mult)}), "
        f"global batch {args.batch} of {shape}, median of {args.steps} steps")
  rows = [(n, seconds_per_step(config, jax.devices()[:n], args.steps)) for n in (1, 2)]
  print(f"{'devices':>8} {'s/step':>8} {'images/s':>9}")
  for n, seconds in rows:
    print(f"{n:>8} {seconds:>8.3f} {args.batch / seconds:>9.1f}")
  print(f"two / one device throughput: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
  main()
