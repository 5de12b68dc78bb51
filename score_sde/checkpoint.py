"""Orbax checkpoints of the train state: numbered snapshots plus a frequent preemption checkpoint.

workdir/checkpoints/<step>       every snapshot_freq steps, all kept (for evaluation and sampling)
workdir/checkpoints-meta/<step>  every snapshot_freq_for_preemption steps, the latest two kept
Each holds the state pytree and a JSON `meta` dict. Orbax writes to a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous checkpoints intact.

A checkpoint that cannot be restored (a truncated or missing array file, unreadable metadata) is
reported with a one-line warning and the newest one that restores is used instead; nothing is
deleted. Reading (`restore_run`) creates nothing in the workdir.

Arrays are stored whole (global), whatever their sharding, and restored into the layout of a
template: a checkpoint written with one training.fsdp_size or device count restores under another.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import pathlib
import sys
from typing import Any, Callable, Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp
import tensorstore as ts
from jax.experimental import multihost_utils

from score_sde import configs_util

SNAPSHOT_DIR = "checkpoints"
PREEMPTION_DIR = "checkpoints-meta"

_log = logging.getLogger(__name__)
_READS_IN_FLIGHT = 32  # stored values read at once when checking a checkpoint's files (bounds host memory)


class CheckpointError(RuntimeError):
  """A checkpoint that is missing or cannot be restored."""


def _restore_target(leaf: Any) -> jax.ShapeDtypeStruct:
  """Shape, dtype and sharding a template leaf is restored into.

  A leaf without a sharding (from `jax.eval_shape`) goes whole onto the first local device rather
  than onto the devices that wrote the checkpoint, which this process may not have.
  """
  target = ocp.utils.to_shape_dtype_struct(leaf)
  if target.sharding is not None:
    return target
  return jax.ShapeDtypeStruct(target.shape, target.dtype, sharding=jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0]))


def _reason(error: BaseException) -> str:
  """One line saying why a restore failed: the innermost cause, without TensorStore's spec dump."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return text.split(" [tensorstore_spec=")[0]


@contextlib.contextmanager
def _quiet_async_errors() -> Iterator[None]:
  """Drops the echoes of a failed orbax read, whose error we report once ourselves.

  When one array read fails, orbax closes its event loop while other reads are pending; they may
  end as asyncio "Task exception was never retrieved" logs and unraisable "Event loop is closed"
  errors (how many depends on timing). Those that end, or are collected, inside this context are
  dropped. `_check_array_files` catches missing and truncated files before orbax reads them.
  """
  previous_hook, asyncio_log = sys.unraisablehook, logging.getLogger("asyncio")

  def hook(unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
      previous_hook(unraisable)

  def keep(record: logging.LogRecord) -> bool:
    return "exception was never retrieved" not in record.getMessage()

  sys.unraisablehook = hook
  asyncio_log.addFilter(keep)
  try:
    yield
  finally:
    gc.collect()
    asyncio_log.removeFilter(keep)
    sys.unraisablehook = previous_hook


def _read_json(path: pathlib.Path) -> Any:
  name = f"{path.parent.name}/{path.name}"
  try:
    return json.loads(path.read_text())
  except FileNotFoundError as e:
    raise CheckpointError(f"{name} is missing") from e
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read {name}: {_reason(e)}") from e


def _check_array_files(state_dir: pathlib.Path) -> None:
  """Reads every stored value of an OCDBT state directory; CheckpointError at the first missing or truncated one.

  A deleted data file reads as an empty value, a truncated one as an out-of-range error; checking
  here, outside orbax, fails cleanly and warms the page cache for the restore that follows.
  """
  try:
    store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state_dir.resolve()}/"}).result()
    keys = store.list().result()
    for start in range(0, len(keys), _READS_IN_FLIGHT):
      batch = keys[start:start + _READS_IN_FLIGHT]
      for key, read in zip(batch, [store.read(key) for key in batch]):
        result = read.result()
        if result.state != "value" or not result.value:
          raise CheckpointError(f"the array file holding {key.decode()} is missing")
  except ValueError as e:  # TensorStore's errors
    raise CheckpointError(_reason(e)) from e


