"""Input pipeline batches/s, read synchronously (data.prefetch=0) vs read ahead by grain threads.

Streams `get_dataset(config, "train")` over TFDS mock data (random examples served through
`tfds.data_source`, then cropped/resized, dequantized and flipped as real data would be), with two
consumers: one that only takes batches, and one that also spends a simulated training step per batch
(`time.sleep`, which like a running XLA step leaves the Python thread free). The step lasts as long
as one synchronous read, the case where overlapping the read with the step pays most (up to 2x).
Both streams yield the same batches; each row is the median of `--repeats` timings.

  python benchmarks/input_pipeline.py [--dataset CIFAR10] [--batch 128] [--batches 20] [--prefetch 2]
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import time

from absl import logging

from score_sde import configs_util, datasets

SHAPES = {"MNIST": (28, 1), "CIFAR10": (32, 3), "CELEBA": (64, 3)}


def make_config(dataset: str, prefetch: int):
  """The MNIST training config pointed at `dataset`, with flips and dequantization on."""
  image_size, channels = SHAPES[dataset]
  config = configs_util.load_config(pathlib.Path(__file__).resolve().parents[1] / "configs/mnist/vp_unet.py")
  config.data.update(dataset=dataset, image_size=image_size, num_channels=channels, random_flip=True,
                     uniform_dequantization=True, prefetch=prefetch)
  return config


def batches_per_sec(config, batch_size: int, num_batches: int, step_s: float) -> float:
  """Batches/s over `num_batches` after the first (which includes start-up), sleeping `step_s` per batch."""
  with contextlib.closing(datasets.get_dataset(config, "train", batch_size=batch_size)) as stream:
    next(stream)
    start = time.perf_counter()
    for _ in range(num_batches):
      next(stream)
      time.sleep(step_s)
    return num_batches / (time.perf_counter() - start)


def median_rate(config, args, step_s: float) -> float:
  return statistics.median(batches_per_sec(config, args.batch, args.batches, step_s) for _ in range(args.repeats))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="CIFAR10", choices=sorted(SHAPES))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  logging.set_verbosity(logging.ERROR)  # TFDS warns about its mock metadata at every data_source call
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  synchronous, prefetched = make_config(args.dataset, 0), make_config(args.dataset, args.prefetch)
  with tfds.testing.mock_data(num_examples=args.batch * (args.batches + 2)):
    read_s = 1 / median_rate(synchronous, args, 0.0)
    print(f"{args.dataset} mock data, batch {args.batch}, {args.batches} batches, prefetch={args.prefetch}")
    print(f"{'consumer':<32} {'prefetch=0':>12} {f'prefetch={args.prefetch}':>12} {'ratio':>7}")
    for name, step_s in (("read only", 0.0), (f"+ {1e3 * read_s:.0f} ms simulated step", read_s)):
      rates = [1 / read_s if step_s == 0.0 else median_rate(synchronous, args, step_s),
               median_rate(prefetched, args, step_s)]
      print(f"{name:<32} {rates[0]:>10.1f}/s {rates[1]:>10.1f}/s {rates[1] / rates[0]:>6.2f}x")


if __name__ == "__main__":
  main()
