"""Data parallelism: two processes train like one, sharded sampling equals one device, data resumption.

Run as a script (`python tests/test_parallel.py PORT PROCESS_ID WORKDIR`) this file is one worker
of the two-process test.
"""
import json
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


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _loop_config():
  """The tiny toy run of train_and_evaluate: eval losses, snapshot samples and a final checkpoint."""
  config = _tiny_toy()
  config.training.update(n_iters=STEPS, log_freq=2, eval_freq=3, eval_batches=2, snapshot_freq=1000,
                         snapshot_freq_for_preemption=4, snapshot_num_samples=64)
  config.sampling.update(method="ode", solver="euler", num_steps=10)
  return config


def _records(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl without the wall-clock rates."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if not k.endswith("_per_sec")} for r in records]


def test_two_processes_train_like_one_process_with_the_same_global_batch(tmp_path):
  """Two jax.distributed CPU processes (gloo, one device each) run train_and_evaluate in one workdir.

  Their final states are identical and equal (to float32 reduction-order error) to a one-device run
  with the same global batch; process 0 alone writes metrics and samples, with the same values.
  """
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  workers = [subprocess.Popen([sys.executable, __file__, str(port), str(p), str(tmp_path / "two")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in range(2)]
  try:
    reference = jax.tree.leaves(parallel.fetch(  # while the workers run
        train.train_and_evaluate(_loop_config(), tmp_path / "one", progress=False, devices=jax.devices()[:1])))
    outputs = [w.communicate(timeout=150)[0] for w in workers]
  finally:
    for w in workers:
      w.kill()
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
  states = [np.load(tmp_path / "two" / f"state_{p}.npz") for p in range(2)]
  assert len(states[0].files) == len(reference) > 3
  for k, expected in enumerate(reference):
    np.testing.assert_array_equal(states[0][f"arr_{k}"], states[1][f"arr_{k}"])
    np.testing.assert_allclose(states[0][f"arr_{k}"], expected, rtol=1e-5, atol=1e-6)
  assert int(states[0]["arr_0"]) == STEPS  # TrainState.step
  one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
  assert [(r["step"], sorted(r)) for r in two] == [(r["step"], sorted(r)) for r in one]  # process 1 wrote nothing
  assert {"loss", "eval_loss", "sample_nfe"} <= {k for r in one for k in r}
  for a, b in zip(one, two):
    np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)], rtol=1e-4)
  assert sorted(p.name for p in (tmp_path / "two" / "samples").iterdir()) == [f"step_{STEPS}.png"]
  assert (tmp_path / "two" / "checkpoints" / str(STEPS)).is_dir()


def _worker(process_id: int, workdir: str) -> None:
  assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
  assert parallel.is_main_process() == (process_id == 0)
  assert parallel.process_rows(64, parallel.get_mesh()) == slice(32 * process_id, 32 * (process_id + 1))
  state = train.train_and_evaluate(_loop_config(), workdir, progress=False)
  np.savez(pathlib.Path(workdir) / f"state_{process_id}.npz", *jax.tree.leaves(parallel.fetch(state)))


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


@pytest.mark.parametrize("dataset", ["digits", "mixture"])
def test_process_shares_of_a_batch_make_up_the_global_batch(dataset):
  """Two processes' rows, with the flips and dequantization noise of the whole batch, concatenate to it."""
  config = configs_util.load_config(ROOT / ("configs/digits/vp_unet.py" if dataset == "digits" else
                                            "configs/toy/vp_mlp.py"), [f"--config.data.dataset={dataset}"])
  if dataset == "digits":
    config.data.update(random_flip=True, uniform_dequantization=True)
  whole = datasets.get_dataset(config, "train", batch_size=64, start_step=30)
  halves = [datasets.get_dataset(config, "train", batch_size=64, start_step=30, rows=slice(32 * p, 32 * (p + 1)))
            for p in range(2)]
  for _ in range(2):
    expected, parts = next(whole), [next(h) for h in halves]
    for name in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([part[name] for part in parts]), expected[name])
  with pytest.raises(ValueError, match="repeat=True"):
    datasets.get_dataset(config, "test", repeat=False, rows=slice(0, 32))


@pytest.mark.parametrize("dataset, image_size, channels", [
    ("MNIST", 28, 1), ("CIFAR10", 32, 3), ("SVHN", 32, 3), ("CELEBA", 16, 3), ("LSUN/church_outdoor", 16, 3),
    ("IMAGENET32", 32, 3), ("IMAGENET64", 64, 3)])
def test_tfds_sources_shard_over_processes_and_resume(dataset, image_size, channels):
  """tfds.data_source on mock data: two processes' rows make up each batch; a resumed stream repeats it."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = configs_util.load_config(ROOT / "configs/mnist/vp_unet.py")
  config.data.update(dataset=dataset, image_size=image_size, num_channels=channels, random_flip=True,
                     uniform_dequantization=True)
  with tfds.testing.mock_data(num_examples=24):  # 3 batches of 8 per epoch
    whole = [next(s) for s in [datasets.get_dataset(config, "train", batch_size=8)] for _ in range(5)]
    resumed = datasets.get_dataset(config, "train", batch_size=8, start_step=4)
    halves = [datasets.get_dataset(config, "train", batch_size=8, start_step=4, rows=slice(4 * p, 4 * (p + 1)))
              for p in range(2)]
    got, parts = next(resumed), [next(h) for h in halves]
  assert whole[4]["image"].shape == (8, image_size, image_size, channels)
  np.testing.assert_array_equal(got["image"], whole[4]["image"])
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole[4]["image"])
  assert not np.array_equal(whole[1]["image"], whole[4]["image"])  # epoch 1 reshuffles


if __name__ == "__main__":
  _worker(int(sys.argv[2]), sys.argv[3])
