"""The training loop: data-parallel jitted steps, EMA, logs, evaluation, snapshots, resumption.

The batch is split over all devices of all processes (mesh axes ('data', 'fsdp')) and the state is
replicated, or with training.fsdp_size > 1 its large leaves are split over 'fsdp' (`jax.jit` +
`NamedSharding`, `score_sde.parallel`), so one device and many compute the same global-batch loss.
Each process reads its own rows of every batch; process 0 alone writes metrics, TensorBoard events
and images, while all processes take part in orbax checkpoint saves. The PRNG key of step k is
fold_in(key(seed), k) and batch k depends only on (seed, k): a run resumed from any checkpoint
continues bit for bit as if it had never stopped. Checkpoints hold global arrays, restored into the
current layout, so a run may also resume with another training.fsdp_size.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorboardX
import tqdm
from jax.sharding import Mesh

from score_sde import checkpoint, datasets, evaluate, losses, models, parallel, vdm
from score_sde import sde as sde_lib
from score_sde.train_state import TrainState

Array = jax.Array


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a global numpy batch on a single-process mesh, split along its leading axis."""
  return jax.device_put(batch, parallel.batch_sharding(mesh))


@dataclasses.dataclass(frozen=True)
class Keys:
  """Independent key streams derived from config.seed; step k uses fold_in(stream, k)."""

  init: Array
  train: Array
  eval: Array
  sample: Array
  likelihood: Array

  @classmethod
  def from_seed(cls, seed: int) -> "Keys":
    return cls(*jax.random.split(jax.random.key(seed), 5))


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a run builds from its config."""

  sde: sde_lib.SDE
  model: nn.Module
  optimizer: optax.GradientTransformation
  mesh: Mesh
  keys: Keys


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Setup:
  """SDE, network, optimizer, mesh over `devices` (default: all, of all processes) and key streams.

  Raises ValueError when training.fsdp_size does not divide the devices or the batch does not split over them.
  """
  mesh = parallel.get_mesh(devices, config.training.fsdp_size)
  if config.training.batch_size % mesh.size:
    raise ValueError(f"training.batch_size={config.training.batch_size} is not divisible by the {mesh.size} devices")
  return Setup(sde=sde_lib.get_sde(config), model=models.get_model(config), optimizer=losses.get_optimizer(config),
               mesh=mesh, keys=Keys.from_seed(config.seed))


def _create_state_fn(config: ml_collections.ConfigDict, setup: Setup):
  """key -> a fresh TrainState (freshly initialised params, their EMA, the optimizer state)."""
  def create(key: Array) -> TrainState:
    return TrainState.create(models.init_params(key, setup.model, datasets.data_shape(config)), setup.optimizer)
  return create


def abstract_state(config: ml_collections.ConfigDict, setup: Setup) -> TrainState:
  """Shape, dtype and sharding (`parallel.fsdp_sharding`) of every leaf of the train state, computing nothing.

  A checkpoint restored into it takes the layout of this run, whatever layout wrote it.
  """
  shapes = jax.eval_shape(_create_state_fn(config, setup), setup.keys.init)
  return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                      shapes, parallel.fsdp_sharding(shapes, setup.mesh))


def state_sharding(config: ml_collections.ConfigDict, setup: Setup) -> TrainState:
  """The NamedSharding of every leaf of the train state: replicated, or split over 'fsdp'."""
  return jax.tree.map(lambda leaf: leaf.sharding, abstract_state(config, setup))


def init_state(config: ml_collections.ConfigDict, setup: Setup) -> TrainState:
  """A fresh state laid out over the mesh by `state_sharding`: replicated, or split over 'fsdp'.

  Each device computes only its own shards, so no device ever holds a whole large parameter.
  """
  return jax.jit(_create_state_fn(config, setup), out_shardings=state_sharding(config, setup))(setup.keys.init)


# training.objective -> (config, score-matching options) -> get_step_fn(sde, model, optimizer, *, train).
OBJECTIVES = {
    "dsm": lambda config, common: functools.partial(losses.get_step_fn, **common),
    "vdm": lambda config, common: functools.partial(vdm.get_step_fn, **vdm.options_from_config(config)),
}


def get_step_fns(config: ml_collections.ConfigDict, setup: Setup):
  """Jitted, sharded (train_step, eval_step): (state, batch, rng) -> (state, metrics).

  The state keeps the layout of `state_sharding` across steps; XLA gathers split parameters where
  they are used and reduces their gradients onto the shards.
  """
  t = config.training
  layout, replicated = state_sharding(config, setup), parallel.replicated(setup.mesh)
  common = dict(reduce_mean=t.reduce_mean, continuous=t.continuous, likelihood_weighting=t.likelihood_weighting,
                importance_weighting=t.importance_weighting, eps=t.eps, ema_rate=config.model.ema_rate,
                cond_drop_prob=t.cond_drop_prob)
  shardings = dict(in_shardings=(layout, parallel.batch_sharding(setup.mesh), replicated),
                   out_shardings=(layout, replicated))
  if t.objective not in OBJECTIVES:
    raise ValueError(f"unknown training.objective {t.objective!r}; choose from {sorted(OBJECTIVES)}")
  if t.sde.lower() == "vdm" and t.objective != "vdm":
    raise ValueError("training.sde='vdm' learns its noise schedule through the VDM bound: set training.objective='vdm'")
  get_step_fn = OBJECTIVES[t.objective](config, common)
  train_step = get_step_fn(setup.sde, setup.model, setup.optimizer, train=True)
  eval_step = get_step_fn(setup.sde, setup.model, setup.optimizer, train=False)
  return jax.jit(train_step, donate_argnums=0, **shardings), jax.jit(eval_step, **shardings)


class MetricWriter:
  """Appends records to workdir/metrics.jsonl and TensorBoard scalars/images to workdir/tensorboard.

  Only on the main process; elsewhere every method does nothing.
  """

  def __init__(self, workdir: pathlib.Path):
    self.active = parallel.is_main_process()
    if self.active:
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # pylint: disable=consider-using-with
      self._tensorboard = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, **scalars: float) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)

  def image(self, step: int, name: str, path: pathlib.Path) -> None:
    if not self.active:
      return
    self._tensorboard.add_image(name, np.asarray(_read_png(path)), step, dataformats="HWC")

  def close(self) -> None:
    if not self.active:
      return
    self._jsonl.close()
    self._tensorboard.close()


def _read_png(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.asarray(Image.open(path).convert("RGB"))


def _scaled_batches(config: ml_collections.ConfigDict, split: str, start_step: int,
                    rows: slice = slice(None)) -> Iterator[dict]:
  """Rows `rows` of the split's batches, images mapped into model space by the data scaler."""
  scaler = datasets.get_data_scaler(config)
  for batch in datasets.get_dataset(config, split, start_step=start_step, rows=rows):
    yield {**batch, "image": scaler(batch["image"])}


