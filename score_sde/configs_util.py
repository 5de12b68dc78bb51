"""Loading, locking and validating `ml_collections` configs.

Leaf configs (`configs/<family>/<sde>_<model>.py`) are loaded through `ml_collections.config_flags`
and locked, so `--config.training.continuouse=False` fails at start-up naming the field; `validate`
then rejects unknown values of the enumerated fields.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
  """A config field or value that the project does not know."""


def _choices() -> dict[str, Callable[[], Sequence[str]]]:
  """Dotted field -> allowed values (computed lazily from the registries)."""
  # pylint: disable=import-outside-toplevel
  from score_sde import datasets, losses, models, sampling
  from score_sde import sde as sde_lib
  from score_sde.sampling import ode, pc
  return {
      "training.sde": lambda: tuple(sde_lib.SDE_BUILDERS),
      "data.dataset": datasets.available_datasets,
      "model.name": models.available_models,
      "model.embedding_type": lambda: ("positional", "fourier"),
      "sampling.method": lambda: tuple(sampling.SAMPLERS),
      "sampling.predictor": lambda: tuple(pc.PREDICTORS),
      "sampling.corrector": lambda: tuple(pc.CORRECTORS),
      "sampling.solver": lambda: tuple(ode.SOLVERS),
      "eval.bpd_dataset": lambda: ("train", "test"),
      "optim.optimizer": lambda: tuple(losses.OPTIMIZERS),
  }


_POSITIVE = ("training.batch_size", "training.n_iters", "training.snapshot_freq",
             "training.snapshot_freq_for_preemption", "training.log_freq", "training.eval_freq",
             "training.eval_batches", "eval.batch_size", "data.image_size", "data.num_channels", "data.dim",
             "model.num_scales", "optim.lr")


def _get(config: ml_collections.ConfigDict, dotted: str):
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError naming the first field whose value is not allowed; returns `config`."""
  for field, allowed in _choices().items():
    value, options = _get(config, field), allowed()
    if value not in options:
      raise ConfigError(f"config.{field}={value!r} is not one of {list(options)}")
  for field in _POSITIVE:
    if not _get(config, field) > 0:
      raise ConfigError(f"config.{field}={_get(config, field)!r} must be positive")
  if not 0.0 <= config.model.ema_rate < 1.0:
    raise ConfigError(f"config.model.ema_rate={config.model.ema_rate!r} must lie in [0, 1)")
  return config


def _with_repo_on_path() -> None:
  """Leaf configs import `configs.default_*`; make the repository root importable."""
  if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved config, plus every field added to `configs/base.py` since, at its default.

  A run written before a field existed (e.g. `data.prefetch`) then restores, samples and resumes
  with the behaviour that field's default gives.
  """
  _with_repo_on_path()
  from configs import base  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(saved)

  def fill(target: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
    for name, default in defaults.items():
      if name not in target:
        target[name] = default
      elif isinstance(default, ml_collections.ConfigDict):
        fill(target[name], default)

  fill(config, base.get_base_config())
  return config


def parse_config_flags(argv: Sequence[str], flag_values: flags.FlagValues) -> list[str]:
  """absl flags parser for scripts: turns an unknown config field into a one-line error and exit."""
  _with_repo_on_path()
  try:
    remaining = flag_values(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    sys.exit(f"config error: {_message(e)}  (in {' '.join(a for a in argv[1:] if a.startswith('--config.'))})")
  try:
    validate(flag_values.config)
  except ConfigError as e:
    sys.exit(f"config error: {e}")
  return remaining


def _message(error: BaseException) -> str:
  """One line from config_dict's repr-quoted "'name'\\nDid you mean ..." errors."""
  if isinstance(error, (AttributeError, KeyError)) and error.args:
    text = str(error.args[0]).replace("\\n", "\n").replace("\\'", "'")
    name, *hints = [line.strip().strip("'") for line in text.splitlines()]
    return " ".join([f"unknown config field {name!r}.", *hints])
  return str(error)


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads a leaf config file, applies `--config.a.b=value` overrides, locks and validates it.

  An override naming an unknown field, or a value of the wrong type, raises ConfigError.
  """
  _with_repo_on_path()
  flag_values = flags.FlagValues()
  argv = ["load_config", f"--config={path}", *overrides]
  try:
    config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    raise ConfigError(f"{_message(e)} (overrides: {list(overrides)})") from e
  return validate(flag_values.config)


def sampler_options(config: ml_collections.ConfigDict, **overrides) -> tuple[str, dict]:
  """(method, options) for `sampling.sample`, read from `config.sampling.*`.

  `overrides` (None values ignored) replace config fields: `method`, and any option of the method
  (e.g. num_steps). The config fields a method does not accept are left out; an override it does
  not accept raises ValueError. config.sampling.num_steps = 0 leaves num_steps at the method's default.
  """
  overrides = {name: value for name, value in overrides.items() if value is not None}
  # pylint: disable-next=import-outside-toplevel
  from score_sde import sampling
  method = overrides.pop("method", config.sampling.method)
  accepted = sampling.options_of(method)
  unknown = sorted(set(overrides) - set(accepted))
  if unknown:
    raise ValueError(f"option(s) {unknown} do not apply to sampling method {method!r}; it accepts {sorted(accepted)}")
  s = config.sampling
  from_config = {"solver": s.solver, "rtol": s.rtol, "atol": s.atol, "predictor": s.predictor,
                 "corrector": s.corrector, "snr": s.snr, "n_steps": s.n_steps_each, "denoise": s.noise_removal,
                 "num_steps": s.num_steps if s.num_steps > 0 else None}
  options = {name: value for name, value in from_config.items() if name in accepted and value is not None}
  return method, {**options, **overrides}
