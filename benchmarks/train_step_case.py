"""A benchmark case: the jitted training step of a config on one device, with a fixed random batch.

Shared by reference_throughput.py, compile_time.py and profile_train_step.py. score_sde is imported when
a case is built, from whichever checkout is first on sys.path (reference_throughput's --baseline_root).
"""
import pathlib


def parse_case(case: str) -> tuple[str, int | None]:
  """'NAME' or 'NAME:NF' (model.nf overridden) -> (NAME, NF or None)."""
  name, _, nf = case.partition(":")
  return name, int(nf) if nf else None


def build(root: pathlib.Path, config_name: str, nf: int | None, batch: int):
  """(config, setup, train_step, state, batch_arrays) of configs/<config_name>.py under `root`, one device.

  train_step(state, batch_arrays, rng) -> (state, metrics) is jitted but not yet compiled.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from score_sde import configs_util, datasets, train  # pylint: disable=import-outside-toplevel
  overrides = [f"--config.training.batch_size={batch}"] + ([f"--config.model.nf={nf}"] if nf else [])
  config = configs_util.load_config(str(root / f"configs/{config_name}.py"), overrides)
  setup = train.build(config, jax.devices()[:1])
  state = train.init_state(config, setup)
  train_step, _ = train.get_step_fns(config, setup)
  images = np.random.default_rng(0).uniform(0.0, 1.0, (batch,) + datasets.data_shape(config)).astype(np.float32)
  batch_arrays = train.shard_batch({"image": images, "label": np.zeros(batch, np.int32)}, setup.mesh)
  return config, setup, train_step, state, batch_arrays
