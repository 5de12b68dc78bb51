"""Feature statistics of a dataset split for FID / KID:
`python scripts/fid_stats.py --config C [--config.data.path=...] --out FILE.npz [--split train]`.

Writes `mu` and `sigma` (the layout of pytorch-fid's published statistics files, e.g. CIFAR-10's,
which scripts/evaluate.py reads as they are), plus `features` (the first --kid_features feature
vectors, for KID) and `num_examples`. Images are read without dequantization noise (x / 255), as
pytorch-fid reads image files. Feature networks: --feature_net=inception (the FID Inception-v3,
--inception_weights pt_inception-2015-12-05-6726825d.pth) or fd_mnist (--fd_mnist_weights from
scripts/train_fd_classifier.py). Each batch is split over all devices of all processes; process 0
writes the file.
"""
from __future__ import annotations

import pathlib

from absl import flags
from ml_collections import config_flags

from score_sde import evaluate, launch, parallel
from score_sde.cli import common
from score_sde.metrics import features, quality

config_flags.DEFINE_config_file("config", None, "leaf config file of the dataset, e.g. configs/cifar10/vp_ddpmpp.py",
                                lock_config=True)
flags.DEFINE_string("out", None, "output .npz")
flags.DEFINE_enum("split", "train", ["train", "test"], "data split")
flags.DEFINE_integer("num_examples", 0, "examples of the split (0: all)")
flags.DEFINE_integer("batch_size", None, "images per batch (default: config.eval.batch_size)")
flags.DEFINE_enum("feature_net", "inception", sorted(features.FEATURE_NETWORKS), "feature network")
flags.DEFINE_string("inception_weights", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
flags.DEFINE_string("fd_mnist_weights", None, "weights .npz of scripts/train_fd_classifier.py")
flags.DEFINE_integer("kid_features", 10_000, "feature vectors kept for KID")
launch.define_flags()
common.define_verbose_flag()
flags.mark_flags_as_required(["config", "out"])
FLAGS = flags.FLAGS


def weights_flag() -> str | None:
  """The weights file of --feature_net."""
  return {"inception": FLAGS.inception_weights, "fd_mnist": FLAGS.fd_mnist_weights}[FLAGS.feature_net]


def main(argv) -> None:
  del argv
  launch.initialize(FLAGS)
  config = FLAGS.config
  feature_net = features.get_feature_net(FLAGS.feature_net, weights_flag())
  batch_size = FLAGS.batch_size or config.eval.batch_size
  mesh = parallel.get_mesh()
  if batch_size % mesh.size:
    raise ValueError(f"--batch_size={batch_size} is not divisible by the {mesh.size} devices of all processes")
  sample_stats = evaluate.feature_statistics_over_split(config, feature_net, FLAGS.split, batch_size,
                                                        FLAGS.num_examples, kid_features=FLAGS.kid_features,
                                                        mesh=mesh, progress=True)
  if sample_stats is None:
    raise ValueError(f"split {FLAGS.split!r} of {config.data.dataset} holds no examples")
  if parallel.is_main_process():
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    quality.save_reference(out, sample_stats.features, sample_stats.bank)
    print(f"{sample_stats.features.count} images of {config.data.dataset} ({FLAGS.split}), "
          f"{FLAGS.feature_net} features: written to {out}")


def run() -> None:
  common.run(main)
