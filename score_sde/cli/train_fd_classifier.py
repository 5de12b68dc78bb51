"""Train the FD-MNIST feature network: `python scripts/train_fd_classifier.py --config configs/mnist/vp_unet.py
[--config.data.path=DIR] --out fd_mnist.npz [--num_steps 1000]`.

Trains `score_sde.metrics.mnist.MnistFeatureNet` with Adam on the cross-entropy of the config's
training split (MNIST: TFDS `mnist`, or local IDX / .npz / PNG files through data.path, split by
data.num_heldout), prints its accuracy on the held-out split, and writes its weights to --out. Its
128-d penultimate features define the FD-MNIST Frechet distance and its logits a classifier
Inception score (scripts/fid_stats.py and scripts/evaluate.py with --feature_net=fd_mnist
--fd_mnist_weights=OUT).
"""
from __future__ import annotations

import pathlib
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from score_sde import console, datasets
from score_sde.cli import common
from score_sde.metrics import mnist

config_flags.DEFINE_config_file("config", None, "leaf config of an MNIST run, e.g. configs/mnist/vp_unet.py",
                                lock_config=True)
flags.DEFINE_string("out", None, "output .npz of the classifier weights")
flags.DEFINE_integer("num_steps", 1000, "Adam steps")
flags.DEFINE_integer("batch_size", 128, "images per step")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate")
flags.DEFINE_integer("seed", 0, "initialization and batch-order seed")
common.define_verbose_flag()
flags.mark_flags_as_required(["config", "out"])
FLAGS = flags.FLAGS


def load_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, 28, 28, 1] in [0, 1], labels [N]) of a split."""
  if datasets.data_shape(config) != mnist.IMAGE_SHAPE:
    raise ValueError(f"the FD-MNIST network takes {mnist.IMAGE_SHAPE} images; the config has "
                     f"{datasets.data_shape(config)} (data.image_size, data.num_channels)")
  source = datasets.get_source(config, split)
  images, labels = source.fetch(np.arange(len(source)))
  return images.astype(np.float32) / 255.0, labels.astype(np.int32)


def main(argv) -> None:
  del argv
  config = FLAGS.config
  images, labels = load_split(config, "train")
  start = time.time()
  bar = console.progress_bar(total=FLAGS.num_steps, desc=f"FD-MNIST classifier ({len(images)} images)", unit="step")

  def progress(step: int, loss: float) -> None:
    bar.update()
    if step % 50 == 0:
      bar.set_postfix(loss=f"{loss:.3f}")

  params = mnist.train(FLAGS.seed, images, labels, FLAGS.num_steps, FLAGS.batch_size, FLAGS.learning_rate,
                       progress=progress)
  bar.close()
  test_images, test_labels = load_split(config, "test")
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  mnist.save_params(out, params)
  print(f"{FLAGS.num_steps} steps in {time.time() - start:.0f} s; held-out accuracy "
        f"{mnist.accuracy(params, test_images, test_labels):.4f} on {len(test_images)} images; written to {out}")


def run() -> None:
  common.run(main)
