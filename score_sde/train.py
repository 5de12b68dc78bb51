"""The training loop: data-parallel jitted steps, EMA, logs, evaluation, snapshots, resumption.

The batch is split over all devices of all processes (mesh axes ('data', 'fsdp')) and the state is
replicated, or with training.fsdp_size > 1 its large leaves are split over 'fsdp' (`jax.jit` +
`NamedSharding`, `score_sde.parallel`), so one device and many compute the same global-batch loss.
Each process reads its own rows of every batch; process 0 alone writes metrics, TensorBoard events
and images, while all processes take part in orbax checkpoint saves. The PRNG key of step k is
fold_in(key(seed), k) and batch k depends only on (seed, k): a run resumed from any checkpoint
continues bit for bit as if it had never stopped. Checkpoints hold global arrays, restored into the
current layout, so a run may also resume with another training.fsdp_size.

A resumed run restores the newest checkpoint that restores (warning about damaged newer ones),
refuses a config that differs from the saved one except in `RESUMABLE_CHANGES` (and those only
when allowed), and cuts metrics.jsonl back to the restored step, so no step is recorded twice.
A non-finite loss, gradient norm or parameter stops the run before any later checkpoint is written.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
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
from jax.sharding import Mesh

from score_sde import checkpoint, configs_util, console, datasets, evaluate, losses, models, parallel, vdm
from score_sde import sde as sde_lib
from score_sde.train_state import TrainState

Array = jax.Array


class NonFiniteLossError(FloatingPointError):
  """The loss, the gradient norm or the parameters became NaN or infinite; the last good checkpoint is kept."""


class ConfigChangedError(ValueError):
  """A run resumed with a config that differs from the one its checkpoint was saved with."""


# Fields a resumed run may change when allowed: how long it trains and how it logs, saves, samples
# and evaluates, never what it learns (model, SDE, loss, data, optimizer, seed, batch size).
# A trailing dot names a whole section.
RESUMABLE_CHANGES = ("training.n_iters", "training.snapshot_freq", "training.snapshot_freq_for_preemption",
                     "training.log_freq", "training.eval_freq", "training.eval_batches", "training.snapshot_sampling",
                     "training.snapshot_num_samples", "training.fsdp_size", "data.prefetch", "sampling.", "eval.")


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
  options = compiler_options(setup.mesh)
  return (jax.jit(train_step, donate_argnums=0, compiler_options=options, **shardings),
          jax.jit(eval_step, compiler_options=options, **shardings))


# XLA:CPU hands convolutions to YNNPACK by default; its own (Eigen) convolutions make the training step of
# DDPM++ about 5% faster on CPU (`benchmarks/layer_speed.py --step`). The list is XLA's default YNNPACK
# fusions less convolutions. No effect on other platforms.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(mesh: Mesh) -> dict[str, str]:
  """XLA options of the training step's compilation on the platform of `mesh`."""
  return CPU_COMPILER_OPTIONS if mesh.devices.flat[0].platform == "cpu" else {}


