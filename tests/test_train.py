"""Training: convergence to the oracle's DSM floor, exact resumption, data parallelism, NaN stop."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import checkpoint, configs_util, datasets, losses, models, sampling, testing, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_toy(**training):
  """A small MLP on the oracle mixture: each run compiles in seconds."""
  config = configs_util.load_config(ROOT / "configs/toy/vp_mlp.py", [
      "--config.data.dataset=mixture", "--config.model.nf=32", "--config.model.num_res_blocks=1",
      "--config.training.batch_size=64", "--config.training.snapshot_sampling=False",
      "--config.training.log_freq=5", "--config.training.eval_freq=1000", "--config.training.snapshot_freq=1000",
      "--config.training.snapshot_freq_for_preemption=10", "--config.optim.warmup=5"])
  config.training.update(training)
  return config


def _records(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_toy_training_reaches_the_oracle_floor_and_its_ode_samples_match(tmp_path):
  """DSM loss of the EMA network within 0.02 of the oracle floor; ODE samples within SW 0.3 of the target.

  The floor is the loss of the exact score (~0.236 here); an untrained network scores ~1.0. The
  sliced 2-Wasserstein distance between two independent 2000-point samples of the target is ~0.15,
  and between the target and a network 0.01 above the floor ~0.4.
  """
  config = configs_util.load_config(ROOT / "configs/toy/vp_mlp.py", [
      "--config.data.dataset=mixture", "--config.model.nf=64", "--config.training.batch_size=256",
      "--config.training.n_iters=1000", "--config.training.eval_freq=1000", "--config.training.snapshot_sampling=False",
      "--config.model.ema_rate=0.99", "--config.optim.warmup=100"])
  state = train.train_and_evaluate(config, tmp_path, progress=False)
  setup = train.build(config)
  mixture = datasets.oracle_mixture(config)
  x, _ = mixture.sample(jax.random.key(1), 20000)
  loss = lambda score_fn: float(jnp.mean(losses.dsm_loss(jax.random.key(2), score_fn, setup.sde, x,  # noqa: E731
                                                         reduce_mean=config.training.reduce_mean)))
  score_fn = models.get_score_fn(setup.sde, setup.model, state.ema_params, continuous=True)
  floor = loss(mixture.score_fn(setup.sde))
  assert 0.0 <= loss(score_fn) - floor < 0.02, (loss(score_fn), floor)
  samples, _ = sampling.sample(jax.random.key(3), score_fn, setup.sde, (2000, 2), method="ode", rtol=1e-4, atol=1e-4)
  target, _ = mixture.sample(jax.random.key(4), 2000)
  assert float(testing.sliced_wasserstein(jax.random.key(5), samples, target)) < 0.3
  records = _records(tmp_path)
  assert [r["step"] for r in records if "loss" in r] == list(range(100, 1001, 100))
  assert "eval_loss" in records[-1] and np.isfinite(records[-1]["eval_loss"])
  assert (tmp_path / "checkpoints" / "1000").is_dir()


class _Interrupt(Exception):
  pass


def _interrupting(get_dataset, after: int):
  """get_dataset whose training stream raises after `after` batches, like a killed process."""

  def patched(config, split, **kwargs):
    stream = get_dataset(config, split, **kwargs)
    if split != "train":
      return stream

    def interrupted():
      for k, batch in enumerate(stream):
        if k == after:
          raise _Interrupt
        yield batch

    return interrupted()

  return patched


def test_killed_and_resumed_run_equals_an_uninterrupted_run_exactly(tmp_path, monkeypatch):
  config = _tiny_toy(n_iters=30)
  uninterrupted = train.train_and_evaluate(config, tmp_path / "straight", progress=False)

  with monkeypatch.context() as patch:
    patch.setattr(datasets, "get_dataset", _interrupting(datasets.get_dataset, after=25))
    with pytest.raises(_Interrupt):
      train.train_and_evaluate(config, tmp_path / "killed", progress=False)
  assert checkpoint.Checkpointer(tmp_path / "killed").latest_step() == 20  # steps 21..25 are lost
  resumed = train.train_and_evaluate(config, tmp_path / "killed", progress=False)
  assert int(resumed.step) == 30
  _assert_trees_equal(resumed, uninterrupted)
  losses_of = lambda d: {r["step"]: r["loss"] for r in _records(d) if "loss" in r}  # noqa: E731
  assert losses_of(tmp_path / "killed") == losses_of(tmp_path / "straight")
  steps = [r["step"] for r in _records(tmp_path / "killed") if "loss" in r]
  assert steps == sorted(set(steps)) == list(range(5, 31, 5))  # step 25, logged before the kill, is not repeated


def test_time_limit_saves_the_step_it_stops_at_and_a_rerun_resumes_there(tmp_path):
  config = _tiny_toy(n_iters=30)
  stopped = train.train_and_evaluate(config, tmp_path, progress=False, time_limit_s=0.0)
  assert int(stopped.step) == 1 and checkpoint.Checkpointer(tmp_path).latest_step() == 1
  resumed = train.train_and_evaluate(_tiny_toy(n_iters=3), tmp_path, progress=False, allow_config_change=True)
  assert int(resumed.step) == 3


@pytest.mark.skipif(jax.device_count() < 2, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=2 "
                    "(set by `make test`)")
def test_two_devices_give_the_loss_curve_of_one():
  config = _tiny_toy()
  curves, params = [], []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    setup = train.build(config, devices)
    state = train.init_state(config, setup)
    train_step, _ = train.get_step_fns(config, setup)
    batches = train._scaled_batches(config, "train", 0)  # pylint: disable=protected-access
    curve = []
    for step in range(20):
      state, metrics = train_step(state, train.shard_batch(next(batches), setup.mesh),
                                  jax.random.fold_in(setup.keys.train, step))
      curve.append(float(metrics["loss"]))
    assert len(state.params["Dense_0"]["kernel"].sharding.device_set) == len(devices)
    curves.append(curve)
    params.append(state.params)
  np.testing.assert_allclose(curves[0], curves[1], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  get_dataset = datasets.get_dataset

  def poisoned(config, split, **kwargs):
    for k, batch in enumerate(get_dataset(config, split, **kwargs)):
      yield {**batch, "image": batch["image"] * np.nan} if split == "train" and k == 14 else batch

  monkeypatch.setattr(datasets, "get_dataset", poisoned)
  config = _tiny_toy(n_iters=30)
  with pytest.raises(train.NonFiniteLossError, match="step 15.*last good checkpoint \\(step 10\\)"):
    train.train_and_evaluate(config, tmp_path, progress=False)
  ckpt = checkpoint.Checkpointer(tmp_path)
  assert ckpt.latest_step() == 10
  setup = train.build(config)
  restored, meta = ckpt.restore_latest(train.init_state(config, setup))
  assert meta["step"] == 10 and all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(restored.params))


def test_unet_maps_images_to_images_and_starts_at_zero():
  config = configs_util.load_config(ROOT / "configs/mnist/vp_unet.py")  # 28 -> 14 -> 7: odd sizes on the way back
  model = models.get_model(config)
  params = jax.jit(models.init_params, static_argnums=(1, 2))(jax.random.key(0), model, (28, 28, 1))
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  out = jax.jit(model.apply)({"params": params}, x, jnp.array([10.0, 500.0]))
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised output convolution
  assert any(name.startswith("AttnBlock") for name in params)


def test_bits_per_dim_of_a_subset_pads_to_the_subset_not_to_the_eval_batch():
  """3 digits with eval.batch_size 250 on 2 devices: one batch of 4 rows (3 real), so 3 finite values."""
  from score_sde import evaluate, parallel  # pylint: disable=import-outside-toplevel
  config = configs_util.load_config(ROOT / "configs/digits/vp_unet.py", ["--config.model.nf=8",
                                                                         "--config.eval.batch_size=250"])
  config.eval.update(rtol=1e-2, atol=1e-2)
  mesh = parallel.get_mesh(jax.devices()[:2])
  batch_sizes = []
  split_batches = evaluate.split_batches

  def recording(config, split, batch_size, mesh, num_examples=0):
    for batch, count in split_batches(config, split, batch_size, mesh, num_examples):
      batch_sizes.append(batch.shape[0])
      yield batch, count

  model, sde = models.get_model(config), train.build(config).sde
  params = models.init_params(jax.random.key(0), model, datasets.data_shape(config))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluate, "split_batches", recording)
    bpd, nfe = evaluate.bits_per_dim_over_split(jax.random.key(1), config, sde, model, params, "test", 3, mesh=mesh)
  assert batch_sizes == [-(-3 // mesh.size) * mesh.size]
  assert bpd.shape == (3,) and np.all(np.isfinite(bpd)) and nfe > 0


def test_cpu_training_step_compiles_convolutions_without_ynnpack():
  """train.CPU_COMPILER_OPTIONS takes convolutions away from YNNPACK (XLA:CPU's default) and nothing else."""
  x, w = jnp.ones((8, 32, 32, 128)), jnp.ones((3, 3, 128, 128))
  step = lambda x, w: jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                            dimension_numbers=("NHWC", "HWIO", "NHWC")))
  default = jax.jit(step).lower(x, w).compile().as_text()
  ours = jax.jit(step, compiler_options=train.CPU_COMPILER_OPTIONS).lower(x, w).compile().as_text()
  assert "__ynn_fusion" in default and "__ynn_fusion" not in ours and " convolution(" in ours
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  assert train.compiler_options(mesh) == (train.CPU_COMPILER_OPTIONS if jax.devices()[0].platform == "cpu" else {})
