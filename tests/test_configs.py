"""Configs: every leaf loads, validates and builds its network; typos and bad values fail at start-up."""
import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from configs import base
from score_sde import configs_util, datasets, models, schedules
from score_sde import sde as sde_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEAVES = sorted(str(p.relative_to(ROOT)) for family in ("toy", "digits", "mnist")
                for p in (ROOT / "configs" / family).glob("*.py"))


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_config_builds_its_sde_and_network(leaf):
  config = configs_util.load_config(ROOT / leaf)
  assert config.is_locked
  sde_name = pathlib.Path(leaf).stem.split("_")[0]
  expected_sde = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE,
                  "vdm": schedules.ScheduleSDE}[sde_name]
  assert type(sde_lib.get_sde(config)) is expected_sde  # pylint: disable=unidiomatic-typecheck
  model = models.get_model(config)
  shape = (2,) + datasets.data_shape(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), jnp.ones(2)))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), jnp.ones(2)), variables)
  assert out.shape == shape


def test_overrides_apply_and_keep_their_types():
  config = configs_util.load_config(ROOT / "configs/toy/vp_mlp.py",
                                    ["--config.training.n_iters=7", "--config.model.ch_mult=(1,2)"])
  assert config.training.n_iters == 7 and tuple(config.model.ch_mult) == (1, 2)


@pytest.mark.parametrize("override, message", [
    ("--config.training.continuouse=False", "unknown config field 'continuouse'.*continuous"),
    ("--config.trainin.n_iters=3", "unknown config field 'trainin'"),
    ("--config.training.n_iters=many", "n_iters"),
    ("--config.data.dataset=checkerbord", "data.dataset='checkerbord'"),
    ("--config.model.name=unett", "model.name='unett'"),
    ("--config.training.sde=vp", "training.sde='vp'"),
    ("--config.sampling.method=odee", "sampling.method"),
    ("--config.eval.ode_dequantization=gaussian", "eval.ode_dequantization='gaussian'"),
    ("--config.sampling.ode_variables=lambda", "sampling.ode_variables='lambda'"),
    ("--config.eval.ode_error_norm=max", "eval.ode_error_norm='max'"),
    ("--config.eval.ode_solver=euler", "eval.ode_solver='euler'"),
    ("--config.training.batch_size=0", "batch_size=0 must be positive"),
    ("--config.model.ema_rate=1.5", "ema_rate"),
])
def test_unknown_fields_and_values_are_rejected_by_name(override, message):
  with pytest.raises(configs_util.ConfigError, match=message):
    configs_util.load_config(ROOT / "configs/toy/vp_mlp.py", [override])


def test_new_fields_cannot_be_added_after_loading():
  config = configs_util.load_config(ROOT / "configs/toy/vp_mlp.py")
  with pytest.raises(AttributeError):
    config.training.continuouse = False


def test_train_script_fails_fast_on_a_typo(tmp_path):
  start = time.perf_counter()
  command = [sys.executable, str(ROOT / "scripts/train.py"), "--config", str(ROOT / "configs/toy/vp_mlp.py"),
             "--workdir", str(tmp_path / "run"), "--config.training.continuouse=False"]
  result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "unknown config field 'continuouse'" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()  # nothing was started
  assert time.perf_counter() - start < 60


def test_a_saved_config_gains_the_fields_added_since_with_their_defaults():
  """A run saved before `data.prefetch` and `training.fsdp_size` existed restores with their defaults."""
  saved = base.get_base_config().to_dict()
  del saved["data"]["prefetch"], saved["training"]["fsdp_size"]
  saved["optim"]["lr"] = 3e-3
  config = configs_util.with_defaults(json.loads(json.dumps(saved)))  # as read back from the checkpoint's JSON
  assert config.data.prefetch == base.get_base_config().data.prefetch
  assert config.training.fsdp_size == 1
  assert config.optim.lr == 3e-3 and config.model.ch_mult == [1, 2, 2, 2]
