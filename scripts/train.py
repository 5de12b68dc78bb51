"""Train a score model: `python scripts/train.py --config configs/digits/vp_unet.py --workdir runs/x
[--config.training.n_iters=2000 ...]`. Resumes from the latest checkpoint in --workdir.

Several hosts: run it on each with --distributed (TPU pods, Slurm, Open MPI) or with
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I; --workdir must be shared."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root: `configs`

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from score_sde import configs_util, launch, train  # noqa: E402

config_flags.DEFINE_config_file("config", None, "leaf config file, e.g. configs/toy/vp_mlp.py", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics.jsonl, TensorBoard events and samples")
flags.DEFINE_bool("allow_config_change", False, "resume although training length, logging, snapshot or eval "
                  "settings differ from the saved config (train.RESUMABLE_CHANGES)")
launch.define_flags()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  launch.initialize(FLAGS)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
  except (train.NonFiniteLossError, train.ConfigChangedError, train.checkpoint.CheckpointError) as e:
    sys.exit(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: configs_util.parse_config_flags(argv, FLAGS))
