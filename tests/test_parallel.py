"""Data parallelism: two processes train like one, sharded sampling equals one device, data resumption.

Run as a script (`python tests/test_parallel.py PORT PROCESS_ID OUT.npz`) this file is one worker
of the two-process test.
"""
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from score_sde import configs_util, datasets, evaluate, parallel, train  # noqa: E402

if __name__ == "__main__":  # a worker of the two-process test joins the other before any JAX call
  parallel.initialize(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
STEPS = 5


def _tiny_toy():
  """A small MLP on the oracle mixture (as in tests/test_train.py): compiles in seconds."""
  return configs_util.load_config(ROOT / "configs/toy/vp_mlp.py", [
      "--config.data.dataset=mixture", "--config.model.nf=32", "--config.model.num_res_blocks=1",
      "--config.training.batch_size=64", "--config.optim.warmup=2", "--config.model.ema_rate=0.9"])


def _train(config, devices=None) -> list[np.ndarray]:
  """STEPS sharded train steps over `devices` (default: all devices of all processes); the state's leaves.

  Each process builds the global batch from its own rows of the global data stream.
  """
  setup = train.build(config, parallel.get_mesh(devices).devices.ravel())
  state = train.init_state(config, setup)
  train_step, _ = train.get_step_fns(config, setup)
  rows = parallel.process_rows(config.training.batch_size, setup.mesh)
  batches = datasets.get_dataset(config, "train")
  for step in range(STEPS):
    local = {name: value[rows] for name, value in next(batches).items()}
    state, _ = train_step(state, parallel.global_batch(local, setup.mesh), jax.random.fold_in(setup.keys.train, step))
  return jax.tree.leaves(parallel.fetch(state))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one_process_with_the_same_global_batch(tmp_path):
  """Two jax.distributed CPU processes (gloo, one device each): identical states, equal to one device."""
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  workers = [subprocess.Popen([sys.executable, __file__, str(port), str(p), str(tmp_path / f"{p}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in range(2)]
  try:
    reference = _train(_tiny_toy(), jax.devices()[:1])  # while the workers run
    outputs = [w.communicate(timeout=120)[0] for w in workers]
  finally:
    for w in workers:
      w.kill()
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
  states = [np.load(tmp_path / f"{p}.npz") for p in range(2)]
  assert len(states[0].files) == len(reference) > 3
  for k, expected in enumerate(reference):
    np.testing.assert_array_equal(states[0][f"arr_{k}"], states[1][f"arr_{k}"])
    np.testing.assert_allclose(states[0][f"arr_{k}"], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(states[0]["arr_1"], _initial_leaves()[1])  # training moved the parameters


def _initial_leaves() -> list[np.ndarray]:
  config = _tiny_toy()
  setup = train.build(config, jax.devices()[:1])
  return jax.tree.leaves(parallel.fetch(train.init_state(config, setup)))


def _worker(process_id: int, out: str) -> None:
  assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
  assert parallel.is_main_process() == (process_id == 0)
  assert parallel.process_rows(64, parallel.get_mesh()) == slice(32 * process_id, 32 * (process_id + 1))
  np.savez(out, *_train(_tiny_toy()))


@pytest.mark.skipif(jax.device_count() < 2, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=2 "
                    "(set by `make test`)")
def test_sampling_split_over_two_devices_equals_one_device():
  """The configured sampler (probability-flow ODE) with its batch split over 2 devices: same samples."""
  config = _tiny_toy()
  config.sampling.method, config.sampling.solver, config.sampling.num_steps = "ode", "euler", 20
  setup = train.build(config, jax.devices()[:1])
  params = train.init_state(config, setup).params
  params = jax.tree.map(lambda p: p + 0.1 * np.cos(np.arange(p.size).reshape(p.shape)), params)  # a non-zero net
  sample_fn = evaluate.get_sample_fn(config, setup.sde, setup.model, 64)
  samples = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.get_mesh(devices)
    sharded = jax.jit(sample_fn, out_shardings=(parallel.batch_sharding(mesh), parallel.replicated(mesh)))
    x, _ = sharded(parallel.replicate(jax.random.key(0), mesh), parallel.replicate(params, mesh))
    assert len(x.sharding.device_set) == len(devices) and x.addressable_shards[0].data.shape[0] == 64 // len(devices)
    samples.append(np.asarray(x))
  assert samples[0].std() > 0.1
  np.testing.assert_allclose(samples[0], samples[1], rtol=1e-5, atol=1e-5)


def test_process_rows_and_bad_inputs():
  mesh = parallel.get_mesh(jax.devices()[:1])
  assert parallel.process_rows(8, mesh) == slice(0, 8)
  if jax.device_count() >= 2:
    with pytest.raises(ValueError, match="not divisible by the 2 devices"):
      parallel.process_rows(7, parallel.get_mesh(jax.devices()[:2]))
  with pytest.raises(ValueError, match="missing \\['process_id'\\]"):
    parallel.initialize("localhost:1234", 2)
  with pytest.raises(ValueError, match="process_id=2 must lie in"):
    parallel.initialize("localhost:1234", 2, 2)
  parallel.initialize()  # a single process: nothing to join
  assert parallel.is_main_process() and jax.process_count() == 1


@pytest.mark.parametrize("start", [7, 30])  # mid-epoch in the first epoch; mid-epoch after a boundary
def test_resuming_mid_epoch_yields_the_same_batches(start):
  """digits, 1597 training images, 64 per batch: 24 batches per epoch; resume at `start`."""
  config = configs_util.load_config(ROOT / "configs/digits/vp_unet.py")
  config.training.batch_size = 64
  straight = datasets.get_dataset(config, "train")
  uninterrupted = [next(straight) for _ in range(start + 4)][start:]
  resumed = datasets.get_dataset(config, "train", start_step=start)
  for expected in uninterrupted:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])
  assert not np.array_equal(uninterrupted[0]["image"], uninterrupted[1]["image"])


if __name__ == "__main__":
  _worker(int(sys.argv[2]), sys.argv[3])
