"""What every command-line program shares: one-line errors, quiet logs, checkpoint flags, run().

`run(main, flag_values)` parses the flags (a config file, its `--config.*` overrides and every
other flag are checked before `main` runs), starts the program again with transparent huge pages
for XLA:CPU's temporaries where they help (huge_pages.py), silences INFO logs unless --verbose,
turns on JAX's persistent compilation cache (--compilation_cache), and turns the errors a user can cause
(`expected_errors()`) into one line on stderr and exit code 1 (with --verbose, the traceback too: a
ValueError may also come from a bug).
"""
from __future__ import annotations

import logging
import os
import pathlib
import sys
from typing import Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

from score_sde import configs_util
from score_sde.cli import huge_pages


def expected_errors() -> tuple[type[BaseException], ...]:
  """Errors that name a bad input or a state of the workdir, not a bug: shown as one line."""
  # pylint: disable=import-outside-toplevel  (imported here, so that sweep needs no JAX)
  from score_sde import checkpoint, datasets, train
  return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, checkpoint.CheckpointError,
          datasets.DatasetUnavailableError, train.NonFiniteLossError)


def define_verbose_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_bool("verbose", False, "show the INFO logs of absl, orbax and JAX (default: warnings only) and the "
                    "traceback of an error", flag_values=flag_values)


def default_compilation_cache() -> str:
  """$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/score_sde/jax (~/.cache/score_sde/jax)."""
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(cache_home, "score_sde", "jax")


def define_compilation_cache_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_string("compilation_cache", default_compilation_cache(), "directory of JAX's persistent compilation "
                      "cache: a rerun with the same shapes (a resumed or repeated run) loads its compiled programs "
                      "instead of compiling them again (not those with host callbacks: the solves behind progress "
                      "bars); '' turns it off", flag_values=flag_values)


def use_compilation_cache(directory: str) -> None:
  """Compiled programs that took >= 1 s to compile (jax_persistent_cache_min_compile_time_secs) go to `directory`.

  Through the environment when JAX is not imported yet (sweep, which imports no JAX, hands it on to the
  runs it starts), else through jax.config."""
  directory = os.path.expanduser(directory) if directory else None
  if directory:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
  else:
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
  if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_compilation_cache_dir", directory)


def define_checkpoint_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """--workdir, --step and --use_ema: which run, which checkpoint, which parameters a script reads."""
  flags.DEFINE_string("workdir", None, "training directory holding checkpoints/ and checkpoints-meta/",
                      flag_values=flag_values)
  flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)", flag_values=flag_values)
  flags.DEFINE_bool("use_ema", True, "use the EMA parameters (--nouse_ema: the raw ones)", flag_values=flag_values)
  flags.mark_flag_as_required("workdir", flag_values=flag_values)


def existing_workdir(workdir: str, flag: str = "--workdir") -> pathlib.Path:
  """`workdir` as a path; FileNotFoundError if it is not a directory (a reading script never creates it)."""
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise FileNotFoundError(f"{flag}={workdir} is not a directory; pass the --workdir of a training run")
  return path


def check_training_inputs(config) -> None:
  """Raises ValueError / FileNotFoundError / DatasetUnavailableError for a config that cannot train,
  before anything is written: a batch that does not split over the devices, data that do not load."""
  # pylint: disable=import-outside-toplevel
  from score_sde import datasets, train
  train.build(config)
  if not datasets.is_toy(config):
    for split in ("train", "test"):
      datasets.get_source(config, split)


def quiet_logs(verbose: bool) -> None:
  """Warnings only, or everything with --verbose.

  Quiet also drops what orbax's event loop leaves behind when a restore fails (asyncio's "Task
  exception was never retrieved", tensorstore callbacks hitting "Event loop is closed"): the error
  itself is reported in one line.
  """
  level = logging.INFO if verbose else logging.WARNING
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
  logging.getLogger().setLevel(level)
  logging.getLogger("asyncio").setLevel(logging.INFO if verbose else logging.CRITICAL)
  if not verbose:
    sys.unraisablehook = _drop_closed_event_loop


def _drop_closed_event_loop(unraisable) -> None:
  if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)


def one_line(error: BaseException) -> str:
  """The message of `error` on one line (FileNotFoundError from the OS: its strerror and file name)."""
  if isinstance(error, OSError) and error.filename and error.strerror:
    return f"{error.strerror}: {error.filename}"
  return " ".join(str(error).split()) or type(error).__name__


def run(main: Callable[[Sequence[str]], None], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Parses the flags, then runs main; an expected error exits 1 with one line on stderr."""

  def guarded_main(argv: Sequence[str]) -> None:
    huge_pages.restart_with_huge_pages()
    quiet_logs(flag_values.verbose)
    use_compilation_cache(flag_values.compilation_cache)
    try:
      main(argv)
    except Exception as e:  # pylint: disable=broad-except  (re-raised below unless expected)
      if flag_values.verbose or not isinstance(e, expected_errors()):
        raise
      sys.exit(f"{pathlib.Path(sys.argv[0]).name}: error: {one_line(e)}")

  if "compilation_cache" not in flag_values:
    define_compilation_cache_flag(flag_values)
  _list_in_help(flag_values)
  app.run(guarded_main, flags_parser=lambda argv: configs_util.parse_config_flags(argv, flag_values))


def _list_in_help(flag_values: flags.FlagValues) -> None:
  """--help lists the key flags of the main module (a console script or scripts/<name>.py, which define
  none): make the flags of score_sde's modules key flags of it."""
  for module, module_flags in flag_values.flags_by_module_dict().items():
    if module.startswith("score_sde"):
      for flag in module_flags:
        flag_values.register_key_flag_for_module(sys.argv[0], flag)
