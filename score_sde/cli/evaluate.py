"""Sample quality of a checkpoint: `python scripts/evaluate.py --workdir DIR --stats FILE.npz
[--method M] [--num_steps K] [--num_samples 50000] [--step S] [--nouse_ema]`.

Samples --num_samples images with the sampler of the run's config (or --method / --num_steps /
--sampler_option name=value overrides), extracts features on the fly, and writes FID (the Frechet
distance to --stats), Inception Score, KID and the mean NFE per sample to
<workdir>/eval/quality_<step>_<method>.json. --stats holds pytorch-fid's `mu`/`sigma` (its
published files work) and, when written by scripts/fid_stats.py, the `features` that KID needs.

Feature networks: --feature_net=inception (FID Inception-v3 of pytorch-fid; --inception_weights
pt_inception-2015-12-05-6726825d.pth) or fd_mnist (--fd_mnist_weights of
scripts/train_fd_classifier.py: the FD-MNIST distance and a 10-class classifier score).
Inception Score: --is_splits=1 (default) is TF-GAN's classifier_score_from_logits, which score_sde's
evaluation reports; --is_splits=10 --is_shuffle_seed=2020 is torch-fidelity's convention (which also
drops the fc bias from its logits; ours keep it, as TF-GAN's do).

Resuming: every finished batch's features, logits and NFE go to
<workdir>/eval/quality_<step>_<method>.partial/batch_<k>.npz; a killed run started again with the
same flags continues after the last finished batch (the samples of batch k depend only on (--seed,
k)), and the folder is removed once the JSON is written. Each batch is split over all devices of all
processes; process 0 writes the files.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import time

import jax
import numpy as np
from absl import flags

from score_sde import configs_util, console, evaluate, launch, models, parallel, train
from score_sde import sde as sde_lib
from score_sde.cli import common
from score_sde.metrics import features, quality

common.define_checkpoint_flags()
flags.DEFINE_string("stats", None, "reference statistics .npz (mu, sigma[, features]) of scripts/fid_stats.py")
flags.DEFINE_string("method", None, "sampling method (default: config.sampling.method)")
flags.DEFINE_integer("num_steps", None, "sampler steps (default: config.sampling.num_steps or the method's own)")
flags.DEFINE_multi_string("sampler_option", [], "name=value option of the sampling method (value parsed as "
                          "JSON when it parses, e.g. order=2, predictor=ancestral_sampling)")
flags.DEFINE_integer("num_samples", 50_000, "number of samples")
flags.DEFINE_integer("batch_size", None, "samples per batch (default: config.eval.batch_size)")
flags.DEFINE_integer("seed", 0, "PRNG seed of the samples")
flags.DEFINE_enum("feature_net", "inception", sorted(features.FEATURE_NETWORKS), "feature network")
flags.DEFINE_string("inception_weights", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
flags.DEFINE_string("fd_mnist_weights", None, "weights .npz of scripts/train_fd_classifier.py")
flags.DEFINE_integer("is_splits", 1, "Inception Score splits (1: TF-GAN / score_sde; 10: torch-fidelity)")
flags.DEFINE_integer("is_shuffle_seed", None, "shuffle before splitting with RandomState(seed) (torch-fidelity: 2020)")
flags.DEFINE_integer("kid_features", 10_000, "sample features kept for KID (100 subsets of up to 1000)")
launch.define_flags()
common.define_verbose_flag()
flags.mark_flags_as_required(["stats"])
FLAGS = flags.FLAGS


def parse_option(text: str) -> tuple[str, object]:
  """'name=value' -> (name, value), value parsed as JSON when it parses, else the string."""
  name, sep, value = text.partition("=")
  if not sep or not name:
    raise ValueError(f"--sampler_option={text!r} is not name=value")
  try:
    return name, json.loads(value)
  except json.JSONDecodeError:
    return name, value


def finished_batches(partial: pathlib.Path, settings: dict) -> int:
  """How many consecutive batches a previous run with the same settings finished (0: a fresh start)."""
  meta = partial / "settings.json"
  if not meta.exists():
    return 0
  if json.loads(meta.read_text()) != json.loads(json.dumps(settings)):
    raise ValueError(f"{partial} belongs to an evaluation with other settings; remove it or rerun with "
                     f"those flags ({meta})")
  done = 0
  while (partial / f"batch_{done}.npz").exists():
    done += 1
  return done


def write_batch(partial: pathlib.Path, k: int, feats: np.ndarray, logits: np.ndarray, nfe: float) -> None:
  """Writes batch k atomically (a file that exists is complete)."""
  tmp = partial / f"batch_{k}.tmp.npz"
  np.savez(tmp, features=feats, logits=logits, nfe=nfe)
  tmp.replace(partial / f"batch_{k}.npz")


def accumulate(partial: pathlib.Path, num_batches: int, num_samples: int, **sample_stats_options
               ) -> tuple[quality.SampleStats, float]:
  """Statistics of all finished batches (read back one at a time) and the mean NFE per sample.

  `sample_stats_options`: is_splits, is_shuffle_seed, kid_features of `quality.SampleStats.empty`.
  """
  sample_stats, nfe = None, []
  for k in range(num_batches):
    with np.load(partial / f"batch_{k}.npz") as batch:
      feats, logits = batch["features"], batch["logits"]
      nfe.append(float(batch["nfe"]))
    if sample_stats is None:
      sample_stats = quality.SampleStats.empty(num_samples, feats.shape[1], logits.shape[1],
                                               **sample_stats_options)
    sample_stats = sample_stats.update(feats, logits)
  return sample_stats, float(np.mean(nfe))


def main(argv) -> None:
  del argv
  launch.initialize(FLAGS)
  start = time.time()
  reference = quality.load_reference(FLAGS.stats)
  feature_net = features.get_feature_net(FLAGS.feature_net, {"inception": FLAGS.inception_weights,
                                                           "fd_mnist": FLAGS.fd_mnist_weights}[FLAGS.feature_net])
  config, state, step = evaluate.restore_run(common.existing_workdir(FLAGS.workdir), FLAGS.step)
  params = train.evaluation_params(state, FLAGS.use_ema)
  method, options = configs_util.sampler_options(config, method=FLAGS.method, num_steps=FLAGS.num_steps,
                                                 **dict(parse_option(o) for o in FLAGS.sampler_option))
  mesh = parallel.get_mesh()
  batch_size = min(FLAGS.batch_size or config.eval.batch_size, -(-FLAGS.num_samples // mesh.size) * mesh.size)
  if batch_size % mesh.size:
    raise ValueError(f"--batch_size={batch_size} is not divisible by the {mesh.size} devices of all processes")
  num_batches = -(-FLAGS.num_samples // batch_size)
  settings = {"step": int(step), "ema": FLAGS.use_ema, "method": method, "options": options,
              "num_samples": FLAGS.num_samples, "batch_size": batch_size, "seed": FLAGS.seed,
              "feature_net": FLAGS.feature_net}
  out = pathlib.Path(FLAGS.workdir) / "eval" / f"quality_{step}_{method}"
  partial = out.with_suffix(".partial")
  done = finished_batches(partial, settings)
  if parallel.is_main_process():
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "settings.json").write_text(json.dumps(settings))
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  batch_fn = evaluate.get_sample_feature_fn(config, sde, model, method, options, feature_net.apply, batch_size, mesh)
  rng, params, feature_params = parallel.replicate((jax.random.key(FLAGS.seed), params, feature_net.params), mesh)
  progress = console.progress_bar(range(done, num_batches), initial=done, total=num_batches, unit="batch",
                                  desc=f"{method} samples -> {FLAGS.feature_net} features",
                                  disable=not parallel.is_main_process())
  for k in progress:
    feats, logits, nfe = parallel.fetch(batch_fn(jax.random.fold_in(rng, k), params, feature_params))
    count = min(batch_size, FLAGS.num_samples - k * batch_size)
    if parallel.is_main_process():
      write_batch(partial, k, feats[:count], logits[:count], float(np.mean(nfe)))
  if not parallel.is_main_process():
    return
  sample_stats, nfe = accumulate(partial, num_batches, FLAGS.num_samples, is_splits=FLAGS.is_splits,
                                 is_shuffle_seed=FLAGS.is_shuffle_seed, kid_features=FLAGS.kid_features)
  result = {"workdir": str(FLAGS.workdir), **settings, "stats": str(FLAGS.stats),
            **quality.quality(sample_stats, reference), "nfe": nfe, "seconds_this_run": time.time() - start}
  out.with_suffix(".json").write_text(json.dumps(result, indent=2))
  shutil.rmtree(partial)
  print(json.dumps(result, indent=2))
  print(f"written to {out}.json")


def run() -> None:
  common.run(main)
