"""Convert a released checkpoint into a workdir that sample.py, likelihood.py and train.py use as is.

  python scripts/convert_checkpoint.py --source checkpoint_26.pth \\
      --config configs/cifar10/ve_ncsnpp_continuous.py --workdir runs/ncsnpp_cifar10

--source is a score_sde checkpoint (flax msgpack `checkpoint_<N>`) or a score_sde_pytorch one
(`.pth`, read without PyTorch and without running pickled code), told apart by content. The
workdir gets one snapshot at the checkpoint's step: the converted parameters, their EMA, a fresh
optimizer state for this config, and the config (with any --config.* overrides). Released DDPM
checkpoints need `--config.model.name=ddpm_score_sde` (score_sde's layout of DDPM).
Nothing is written unless the whole conversion succeeds; an existing non-empty --workdir is refused.
"""
from absl import flags
from ml_collections import config_flags

from score_sde import convert
from score_sde.cli import common

config_flags.DEFINE_config_file("config", None, "leaf config the checkpoint was trained with", lock_config=True)
flags.DEFINE_string("source", None, "released checkpoint file (score_sde checkpoint_<N> or score_sde_pytorch .pth)")
flags.DEFINE_string("workdir", None, "new (or empty) directory to write the converted run to")
common.define_verbose_flag()
flags.mark_flags_as_required(["config", "source", "workdir"])
FLAGS = flags.FLAGS


def main(argv) -> None:
  del argv
  step = convert.convert_to_workdir(FLAGS.source, FLAGS.config, FLAGS.workdir)
  print(f"wrote {FLAGS.workdir}: step {step}, parameters and EMA parameters of {FLAGS.source}")


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
