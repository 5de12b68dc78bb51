"""Train a time-dependent classifier p_t(y | x_t) for classifier guidance (THEORY.md §6):
`score-sde-train-classifier --config configs/digits/vp_unet.py --workdir runs/clf
[--steps 2000] [--config.model.num_classes=10 --config.model.nf=32 ...]` (or `python scripts/train_classifier.py`).

The SDE, data and optimizer come from the config; the network is `noise_classifier` built from
config.model (nf, ch_mult, num_res_blocks, dropout, num_classes: 10 unless set). Noisy inputs
x_t ~ p_0t(. | x) with t ~ U[training.eps, T] are classified with the cross-entropy loss. The final
state is saved as a snapshot in --workdir with the config in its meta, for `scripts/sample.py
--classifier_workdir`. The data are checked before --workdir is written.
"""
import json

import jax
import jax.numpy as jnp
import optax
from absl import flags
from ml_collections import config_flags

from score_sde import checkpoint, console, controllable, datasets, losses, models
from score_sde import sde as sde_lib
from score_sde.cli import common
from score_sde.train_state import TrainState

config_flags.DEFINE_config_file("config", None, "leaf config file (data, SDE, optimizer)", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for the classifier checkpoint")
flags.DEFINE_integer("steps", 2000, "training steps", lower_bound=1)
common.define_verbose_flag()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def classifier_config(config):
  """The config with model.name = noise_classifier and 10 classes unless model.num_classes is set."""
  config = config.copy_and_resolve_references()
  config.model.name = "noise_classifier"
  config.model.num_classes = config.model.num_classes or 10
  return config


def get_train_step(config, sde: sde_lib.SDE, classifier, optimizer):
  """A jitted (state, batch, rng) -> (state, loss, accuracy on the noisy batch) step."""

  def loss_fn(params, rng, batch):
    dropout_rng, loss_rng = jax.random.split(rng)
    logits_fn = lambda x, t: classifier.apply({"params": params}, x, t, train=True, rngs={"dropout": dropout_rng})
    return jnp.mean(controllable.noisy_classifier_loss(loss_rng, logits_fn, sde, batch["image"], batch["label"],
                                                       config.training.eps))

  @jax.jit
  def step(state: TrainState, batch: dict, rng):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, rng, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - config.model.ema_rate)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state), loss

  return step


def train_classifier(config, workdir: str, steps: int) -> TrainState:
  config = classifier_config(config)
  if datasets.is_toy(config):
    raise ValueError(f"a noise classifier needs labelled images; config.data.dataset={config.data.dataset!r} "
                     "is a 2-D toy")
  sde, classifier, optimizer = sde_lib.get_sde(config), models.get_model(config), losses.get_optimizer(config)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  shape = (1,) + datasets.data_shape(config)
  params = classifier.init(init_rng, jnp.zeros(shape), jnp.ones((1,)))["params"]
  state = TrainState.create(params, optimizer)
  step_fn = get_train_step(config, sde, classifier, optimizer)
  scaler = datasets.get_data_scaler(config)
  batches = datasets.get_dataset(config, "train")
  with console.progress_bar(range(steps), desc="classifier", unit="step") as bar:
    for k in bar:
      batch = next(batches)
      batch = {"image": scaler(jnp.asarray(batch["image"])), "label": jnp.asarray(batch["label"])}
      state, loss = step_fn(state, batch, jax.random.fold_in(train_rng, k))
      if k % 50 == 0:
        bar.set_postfix(loss=f"{float(loss):.3f}")
  ckpt = checkpoint.Checkpointer(workdir)
  ckpt.save(steps, state, {"config": json.loads(config.to_json_best_effort()), "step": steps}, snapshot=True)
  ckpt.close()
  return state


def main(argv):
  del argv
  train_classifier(FLAGS.config, FLAGS.workdir, FLAGS.steps)


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
