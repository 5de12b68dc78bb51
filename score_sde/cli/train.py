"""Train a score model: `score-sde-train --config configs/digits/vp_unet.py --workdir runs/x
[--config.training.n_iters=2000 ...]` (or `python scripts/train.py ...`). Resumes from the newest
checkpoint in --workdir. --time_limit M stops it after M minutes with a checkpoint of the last step.

The config, the data and the batch split over the devices are checked before --workdir is created.
Several hosts: run it on each with --distributed (TPU pods, Slurm, Open MPI) or with
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I; --workdir must be shared.
"""
from absl import flags
from ml_collections import config_flags

from score_sde import launch, train
from score_sde.cli import common

config_flags.DEFINE_config_file("config", None, "leaf config file, e.g. configs/toy/vp_mlp.py", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics.jsonl, TensorBoard events and samples")
flags.DEFINE_float("time_limit", None, "minutes of training after which the run saves a checkpoint and stops, as "
                   "if training.n_iters were reached (one process only); rerunning resumes it", lower_bound=0.0)
flags.DEFINE_bool("allow_config_change", False, "resume although training length, logging, snapshot or eval "
                  "settings differ from the saved config (train.RESUMABLE_CHANGES)")
launch.define_flags()
common.define_verbose_flag()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  launch.initialize(FLAGS)
  common.check_training_inputs(FLAGS.config)
  time_limit_s = None if FLAGS.time_limit is None else 60.0 * FLAGS.time_limit
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir, time_limit_s=time_limit_s,
                           allow_config_change=FLAGS.allow_config_change)


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