class MetricWriter:
  """Appends records to workdir/metrics.jsonl and TensorBoard scalars/images to workdir/tensorboard.

  A run resumed at `resume_step` first drops the records of later steps (written before it was
  stopped, and about to be written again), and a record of `resume_step` written again replaces
  the old one, so each (step, name) appears once. Only on the main process; elsewhere every method
  does nothing.
  """

  def __init__(self, workdir: pathlib.Path, resume_step: int = 0):
    self.active = parallel.is_main_process()
    if self.active:
      self._path, self._resume_step = workdir / "metrics.jsonl", resume_step
      self._names_at_resume = {name for record in _rewrite_records(self._path, lambda r: r["step"] <= resume_step)
                               if record["step"] == resume_step for name in record}
      self._jsonl = open(self._path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
      self._tensorboard = tensorboardX.SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, **scalars: float) -> None:
    if not self.active:
      return
    if step == self._resume_step and self._names_at_resume & scalars.keys():
      self._jsonl.close()
      _rewrite_records(self._path, lambda r: not (r["step"] == step and r.keys() & scalars.keys()))
      self._names_at_resume -= scalars.keys()
      self._jsonl = open(self._path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
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


def _rewrite_records(path: pathlib.Path, keep) -> list[dict]:
  """Keeps the records of a metrics.jsonl for which `keep(record)` holds (and drops a torn last line).

  The file is replaced atomically and only if something is dropped. Returns the kept records.
  """
  if not path.exists():
    return []
  lines = path.read_text(encoding="utf-8").splitlines()
  records = []
  for line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut by a kill
      continue
  kept = [record for record in records if keep(record)]
  if len(kept) < len(lines):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(record) + "\n" for record in kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return kept


def _read_png(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.asarray(Image.open(path).convert("RGB"))


def _scaled_batches(config: ml_collections.ConfigDict, split: str, start_step: int,
                    rows: slice = slice(None)) -> Iterator[dict]:
  """Rows `rows` of the split's batches, images mapped into model space by the data scaler."""
  scaler = datasets.get_data_scaler(config)
  for batch in datasets.get_dataset(config, split, start_step=start_step, rows=rows):
    yield {**batch, "image": scaler(batch["image"])}


def _check_finite(metrics_since_sync: list[tuple[int, dict]], workdir: pathlib.Path,
                  ckpt: checkpoint.Checkpointer) -> list[float]:
  """Host values of the pending losses; NonFiniteLossError at the first NaN/inf loss or gradient norm."""
  values = [(step, float(metrics["loss"]), float(metrics["grad_norm"])) for step, metrics in metrics_since_sync]
  for step, loss, grad_norm in values:
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      raise _diverged(f"the loss is {loss} and the gradient norm {grad_norm} at step {step}", workdir, ckpt)
  return [loss for _, loss, _ in values]


def _diverged(what: str, workdir: pathlib.Path, ckpt: checkpoint.Checkpointer) -> NonFiniteLossError:
  last = ckpt.latest_step()
  kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written"
  return NonFiniteLossError(f"training stopped: {what}; {kept} in {workdir}. Lower optim.lr or check the data "
                            "and config.")


@jax.jit
def _all_finite(tree) -> Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def config_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """Dotted field -> (saved value, value in `config`) of every field of `config` that differs from `saved`.

  Fields of `saved` that `config` lacks (removed since the save) are ignored.
  """
  def flat(tree: dict, prefix: str = "") -> dict:
    items = {}
    for name, value in tree.items():
      items.update(flat(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}": value})
    return items

  before = flat(json.loads(saved.to_json_best_effort()))
  after = flat(json.loads(config.to_json_best_effort()))
  return {name: (before.get(name), value) for name, value in after.items() if before.get(name) != value}


def check_resumable(meta: dict, config: ml_collections.ConfigDict, where: str, allow_config_change: bool) -> None:
  """Raises ConfigChangedError unless `config` may resume the checkpoint whose meta is `meta`.

  Fields outside `RESUMABLE_CHANGES` must equal the saved ones; those inside may differ only with
  `allow_config_change`.
  """
  changes = config_changes(checkpoint.saved_config(meta), config)
  listed = lambda names: ", ".join(f"{n} ({changes[n][0]!r} -> {changes[n][1]!r})" for n in names)  # noqa: E731
  fixed = [name for name in changes if not name.startswith(RESUMABLE_CHANGES)]
  if fixed:
    raise ConfigChangedError(f"cannot resume {where} with this config: it differs from the saved one in "
                             f"{listed(fixed)}; these change what the run learns: restore them or use a new workdir")
  if changes and not allow_config_change:
    raise ConfigChangedError(f"cannot resume {where} with this config: it differs from the saved one in "
                             f"{listed(changes)}; pass --allow_config_change to resume with the new values")


def evaluation_params(state: TrainState, use_ema: bool = True):
  """The parameters that sampling and bits/dim use: the EMA ones (scripts: unless --nouse_ema)."""
  return state.ema_params if use_ema else state.params


def save_samples(config: ml_collections.ConfigDict, samples: np.ndarray, path: pathlib.Path) -> None:
  """A PNG grid of image samples, or a scatter plot of 2-D samples over held-out data."""
  if datasets.is_toy(config):
    reference = datasets.get_source(config, "test").images
    evaluate.save_scatter(path, samples, reference)
  else:
    evaluate.save_image_grid(path, samples)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       progress: bool = True, devices: Sequence[jax.Device] | None = None,
                       time_limit_s: float | None = None, allow_config_change: bool = False) -> TrainState:
  """Trains `config` in `workdir` (resuming from its newest checkpoint that restores) to training.n_iters steps.

  With `time_limit_s`, training also stops (as if n_iters were reached there) after that many
  seconds of wall time; calling again resumes it. Resuming with a config that differs from the
  saved one raises ConfigChangedError, unless only `RESUMABLE_CHANGES` differ and
  `allow_config_change` is set.

  Writes metrics.jsonl, TensorBoard events, checkpoints and samples/step_<k>.png under `workdir`,
  and returns the final state. Raises NonFiniteLossError (keeping the checkpoints) when the loss,
  the gradient norm or the parameters stop being finite.
  """
  if time_limit_s is not None and jax.process_count() > 1:
    raise ValueError("a training time limit needs a single process: the hosts' clocks would stop them at "
                     "different steps")
  workdir = pathlib.Path(workdir)
  (workdir / "samples").mkdir(parents=True, exist_ok=True)
  t = config.training
  setup = build(config, devices)
  ckpt = checkpoint.Checkpointer(workdir)
  template = abstract_state(config, setup)

  def resumable_template(meta: dict) -> TrainState:
    check_resumable(meta, config, f"{workdir} at step {meta.get('step')}", allow_config_change)
    return template

  try:
    restored = ckpt.restore_newest(resumable_template)
  except BaseException:
    ckpt.close()
    raise
  state = init_state(config, setup) if restored is None else restored[0]
  start = int(state.step)
  train_step, eval_step = get_step_fns(config, setup)
  sample_fn = _sharded_sample_fn(config, setup) if t.snapshot_sampling else None
  rows = parallel.process_rows(t.batch_size, setup.mesh)  # this process's share of every batch
  train_batches = _scaled_batches(config, "train", start, rows)
  eval_batches = _scaled_batches(config, "test", (start // t.eval_freq) * t.eval_batches, rows)
  meta = {"seed": config.seed, "config": json.loads(config.to_json_best_effort())}
  writer = MetricWriter(workdir, resume_step=start)
  bar = console.progress_bar(total=t.n_iters, initial=start, disable=not (progress and writer.active), desc="train",
                             unit="step")
  pending: list[tuple[int, dict]] = []
  grad_norm, window_start, window_steps = None, time.perf_counter(), 0
  deadline = time.perf_counter() + time_limit_s if time_limit_s is not None else math.inf
  try:
    for step in range(start + 1, t.n_iters + 1):
      batch = parallel.global_batch(next(train_batches), setup.mesh)
      state, metrics = train_step(state, batch, jax.random.fold_in(setup.keys.train, step - 1))
      pending.append((step, metrics))
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
          bar.set_postfix(loss=f"{np.mean(values):.4g}", images_per_sec=f"{window_steps * t.batch_size / elapsed:.0f}",
                          refresh=False)  # shown at the bar's next redraw: a log file gets one a minute
          window_start, window_steps = time.perf_counter(), 0
      if step % t.eval_freq == 0:
        eval_losses = [eval_step(state, parallel.global_batch(next(eval_batches), setup.mesh),
                                 jax.random.fold_in(jax.random.fold_in(setup.keys.eval, step), j))[1]["loss"]
                       for j in range(t.eval_batches)]
        writer.write(step, eval_loss=float(np.mean(jax.device_get(eval_losses))))
      if (preempt or snapshot) and not _all_finite(state.params):
        raise _diverged(f"the parameters are not finite after step {step}", workdir, ckpt)
      if preempt:
        ckpt.save(step, state, {**meta, "step": step}, snapshot=False)
      if snapshot:
        ckpt.save(step, state, {**meta, "step": step}, snapshot=True)
        if sample_fn is not None:
          _snapshot_samples(config, sample_fn, state, setup.keys.sample, step, workdir, writer,
                            progress and writer.active)
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
                      writer: MetricWriter, progress: bool) -> None:
  method, _ = configs_util.sampler_options(config)
  with console.progress_bar(total=1, desc=f"snapshot samples ({method})", unit="batch", leave=False,
                            disable=not progress) as bar:
    samples, nfe = sample_fn(jax.random.fold_in(key, step), evaluation_params(state))
    samples = parallel.fetch(samples)
    bar.set_postfix(nfe=f"{float(jnp.mean(nfe)):.0f}")
    bar.update(1)
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
                                               setup.model, evaluation_params(state), split,
                                               config.eval.bpd_num_examples, progress=progress)
  seconds = time.perf_counter() - start
  sem = float(np.std(bpd) / np.sqrt(len(bpd)))
  writer.write(int(state.step), **{f"{split}_bpd": float(np.mean(bpd)), f"{split}_bpd_sem": sem,
                                   f"{split}_bpd_examples": len(bpd), f"{split}_bpd_nfe": nfe,
                                   f"{split}_bpd_seconds": seconds})
  if progress:
    print(f"{split} bits/dim: {np.mean(bpd):.4f} +- {sem:.4f} over {len(bpd)} examples "
          f"({nfe} score evaluations, {seconds:.0f} s)")
