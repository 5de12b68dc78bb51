"""Loading, locking and validating `ml_collections` configs, and reading sampler options from them.

Leaf configs (`configs/<family>/<sde>_<model>.py`, in the installed `configs` package) are loaded
through `ml_collections.config_flags` and locked, so `--config.training.continuouse=False` fails at
start-up naming the field; `validate` then rejects unknown values of the enumerated fields.
`sampler_options` is the one place where config fields become sampler options.
"""
from __future__ import annotations

import pathlib
import re
import sys
from typing import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags


class ConfigError(ValueError):
  """A config field or value that the project does not know."""


def _choices() -> dict[str, Callable[[], Sequence[str]]]:
  """Dotted field -> allowed values (computed lazily from the registries)."""
  # pylint: disable=import-outside-toplevel
  from score_sde import datasets, evaluate, flow_variables, likelihood, losses, models, sampling
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
      "sampling.ode_variables": lambda: flow_variables.VARIABLES,
      "eval.bpd_dataset": lambda: ("train", "test"),
      "eval.ode_variables": lambda: flow_variables.VARIABLES,
      "eval.ode_dequantization": lambda: tuple(evaluate.ODE_DEQUANTIZATIONS),
      "eval.ode_error_norm": lambda: tuple(likelihood.ERROR_NORMS),
      "eval.ode_solver": lambda: ode.ADAPTIVE_SOLVERS,
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


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved config in today's fields: fields added to `configs/base.py` since take their
  defaults, fields removed since are dropped.

  A run written before a field existed (e.g. `data.prefetch`) then restores, samples and resumes
  with the behaviour that field's default gives; one written while a field that did nothing existed
  (e.g. `sampling.probability_flow`) loads without it.
  """
  from configs import base  # pylint: disable=import-outside-toplevel

  def merge(saved_part: dict, defaults: ml_collections.ConfigDict) -> dict:
    return {name: merge(saved_part.get(name, {}), default) if isinstance(default, ml_collections.ConfigDict)
            else saved_part.get(name, default) for name, default in defaults.items()}

  return ml_collections.ConfigDict(merge(dict(saved), base.get_base_config()))


def resolve_config_path(path: str) -> str:
  """`path` where it exists, else the same path inside the installed `configs` package.

  So `--config configs/toy/vp_mlp.py` works from any directory once the package is installed.
  """
  if pathlib.Path(path).exists():
    return path
  parts = pathlib.PurePath(path).parts
  if parts and parts[0] == "configs":
    import configs  # pylint: disable=import-outside-toplevel
    installed = pathlib.Path(configs.__file__).parent.joinpath(*parts[1:])
    if installed.exists():
      return str(installed)
  raise FileNotFoundError(f"config file {path!r} does not exist (here or, for configs/..., in the installed "
                          "configs package); pass e.g. --config configs/toy/vp_mlp.py")


def _with_resolved_config(argv: Sequence[str]) -> list[str]:
  """argv with the file of `--config=PATH` / `--config PATH` resolved by `resolve_config_path`."""
  argv = list(argv)
  for k, arg in enumerate(argv):
    if arg.startswith("--config="):
      argv[k] = "--config=" + resolve_config_path(arg.removeprefix("--config="))
    elif arg == "--config" and k + 1 < len(argv):
      argv[k + 1] = resolve_config_path(argv[k + 1])
  return argv


# config.sampling field -> the sampler option it sets, for the methods whose signature takes that option.
_SAMPLER_FIELDS = {"solver": "solver", "rtol": "rtol", "atol": "atol", "predictor": "predictor",
                   "corrector": "corrector", "snr": "snr", "n_steps_each": "n_steps", "noise_removal": "denoise",
                   "num_steps": "num_steps", "ode_variables": "variables"}


def sampler_options(config: ml_collections.ConfigDict, **overrides) -> tuple[str, dict]:
  """(method, options) for `sampling.sample(..., method, **options)` as `config.sampling` says.

  `method` is config.sampling.method and the options are the config.sampling fields that method
  accepts (sampling.num_steps = 0 leaves the sampler's own step count). Keyword `overrides`
  (`method=`, or any option of the method; None keeps the config's) replace them, e.g. a script's
  --method and --num_steps. Raises ValueError for an unknown method or an option it does not take.
  """
  from score_sde import sampling  # pylint: disable=import-outside-toplevel  (loading a config needs no JAX)
  overrides = {name: value for name, value in overrides.items() if value is not None}
  method = overrides.pop("method", config.sampling.method)
  accepted = sampling.options_of(method)
  unknown = sorted(set(overrides) - set(accepted))
  if unknown:
    raise ValueError(f"sampling method {method!r} takes no option {unknown}; it takes {sorted(accepted)}")
  options = {option: config.sampling[field] for field, option in _SAMPLER_FIELDS.items()}
  if not options["num_steps"]:
    del options["num_steps"]
  options.update(overrides)
  return method, {name: value for name, value in options.items() if name in accepted}


def parse_config_flags(argv: Sequence[str], flag_values: flags.FlagValues) -> list[str]:
  """absl flags parser for scripts: a bad flag, config file or config field exits with one line naming it.

  The file of a `config` flag is found by `resolve_config_path`; a loaded config
  (`config_flags.DEFINE_config_file`) is validated.
  """
  prog = pathlib.Path(argv[0]).name if argv else "score_sde"
  try:
    remaining = flag_values(_with_resolved_config(argv) if "config" in flag_values else argv)
    if "config" in flag_values and isinstance(flag_values.config, ml_collections.ConfigDict):
      validate(flag_values.config)
  except (AttributeError, KeyError) as e:  # config_dict's errors for unknown fields
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
    sys.exit(f"{prog}: config error: {_message(e)}  (in {overrides})")
  except (flags.Error, ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
    sys.exit(f"{prog}: error: {_message(e)}")
  return remaining


def _message(error: BaseException) -> str:
  """One line from config_dict's repr-quoted "'name'\\nDid you mean ..." errors."""
  if isinstance(error, (AttributeError, KeyError)) and error.args:
    text = str(error.args[0]).replace("\\n", "\n").replace("\\'", "'")
    name, *hints = [line.strip().strip("'") for line in text.splitlines()]
    return " ".join([f"unknown config field {name!r}.", *hints])
  missing = re.search(r"Flag (--\w+) must have a value other than None", str(error))
  if missing:
    return f"{missing.group(1)} is required"
  return " ".join(str(error).split())


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads a leaf config file, applies `--config.a.b=value` overrides, locks and validates it.

  An override naming an unknown field, or a value of the wrong type, raises ConfigError.
  """
  flag_values = flags.FlagValues()
  argv = ["load_config", f"--config={resolve_config_path(str(path))}", *overrides]
  try:
    config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    raise ConfigError(f"{_message(e)} (overrides: {list(overrides)})") from e
  return validate(flag_values.config)
