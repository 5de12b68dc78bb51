"""Fully-sharded parameters (training.fsdp_size): the layout rule, equality with replicated training,
checkpoints that cross fsdp sizes and device counts, bad sizes.

Run alone, this file forces two CPU devices; `make test` already does.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")  # before JAX starts its backend

import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from typing import Callable  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from score_sde import checkpoint, configs_util, evaluate, parallel, train  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
HIDDEN = 128  # the MLP's hidden kernels (128 x 128 = MIN_SHARDED_SIZE elements) are split; its biases are not
STEPS = 6
two_devices = pytest.mark.skipif(jax.device_count() < 2,
                                 reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=2 (set by `make test`)")


def _config(fsdp_size: int, n_iters: int = STEPS) -> ml_collections.ConfigDict:
  """A small MLP on the oracle mixture, logging every step's loss; checkpoints only at n_iters."""
  config = configs_util.load_config(ROOT / "configs/toy/vp_mlp.py", [
      "--config.data.dataset=mixture", f"--config.model.nf={HIDDEN}", "--config.model.num_res_blocks=1",
      "--config.training.batch_size=64", "--config.training.snapshot_sampling=False",
      "--config.training.log_freq=1", "--config.training.eval_freq=1000", "--config.training.snapshot_freq=1000",
      "--config.training.snapshot_freq_for_preemption=1000", "--config.optim.warmup=2",
      "--config.model.ema_rate=0.9"])
  config.training.update(fsdp_size=fsdp_size, n_iters=n_iters)
  return config


@dataclasses.dataclass(frozen=True)
class Trainer:
  """One compiled train step on two devices for a given fsdp_size, driven like train_and_evaluate."""

  config: ml_collections.ConfigDict
  setup: train.Setup
  train_step: Callable

  @classmethod
  def create(cls, fsdp_size: int) -> "Trainer":
    config = _config(fsdp_size)
    setup = train.build(config, jax.devices()[:2])
    return cls(config, setup, train.get_step_fns(config, setup)[0])

  def run(self, state: train.TrainState, start: int, stop: int) -> tuple[train.TrainState, list[float]]:
    """Steps start + 1 .. stop from `state` (which is donated), with the batches and keys of those steps."""
    batches = train._scaled_batches(self.config, "train", start)  # pylint: disable=protected-access
    losses = []
    for step in range(start + 1, stop + 1):
      state, metrics = self.train_step(state, train.shard_batch(next(batches), self.setup.mesh),
                                       jax.random.fold_in(self.setup.keys.train, step - 1))
      losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def trainers() -> dict[int, Trainer]:
  return {fsdp_size: Trainer.create(fsdp_size) for fsdp_size in (1, 2)}


@dataclasses.dataclass(frozen=True)
class Run:
  """STEPS steps from a fresh state: the final state, every step's loss, and a checkpoint of step STEPS // 2."""

  state: train.TrainState
  losses: list[float]
  halfway: pathlib.Path


