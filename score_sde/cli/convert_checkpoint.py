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
from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from score_sde import checkpoint, convert, datasets, losses, models
from score_sde.cli import common
from score_sde.train_state import TrainState

config_flags.DEFINE_config_file("config", None, "leaf config the checkpoint was trained with", lock_config=True)
flags.DEFINE_string("source", None, "released checkpoint file (score_sde checkpoint_<N> or score_sde_pytorch .pth)")
flags.DEFINE_string("workdir", None, "new (or empty) directory to write the converted run to")
common.define_verbose_flag()
flags.mark_flags_as_required(["config", "source", "workdir"])
FLAGS = flags.FLAGS


def convert_to_workdir(source: str | pathlib.Path, config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> int:
  """Converts `source` for `config` and writes `workdir`; returns the step. Writes nothing on failure.

  The snapshot is first written to a sibling temporary directory, which is renamed to `workdir`
  only when complete.
  """
  workdir = pathlib.Path(workdir)
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise FileExistsError(f"--workdir {workdir} exists and is not empty; give a new directory")
  model = models.get_model(config)
  params, ema_params, step = convert.load_checkpoint(source, model, datasets.data_shape(config))
  state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, ema_params=ema_params,
                     opt_state=losses.get_optimizer(config).init(params))
  meta = {"seed": config.seed, "config": json.loads(config.to_json_best_effort()), "step": step,
          "converted_from": str(pathlib.Path(source).resolve())}
  workdir.parent.mkdir(parents=True, exist_ok=True)
  staging = workdir.parent / f".{workdir.name}.converting-{os.getpid()}"
  staging.mkdir()
  try:
    ckpt = checkpoint.Checkpointer(staging)
    try:
      ckpt.save(step, state, meta, snapshot=True)
    finally:
      ckpt.close()
    if workdir.exists():
      workdir.rmdir()
    staging.rename(workdir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return step


def main(argv) -> None:
  del argv
  step = convert_to_workdir(FLAGS.source, FLAGS.config, FLAGS.workdir)
  print(f"wrote {FLAGS.workdir}: step {step}, parameters and EMA parameters of {FLAGS.source}")


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