def _check_finite(losses_since_sync: list[tuple[int, Array]], workdir: pathlib.Path,
                  ckpt: checkpoint.Checkpointer) -> list[float]:
  """Host values of the pending losses; NonFiniteLossError at the first NaN/inf."""
  values = [float(loss) for _, loss in losses_since_sync]
  for (step, _), value in zip(losses_since_sync, values):
    if not math.isfinite(value):
      raise NonFiniteLossError(
          f"training stopped: the loss is {value} at step {step}; the last good checkpoint (step "
          f"{ckpt.latest_step()}) is kept in {workdir}. Lower optim.lr or check the data and config.")
  return values


def evaluation_params(config: ml_collections.ConfigDict, state: TrainState):
  """The parameters that sampling and bits/dim use: EMA unless config.eval.use_ema is False."""
  return state.ema_params if config.eval.use_ema else state.params


def save_samples(config: ml_collections.ConfigDict, samples: np.ndarray, path: pathlib.Path) -> None:
  """A PNG grid of image samples, or a scatter plot of 2-D samples over held-out data."""
  if datasets.is_toy(config):
    reference = datasets.get_source(config, "test").images
    evaluate.save_scatter(path, samples, reference)
  else:
    evaluate.save_image_grid(path, samples)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       progress: bool = True, devices: Sequence[jax.Device] | None = None,
                       time_limit_s: float | None = None) -> TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) to training.n_iters steps.

  With `time_limit_s`, training also stops (as if n_iters were reached there) after that many
  seconds of wall time; calling again resumes it.

  Writes metrics.jsonl, TensorBoard events, checkpoints and samples/step_<k>.png under `workdir`,
  and returns the final state. Raises NonFiniteLossError (keeping the checkpoints) on a NaN loss.
  """
  workdir = pathlib.Path(workdir)
  (workdir / "samples").mkdir(parents=True, exist_ok=True)
  t = config.training
  setup = build(config, devices)
  ckpt = checkpoint.Checkpointer(workdir)
  restored = ckpt.restore_latest(abstract_state(config, setup))
  state = init_state(config, setup) if restored is None else restored[0]
  start = int(state.step)
  train_step, eval_step = get_step_fns(config, setup)
  sample_fn = _sharded_sample_fn(config, setup) if t.snapshot_sampling else None
  rows = parallel.process_rows(t.batch_size, setup.mesh)  # this process's share of every batch
  train_batches = _scaled_batches(config, "train", start, rows)
  eval_batches = _scaled_batches(config, "test", (start // t.eval_freq) * t.eval_batches, rows)
  meta = {"seed": config.seed, "config": json.loads(config.to_json_best_effort())}
  writer = MetricWriter(workdir)
  bar = tqdm.tqdm(total=t.n_iters, initial=start, disable=not (progress and writer.active), desc="train", unit="step",
                  dynamic_ncols=True)
  pending: list[tuple[int, Array]] = []
  grad_norm, window_start, window_steps = None, time.perf_counter(), 0
  deadline = time.perf_counter() + time_limit_s if time_limit_s is not None else math.inf
  try:
    for step in range(start + 1, t.n_iters + 1):
      batch = parallel.global_batch(next(train_batches), setup.mesh)
      state, metrics = train_step(state, batch, jax.random.fold_in(setup.keys.train, step - 1))
      pending.append((step, metrics["loss"]))
      grad_norm = metrics["grad_norm"]
      window_steps += 1
      bar.update(1)
      out_of_time = time.perf_counter() > deadline
      snapshot = step % t.snapshot_freq == 0 or step == t.n_iters or out_of_time
      preempt = step % t.snapshot_freq_for_preemption == 0
      if step % t.log_freq == 0 or snapshot or preempt:
        values = _check_finite(pending, workdir, ckpt)
        pending = []
        if step % t.log_freq == 0:
          elapsed = time.perf_counter() - window_start
          writer.write(step, loss=float(np.mean(values)), grad_norm=float(grad_norm),
                       steps_per_sec=window_steps / elapsed, images_per_sec=window_steps * t.batch_size / elapsed)
          bar.set_postfix(loss=f"{np.mean(values):.4g}", images_per_sec=f"{window_steps * t.batch_size / elapsed:.0f}")
          window_start, window_steps = time.perf_counter(), 0
      if step % t.eval_freq == 0:
        eval_losses = [eval_step(state, parallel.global_batch(next(eval_batches), setup.mesh),
                                 jax.random.fold_in(jax.random.fold_in(setup.keys.eval, step), j))[1]["loss"]
                       for j in range(t.eval_batches)]
        writer.write(step, eval_loss=float(np.mean(jax.device_get(eval_losses))))
      if preempt:
        ckpt.save(step, state, {**meta, "step": step}, snapshot=False)
      if snapshot:
        ckpt.save(step, state, {**meta, "step": step}, snapshot=True)
        if sample_fn is not None:
          _snapshot_samples(config, sample_fn, state, setup.keys.sample, step, workdir, writer)
      if out_of_time:
        break
    if config.eval.enable_bpd and not datasets.is_toy(config):
      _final_bits_per_dim(config, setup, state, writer, progress and writer.active)
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  return state


def _sharded_sample_fn(config: ml_collections.ConfigDict, setup: Setup):
  """The snapshot sampler, its samples split over the mesh (replicated if their number does not divide)."""
  num_samples = config.training.snapshot_num_samples
  sample_fn = evaluate.get_sample_fn(config, setup.sde, setup.model, num_samples)
  split = num_samples % setup.mesh.size == 0
  samples_sharding = parallel.batch_sharding(setup.mesh) if split else parallel.replicated(setup.mesh)
  return jax.jit(sample_fn, out_shardings=(samples_sharding, parallel.replicated(setup.mesh)))


def _snapshot_samples(config, sample_fn, state: TrainState, key: Array, step: int, workdir: pathlib.Path,
                      writer: MetricWriter) -> None:
  samples, nfe = sample_fn(jax.random.fold_in(key, step), evaluation_params(config, state))
  samples = parallel.fetch(samples)
  path = workdir / "samples" / f"step_{step}.png"
  if writer.active:
    save_samples(config, samples, path)
  writer.image(step, "samples", path)
  scalars = {"sample_nfe": float(jnp.mean(nfe))}
  if datasets.is_toy(config):
    reference = datasets.get_source(config, "test").images
    scalars.update(evaluate.sample_metrics(jax.random.fold_in(jax.random.fold_in(key, step), 1), samples, reference))
  writer.write(step, **scalars)


def _final_bits_per_dim(config, setup: Setup, state: TrainState, writer: MetricWriter, progress: bool) -> None:
  """Bits/dim of the EMA model on eval.bpd_dataset, written to metrics.jsonl as `<split>_bpd`."""
  split = config.eval.bpd_dataset
  start = time.perf_counter()
  bpd, nfe = evaluate.bits_per_dim_over_split(setup.keys.likelihood, config, setup.sde,
                                               setup.model, evaluation_params(config, state), split,
                                               config.eval.bpd_num_examples)
  seconds = time.perf_counter() - start
  sem = float(np.std(bpd) / np.sqrt(len(bpd)))
  writer.write(int(state.step), **{f"{split}_bpd": float(np.mean(bpd)), f"{split}_bpd_sem": sem,
                                   f"{split}_bpd_examples": len(bpd), f"{split}_bpd_nfe": nfe,
                                   f"{split}_bpd_seconds": seconds})
  if progress:
    print(f"{split} bits/dim: {np.mean(bpd):.4f} +- {sem:.4f} over {len(bpd)} examples "
          f"({nfe} score evaluations, {seconds:.0f} s)")