@pytest.fixture(scope="module")
def uninterrupted(trainers, tmp_path_factory) -> dict[int, Run]:
  runs = {}
  for fsdp_size, trainer in trainers.items():
    halfway = tmp_path_factory.mktemp(f"fsdp{fsdp_size}")
    state, first = trainer.run(train.init_state(trainer.config, trainer.setup), 0, STEPS // 2)
    ckpt = checkpoint.Checkpointer(halfway)
    try:
      ckpt.save(STEPS // 2, state, {"step": STEPS // 2}, snapshot=False)
    finally:
      ckpt.close()
    state, second = trainer.run(state, STEPS // 2, STEPS)
    runs[fsdp_size] = Run(state, first + second, halfway)
  return runs


def _assert_states_close(a, b):
  leaves_a, leaves_b = jax.tree.leaves(parallel.fetch(a)), jax.tree.leaves(parallel.fetch(b))
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def _specs(state) -> list[P]:
  return [leaf.sharding.spec for leaf in jax.tree.leaves(state)]


def test_fsdp_spec_splits_the_largest_divisible_axis_of_large_leaves():
  assert parallel.fsdp_spec((256, 128), 2) == P("fsdp")
  assert parallel.fsdp_spec((3, 3, 64, 64), 4) == P(None, None, None, "fsdp")  # ties: the output features
  assert parallel.fsdp_spec((3, 3, 96, 64), 4) == P(None, None, "fsdp")
  assert parallel.fsdp_spec((3, 3, 96, 64), 64) == P(None, None, None, "fsdp")  # 96 is not divisible by 64
  assert parallel.fsdp_spec((128, 129), 2) == P("fsdp")
  assert parallel.fsdp_spec((127, 129), 2) == P()  # no divisible axis
  assert parallel.fsdp_spec((128, 128), 2, min_size=2**15) == P()  # small
  assert parallel.fsdp_spec((512,), 2) == P() and parallel.fsdp_spec((), 2) == P()  # biases, counts
  assert parallel.fsdp_spec((256, 128), 1) == P()


@two_devices
def test_fsdp_training_equals_replicated_training_and_splits_the_state(trainers, uninterrupted):
  """Same losses and state as replicated training; params, EMA and Adam moments of the big kernels halved."""
  (replicated, replicated_losses), (fsdp, fsdp_losses) = [(r.state, r.losses) for r in uninterrupted.values()]
  assert trainers[2].setup.mesh.shape == {"data": 1, "fsdp": 2} and trainers[1].setup.mesh.shape == {"data": 2,
                                                                                                      "fsdp": 1}
  np.testing.assert_allclose(fsdp_losses, replicated_losses, rtol=1e-5)
  _assert_states_close(fsdp, replicated)
  assert all(leaf.is_fully_replicated for leaf in jax.tree.leaves(replicated))

  adam = fsdp.opt_state[-1][0]  # chain(clip, adam): ScaleByAdamState(count, mu, nu)
  big, small = [], []
  for tree in (fsdp.params, fsdp.ema_params, adam.mu, adam.nu):
    for leaf in jax.tree.leaves(tree):
      (big if leaf.shape == (HIDDEN, HIDDEN) else small).append(leaf)
  assert len(big) == 4 * 4  # 2 time-embedding and 2 residual-block kernels, in each of the 4 trees
  for leaf in big:
    assert leaf.sharding.spec == P(None, "fsdp")
    assert [shard.data.shape for shard in leaf.addressable_shards] == [(HIDDEN, HIDDEN // 2)] * 2
  assert small and all(leaf.is_fully_replicated for leaf in small)
  assert fsdp.step.is_fully_replicated and adam.count.is_fully_replicated


@two_devices
@pytest.mark.parametrize("saved_with, resumed_with", [(2, 1), (1, 2)])
def test_checkpoint_resumes_under_another_fsdp_size_like_an_uninterrupted_run(saved_with, resumed_with, trainers,
                                                                              uninterrupted):
  """The halfway checkpoint of one layout, restored into the other and trained on, ends as that layout's run."""
  trainer, expected = trainers[resumed_with], uninterrupted[resumed_with]
  ckpt = checkpoint.Checkpointer(uninterrupted[saved_with].halfway)
  try:
    restored, meta = ckpt.restore_latest(train.abstract_state(trainer.config, trainer.setup))
  finally:
    ckpt.close()
  assert meta["step"] == STEPS // 2 and int(restored.step) == STEPS // 2
  layout = [sharding.spec for sharding in jax.tree.leaves(train.state_sharding(trainer.config, trainer.setup))]
  assert _specs(restored) == layout != _specs(uninterrupted[saved_with].state)
  resumed, losses = trainer.run(restored, STEPS // 2, STEPS)
  np.testing.assert_allclose(losses, expected.losses[STEPS // 2:], rtol=1e-5)
  _assert_states_close(resumed, expected.state)
  assert _specs(resumed) == layout


def _save_for_evaluation(trainer: Trainer, state: train.TrainState, workdir: pathlib.Path) -> None:
  """A snapshot at step STEPS with the config in its meta, as train_and_evaluate writes."""
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    ckpt.save(STEPS, state, {"config": json.loads(trainer.config.to_json_best_effort())}, snapshot=True)
  finally:
    ckpt.close()


@two_devices
def test_fsdp_checkpoint_restores_for_evaluation_on_the_first_device(trainers, uninterrupted, tmp_path):
  """evaluate.restore_run (an abstract template, no shardings) of a checkpoint split over two devices."""
  state = uninterrupted[2].state
  _save_for_evaluation(trainers[2], state, tmp_path)
  config, restored, step = evaluate.restore_run(tmp_path)
  assert step == STEPS and config.training.fsdp_size == 2
  assert {leaf.sharding for leaf in jax.tree.leaves(restored)} == {jax.sharding.SingleDeviceSharding(jax.devices()[0])}
  _assert_states_close(restored, state)


@pytest.mark.slow
@two_devices
def test_fsdp_checkpoint_restores_for_evaluation_in_a_one_device_process(trainers, uninterrupted, tmp_path):
  state = uninterrupted[2].state
  _save_for_evaluation(trainers[2], state, tmp_path)
  script = ("import sys, jax, numpy as np; from score_sde import evaluate; assert jax.device_count() == 1; "
            "_, state, _ = evaluate.restore_run(sys.argv[1]); np.savez(sys.argv[2], *jax.tree.leaves(state))")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path / "state.npz")], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  saved = np.load(tmp_path / "state.npz")
  for k, expected in enumerate(jax.tree.leaves(parallel.fetch(state))):
    np.testing.assert_array_equal(saved[f"arr_{k}"], expected)


@pytest.mark.parametrize("fsdp_size", [0, -2, 3])
def test_bad_fsdp_size_is_rejected_naming_the_field(fsdp_size):
  devices = jax.devices()[:2]
  with pytest.raises(ValueError, match=f"fsdp_size={fsdp_size} \\(training.fsdp_size\\) must be a positive divisor "
                                       f"of the {len(devices)} devices"):
    train.build(_config(fsdp_size), devices)


def _losses_in(workdir: pathlib.Path) -> list[float]:
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
@two_devices
@pytest.mark.parametrize("saved_with, resumed_with", [(2, 1), (1, 2)])
def test_train_and_evaluate_resumes_under_another_fsdp_size(saved_with, resumed_with, tmp_path):
  """The whole loop: a run stopped at step 3 with one fsdp_size and resumed with the other to step 6."""
  expected = train.train_and_evaluate(_config(resumed_with), tmp_path / "straight", progress=False)
  train.train_and_evaluate(_config(saved_with, STEPS // 2), tmp_path / "resumed", progress=False)
  resumed = train.train_and_evaluate(_config(resumed_with), tmp_path / "resumed", progress=False,
                                     allow_config_change=True)  # n_iters and fsdp_size change
  assert int(resumed.step) == STEPS
  _assert_states_close(resumed, expected)
  assert _specs(resumed) == _specs(expected)
  np.testing.assert_allclose(_losses_in(tmp_path / "resumed"), _losses_in(tmp_path / "straight"), rtol=1e-5)