def read_meta(step_dir: pathlib.Path) -> dict:
  """The JSON `meta` dict saved in a checkpoint directory; CheckpointError if it is unreadable."""
  meta = _read_json(step_dir / "meta" / "metadata")
  if not isinstance(meta, dict):
    raise CheckpointError(f"its meta is a {type(meta).__name__}, not a dict")
  return meta


def _restore_dir(step_dir: pathlib.Path, template_fn: Callable[[dict], Any]) -> tuple[Any, dict]:
  """(state, meta) of one checkpoint directory; the state laid out like `template_fn(meta)` (see `_restore_target`).

  Raises CheckpointError naming the directory and the first problem found; errors of `template_fn`
  other than CheckpointError pass through.
  """
  try:
    meta = read_meta(step_dir)
    template = template_fn(meta)
    _read_json(step_dir / "state" / "_METADATA")
    if (step_dir / "state" / "manifest.ocdbt").exists():
      _check_array_files(step_dir / "state")
    abstract = jax.tree.map(_restore_target, template)
    with _quiet_async_errors(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
      try:
        restored = checkpointer.restore(step_dir, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
      except Exception as e:  # orbax raises assorted errors for damaged or mismatched checkpoints
        raise CheckpointError(_reason(e)) from e
  except CheckpointError as e:
    raise CheckpointError(f"cannot restore the checkpoint {step_dir}: {e}") from e
  return restored["state"], meta


def step_dirs(workdir: str | pathlib.Path) -> list[pathlib.Path]:
  """The finished checkpoint directories of both kinds, newest step first (at one step: the snapshot first)."""
  root = pathlib.Path(workdir).resolve()  # orbax reads absolute paths only
  found = [(int(path.name), kind == SNAPSHOT_DIR, path) for kind in (SNAPSHOT_DIR, PREEMPTION_DIR)
           if (root / kind).is_dir() for path in (root / kind).iterdir() if path.name.isdigit() and path.is_dir()]
  return [path for *_, path in sorted(found, reverse=True)]


def restore_newest(workdir: str | pathlib.Path, template_fn: Callable[[dict], Any], *,
                   step: int | None = None) -> tuple[Any, dict, int] | None:
  """(state, meta, step) of the newest checkpoint of `workdir` that restores, or of checkpoint `step`.

  Reads only. `template_fn(meta)` gives the structure to restore into (and may refuse a checkpoint
  by raising any error but CheckpointError, which then passes through). Each newer checkpoint that
  cannot be restored is left in place and, once an older one restores, reported in a one-line
  warning (when none restores, the one error names the newest one's damage). Returns None when
  the workdir has no checkpoint; raises CheckpointError when none restores, or when `step` does
  not (naming the newest step that does).
  """
  dirs = step_dirs(workdir)
  if step is not None:
    return _restore_step(workdir, dirs, step, template_fn)
  if not dirs:
    return None
  failures = []
  for step_dir in dirs:
    try:
      state, meta = _restore_dir(step_dir, template_fn)
    except CheckpointError as e:
      failures.append(e)
      continue
    for failure in failures:
      _log.warning("%s; it is left in place and an older checkpoint is used", failure)
    return state, meta, int(step_dir.name)
  raise CheckpointError(f"none of the {len(dirs)} checkpoints in {workdir} can be restored (the newest: "
                        f"{failures[0]}); they are left in place: move them aside to start afresh, or use a new workdir")


def _restore_step(workdir, dirs: list[pathlib.Path], step: int, template_fn) -> tuple[Any, dict, int]:
  asked = [path for path in dirs if int(path.name) == step]
  if not asked:
    steps = sorted({int(path.name) for path in dirs})
    raise CheckpointError(f"no checkpoint at step {step} in {workdir} (its steps: {steps or 'none'})")
  failures = []
  for step_dir in asked:
    try:
      return (*_restore_dir(step_dir, template_fn), step)
    except CheckpointError as e:
      failures.append(e)
  good = next((int(path.name) for path in dirs if path not in asked and _restores(path, template_fn)), None)
  hint = f"the newest step that restores is {good}" if good is not None else "no other checkpoint restores"
  raise CheckpointError(f"{failures[0]}; {hint}")


def _restores(step_dir: pathlib.Path, template_fn) -> bool:
  try:
    _restore_dir(step_dir, template_fn)
  except CheckpointError:
    return False
  return True


class Checkpointer:
  """Saves (state, meta) as snapshots or preemption checkpoints; restores the newest that restores."""

  def __init__(self, workdir: str | pathlib.Path, *, preemption_to_keep: int = 2):
    self._root = pathlib.Path(workdir).resolve()
    self._managers = {
        SNAPSHOT_DIR: ocp.CheckpointManager(self._root / SNAPSHOT_DIR,
                                            options=ocp.CheckpointManagerOptions(create=True)),
        PREEMPTION_DIR: ocp.CheckpointManager(
            self._root / PREEMPTION_DIR, options=ocp.CheckpointManagerOptions(max_to_keep=preemption_to_keep,
                                                                              create=True)),
    }
    self._restored_step: int | None = None

  def save(self, step: int, state: Any, meta: dict, *, snapshot: bool) -> None:
    """Writes `state` and `meta` at `step` as a numbered snapshot or as the preemption checkpoint.

    A checkpoint already at `step` is kept, unless it is newer than the one this run resumed from
    (so it could not be restored): that one is renamed to `<step>.unrestorable` first.
    """
    manager = self._managers[SNAPSHOT_DIR if snapshot else PREEMPTION_DIR]
    if step in manager.all_steps():
      if self._restored_step is None or step <= self._restored_step:
        return
      if jax.process_index() == 0:
        self._move_aside(pathlib.Path(manager.directory) / str(step))
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"moved aside checkpoint {step}")
      manager.reload()
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()

  @staticmethod
  def _move_aside(step_dir: pathlib.Path) -> None:
    aside = step_dir.with_name(f"{step_dir.name}.unrestorable")
    suffix = 1
    while aside.exists():
      aside, suffix = step_dir.with_name(f"{step_dir.name}.unrestorable{suffix}"), suffix + 1
    step_dir.rename(aside)
    _log.warning("moved the unrestorable checkpoint %s to %s before saving step %s again", step_dir, aside.name,
                 step_dir.name)

  def latest_step(self) -> int | None:
    steps = [m.latest_step() for m in self._managers.values()]
    steps = [s for s in steps if s is not None]
    return max(steps) if steps else None

  def restore_newest(self, template_fn: Callable[[dict], Any]) -> tuple[Any, dict] | None:
    """(state, meta) of the newest checkpoint that restores (see `restore_newest`), or None when there is none."""
    restored = restore_newest(self._root, template_fn)
    if restored is None:
      return None
    state, meta, self._restored_step = restored
    return state, meta

  def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
    """(state, meta) of the newest checkpoint that restores into `template`, or None when there is none."""
    return self.restore_newest(lambda meta: template)

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()


def restore_run(workdir: str | pathlib.Path, step: int | None = None, *, template_fn) -> tuple[
    ml_collections.ConfigDict, Any, int]:
  """(config saved with the checkpoint, state, step) of checkpoint `step` (default: the newest that restores).

  Reads only: creates nothing in `workdir`. `template_fn(config)` builds a state of the right
  structure (e.g. an abstract TrainState). Newer checkpoints that cannot be restored are reported
  with a one-line warning and skipped. Raises CheckpointError when the run has no checkpoint, none
  restores, or checkpoint `step` does not (naming the newest step that does).
  """
  if not pathlib.Path(workdir).is_dir():
    raise CheckpointError(f"{workdir} is not a directory; pass the workdir of a training run")
  restored = restore_newest(workdir, lambda meta: template_fn(saved_config(meta)), step=step)
  if restored is None:
    raise CheckpointError(f"no checkpoint in {workdir}")
  state, meta, step = restored
  return saved_config(meta), state, step


def saved_config(meta: dict) -> ml_collections.ConfigDict:
  """The config a checkpoint's meta holds, with fields added since at their defaults; CheckpointError if absent."""
  if not isinstance(meta.get("config"), dict):
    raise CheckpointError("its meta holds no config")
  return configs_util.with_defaults(meta["config"])
