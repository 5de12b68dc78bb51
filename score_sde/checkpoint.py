"""Orbax checkpoints of the train state: numbered snapshots plus a frequent preemption checkpoint.

workdir/checkpoints/<step>       every snapshot_freq steps, all kept (for evaluation and sampling)
workdir/checkpoints-meta/<step>  every snapshot_freq_for_preemption steps, only the latest few kept
Each holds the state pytree and a JSON `meta` dict. Orbax writes to a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous checkpoints intact.

Arrays are stored whole (global), whatever their sharding, and restored into the layout of a
template: a checkpoint written with one training.fsdp_size or device count restores under another.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from score_sde import configs_util

SNAPSHOT_DIR = "checkpoints"
PREEMPTION_DIR = "checkpoints-meta"


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be restored."""


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


class Checkpointer:
  """Saves and restores (state, meta); `restore_latest` picks the newest step of either kind."""

  def __init__(self, workdir: str | pathlib.Path, *, preemption_to_keep: int = 1):
    root = pathlib.Path(workdir).resolve()
    self._managers = {
        SNAPSHOT_DIR: ocp.CheckpointManager(root / SNAPSHOT_DIR, options=ocp.CheckpointManagerOptions(create=True)),
        PREEMPTION_DIR: ocp.CheckpointManager(
            root / PREEMPTION_DIR, options=ocp.CheckpointManagerOptions(max_to_keep=preemption_to_keep, create=True)),
    }

  def save(self, step: int, state: Any, meta: dict, *, snapshot: bool) -> None:
    """Writes `state` and `meta` at `step` as a numbered snapshot or as the preemption checkpoint."""
    manager = self._managers[SNAPSHOT_DIR if snapshot else PREEMPTION_DIR]
    if step in manager.all_steps():
      return
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()

  def latest_step(self) -> int | None:
    steps = [m.latest_step() for m in self._managers.values()]
    steps = [s for s in steps if s is not None]
    return max(steps) if steps else None

  def snapshot_steps(self) -> list[int]:
    return list(self._managers[SNAPSHOT_DIR].all_steps())

  def restore(self, step: int, template: Any, *, kind: str = SNAPSHOT_DIR) -> tuple[Any, dict]:
    """(state, meta) saved at `step`, laid out like `template` (arrays or ShapeDtypeStructs; see `_restore_target`)."""
    manager = self._managers[kind]
    abstract = jax.tree.map(_restore_target, template)
    path = pathlib.Path(manager.directory) / str(step)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                               meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises assorted errors for damaged or mismatched checkpoints
      raise CheckpointError(
          f"cannot restore the checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
          "it is left in place: move it aside to resume from an earlier one, or use a new workdir") from e
    return restored["state"], dict(restored["meta"])

  def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint of either kind, or None when the workdir has none."""
    candidates = [(m.latest_step(), kind) for kind, m in self._managers.items() if m.latest_step() is not None]
    if not candidates:
      return None
    step, kind = max(candidates)
    return self.restore(step, template, kind=kind)

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()


def restore_run(workdir: str | pathlib.Path, step: int | None = None, *, template_fn) -> tuple[
    ml_collections.ConfigDict, Any, int]:
  """(config saved with the checkpoint, state, step) of checkpoint `step` (default: the latest) of a run.

  `template_fn(config)` builds a state of the right structure (e.g. a fresh TrainState).
  Raises CheckpointError when the run has no such checkpoint.
  """
  ckpt = Checkpointer(workdir)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {workdir}")
    kind = SNAPSHOT_DIR if step in ckpt.snapshot_steps() else PREEMPTION_DIR
    meta_file = pathlib.Path(workdir) / kind / str(step) / "meta" / "metadata"
    if not meta_file.exists():
      raise CheckpointError(f"no checkpoint at step {step} in {workdir}")
    config = configs_util.with_defaults(json.loads(meta_file.read_text())["config"])
    state, _ = ckpt.restore(step, template_fn(config), kind=kind)
  finally:
    ckpt.close()
  return config, state, step
