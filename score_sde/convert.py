"""Released score_sde (flax msgpack) and score_sde_pytorch (`.pth`) checkpoints -> parameters of our networks.

A score_sde_pytorch checkpoint is `{'model': state_dict, 'ema': {'shadow_params': [...]}, 'optimizer',
'step'}`, the model wrapped in DataParallel (`module.` keys). Its networks register their layers in
the order they run them, as ours create theirs, so the i-th parameter tensor of the reference
state dict is the i-th parameter of our network in execution order (`parameter_order`). Each pair is
checked for kind and shape and re-laid out:
  conv weight OIHW -> HWIO kernel; Linear weight [out, in] -> Dense kernel [in, out];
  NIN W [in, out] -> Dense kernel as is; GroupNorm weight/bias -> scale/bias; Fourier W as is.
EMA `shadow_params` follow `model.parameters()` but skip parameters with requires_grad=False
(NCSN++'s Fourier W), which then come from the model weights.
Non-parameter buffers of the reference (its `sigmas` table) are not parameters of ours and are skipped.

A score_sde checkpoint (`checkpoint_<N>`, flax's msgpack of its training State) holds
`optimizer.target` (params), `params_ema`, `model_state` and `step`, params named by flax.linen
(`ResnetBlockBigGANpp_3/Conv_1/kernel`), kernels already HWIO. Names are numbered per layer type
within each parent in creation order, so running through our layers in execution order and
matching per reference type (`_REFERENCE_TYPES`; our 1x1 Dense on images is its NIN, our
Normalization wrapper is absent there, its NCSNv2 wrappers are absent here) gives each of our
parameters its reference name (`_flax_names`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_sde import checkpoint, datasets, losses, models
from score_sde.torch_pickle import PthError, load_pth
from score_sde.train_state import TrainState

__all__ = ["ConversionError", "PthError", "ParamSlot", "convert_flax", "convert_pytorch", "convert_to_workdir",
           "load_checkpoint", "load_msgpack", "load_pth", "parameter_order"]

BUFFERS = ("sigmas",)  # reference buffers that are not parameters
# Our parameter names in the reference's registration order within one layer.
_LEAF_ORDER = ("W", "kernel", "scale", "alpha", "gamma", "beta", "embedding", "bias")
# Parameters that are not trained (requires_grad=False in the reference, so absent from its EMA).
_FROZEN_MODULES = ("GaussianFourierProjection",)


class ConversionError(ValueError):
  """A checkpoint that does not fit the configured network (one-line message naming the tensor)."""


@dataclasses.dataclass(frozen=True)
class ParamSlot:
  """One parameter of our network: its path in the params tree, shape and owning layer type."""

  path: tuple[str, ...]
  shape: tuple[int, ...]
  layer: str

  @property
  def name(self) -> str:
    return "/".join(self.path)

  @property
  def trainable(self) -> bool:
    return self.layer not in _FROZEN_MODULES


def _trace(model: nn.Module, x_shape: tuple[int, ...]) -> tuple[list[tuple[tuple[str, ...], str, int]], dict]:
  """([(module path, layer type, input ndim)] in first-call order, parameter shapes) of `model`."""
  calls: list[tuple[tuple[str, ...], str, int]] = []
  seen: set[tuple[str, ...]] = set()

  def record(next_fun, args, kwargs, context):
    path = tuple(context.module.scope.path)
    if context.method_name == "__call__" and path not in seen:
      seen.add(path)
      calls.append((path, type(context.module).__name__, getattr(args[0], "ndim", 0) if args else 0))
    return next_fun(*args, **kwargs)

  x = jnp.zeros((1,) + tuple(x_shape), jnp.float32)
  with nn.intercept_methods(record):
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                                               x, jnp.ones((1,), jnp.float32), train=False))["params"]
  return calls, shapes


def _subtree(tree: dict, path: tuple[str, ...]) -> dict:
  for key in path:
    tree = tree.get(key, {}) if isinstance(tree, dict) else {}
  return tree


def parameter_order(model: nn.Module, x_shape: tuple[int, ...]) -> list[ParamSlot]:
  """Our network's parameters in the order its layers first run (on a [1, *x_shape] input)."""
  calls, shapes = _trace(model, x_shape)
  slots = []
  for path, layer, _ in calls:
    node = _subtree(shapes, path)  # layers without parameters (dropout, resampling) are empty
    own = sorted((k for k, v in node.items() if not isinstance(v, dict)), key=_LEAF_ORDER.index)
    slots.extend(ParamSlot(path + (k,), tuple(node[k].shape), layer) for k in own)
  total = len(jax.tree.leaves(shapes))
  if len(slots) != total:
    raise AssertionError(f"execution order covers {len(slots)} of {total} parameters")
  return slots


def _to_ours(slot: ParamSlot, key: str, value: np.ndarray) -> np.ndarray:
  """The reference tensor `key` laid out as our parameter `slot` (see the module docstring)."""
  leaf = slot.path[-1]
  if leaf == "kernel" and slot.layer == "Conv" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if leaf == "kernel" and slot.layer == "Dense" and value.ndim == 2:
    return value if key.endswith(".W") else value.T
  return value


def _fill(slots: list[ParamSlot], named: list[tuple[str, np.ndarray]], what: str, *, layout: bool = True) -> dict:
  """Nested params dict from reference tensors paired in order with `slots`; errors name the tensor.

  `layout`: re-lay out PyTorch tensors (`_to_ours`); flax tensors are already ours.
  """
  params: dict = {}
  for i, slot in enumerate(slots):
    if i >= len(named):
      raise ConversionError(f"{what} has {len(named)} parameter tensors, the configured network {len(slots)}: "
                            f"nothing for {slot.name} {slot.shape}; is it the right config?")
    key, value = named[i]
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
      raise ConversionError(f"{what} tensor {key} has dtype {value.dtype}, expected floating point")
    converted = _to_ours(slot, key, value) if layout else value
    if converted.shape != slot.shape:
      raise ConversionError(f"{what} tensor {key} {tuple(value.shape)} does not fit {slot.name} {slot.shape} "
                            "(first mismatch; is it the right config?)")
    node = params
    for k in slot.path[:-1]:
      node = node.setdefault(k, {})
    node[slot.path[-1]] = jnp.asarray(converted, jnp.float32)
  if len(named) > len(slots):
    raise ConversionError(f"{what} has {len(named) - len(slots)} more parameter tensors than the configured "
                          f"network, the first extra one {named[len(slots)][0]}; is it the right config?")
  return params


def _model_tensors(checkpoint: dict) -> list[tuple[str, np.ndarray]]:
  if "model" not in checkpoint or not isinstance(checkpoint["model"], dict):
    raise ConversionError(f"not a score_sde_pytorch checkpoint: no 'model' state dict (keys: {sorted(map(str, checkpoint))})")
  named = []
  for key, value in checkpoint["model"].items():
    if not isinstance(value, np.ndarray):
      raise ConversionError(f"model entry {key} is a {type(value).__name__}, not a tensor")
    if key.split(".")[-1] not in BUFFERS:
      named.append((key, value))
  return named


def convert_pytorch(checkpoint: dict, model: nn.Module, x_shape: tuple[int, ...]) -> tuple[dict, dict, int]:
  """(params, ema_params, step) of our `model` from a loaded score_sde_pytorch checkpoint dict."""
  slots = parameter_order(model, x_shape)
  named = _model_tensors(checkpoint)
  params = _fill(slots, named, "model")
  ema = checkpoint.get("ema")
  if not isinstance(ema, dict) or not isinstance(ema.get("shadow_params"), (list, tuple)):
    raise ConversionError("not a score_sde_pytorch checkpoint: no 'ema' dict with 'shadow_params'")
  trainable = [(i, s) for i, s in enumerate(slots) if s.trainable]
  shadow = list(ema["shadow_params"])
  if len(shadow) != len(trainable):
    raise ConversionError(f"ema has {len(shadow)} shadow parameters, the configured network {len(trainable)} "
                          "trainable ones; is it the right config?")
  ema_named = list(named[:len(slots)])
  for (i, _), value in zip(trainable, shadow):
    ema_named[i] = (named[i][0], value)
  ema_params = _fill(slots, ema_named, "ema")
  step = checkpoint.get("step", 0)
  if not isinstance(step, (int, np.integer)):
    raise ConversionError(f"checkpoint step is a {type(step).__name__}, not an int")
  return params, ema_params, int(step)



# Our layer type -> the score_sde (flax) layer types it may be, tried in order; None: absent there.
_REFERENCE_TYPES: dict[str, tuple[str, ...] | None] = {
    "Normalization": None,
    "ResnetBlockBigGAN": ("ResnetBlockBigGANpp",),
    "ResnetBlockDDPM": ("ResnetBlockDDPMpp", "ResnetBlockDDPM"),
    "AttnBlock": ("AttnBlockpp", "AttnBlock"),
    "Conv": ("Conv", "Conv2d"),  # Conv2d: the fused FIR resampling conv
    "InstanceNormPlus": ("InstanceNorm2dPlus",),
}
# Reference layer type -> its names of our parameter leaves.
_LEAF_NAMES = {"NIN": {"kernel": "W", "bias": "b"}, "Conv2d": {"kernel": "weight"}}
# Reference layers that only wrap one of its convolutions (or several, MSFBlock) that are ours directly.
_WRAPPERS = ("ConvMeanPool", "MeanPoolConv", "MSFBlock")


def _reference_types(layer: str, input_ndim: int) -> tuple[str, ...] | None:
  if layer == "Dense":
    return ("NIN",) if input_ndim == 4 else ("Dense",)
  return _REFERENCE_TYPES.get(layer, (layer,))


def _layer_type(name: str) -> tuple[str, int]:
  """'ConvMeanPool_1' -> ('ConvMeanPool', 1)."""
  kind, _, index = name.rpartition("_")
  return (kind, int(index)) if index.isdigit() else (name, -1)


def _reference_candidates(present: dict, types: tuple[str, ...]) -> list[tuple[str, ...]]:
  """The reference's layers of `types` under one parent: direct children, then inside its wrappers
  (NCSNv2's ConvMeanPool / MeanPoolConv / MSFBlock hold convolutions that are ours directly), by index."""
  found = []
  for rank, kind in enumerate(types):
    found += [((rank, 0) + (_layer_type(name)[1],), (name,)) for name in present
              if isinstance(present[name], dict) and _layer_type(name)[0] == kind]
    found += [((rank, 1) + (_layer_type(w)[1], _layer_type(name)[1]), (w, name)) for w in present
              if _layer_type(w)[0] in _WRAPPERS and isinstance(present[w], dict)
              for name in present[w] if _layer_type(name)[0] == kind]
  return [path for _, path in sorted(found)]


def _fits(ours: dict, theirs: dict, renames: dict) -> bool:
  """Whether a reference layer's own tensors have the sizes of our layer's."""
  own = {k: v for k, v in ours.items() if not isinstance(v, dict)}
  return all(renames.get(k, k) in theirs and np.size(theirs[renames.get(k, k)]) == int(np.prod(v.shape))
             for k, v in own.items())


def _flax_names(model: nn.Module, x_shape: tuple[int, ...], reference: dict) -> dict[tuple[str, ...], tuple[str, ...]]:
  """Our parameter path -> the reference's.

  Our layers, in execution order, take the first unused reference layer of a corresponding type
  (`_REFERENCE_TYPES`) under the corresponding parent whose tensors have the sizes of ours; same
  types are numbered in creation order there as here, and a size check sorts out layers that the
  two create in different orders (NCSNv2's downsampling shortcut).
  """
  calls, shapes = _trace(model, x_shape)
  module_names: dict[tuple[str, ...], tuple[str, ...]] = {(): ()}
  used: set[tuple[str, ...]] = set()
  for path, layer, ndim in calls:
    if not path:
      continue
    parent = module_names[path[:-1]]
    candidates = _reference_types(layer, ndim)
    if candidates is None:
      module_names[path] = parent
      continue
    ours = _subtree(shapes, path)
    for relative in _reference_candidates(_subtree(reference, parent), candidates):
      name = parent + relative
      if name not in used and _fits(ours, _subtree(reference, name), _LEAF_NAMES.get(_layer_type(name[-1])[0], {})):
        used.add(name)
        module_names[path] = name
        break
    else:
      if jax.tree.leaves(ours):
        raise ConversionError(f"the checkpoint has no layer ({' or '.join(candidates)}) with the tensors of our "
                              f"{'/'.join(path)} in {'/'.join(parent) or 'the top level'}; is it the right config?")
      module_names[path] = parent + (f"{layer}_unused",)
  names = {}
  for slot in parameter_order(model, x_shape):
    module = module_names[slot.path[:-1]]
    renames = _LEAF_NAMES.get(_layer_type(module[-1])[0], {}) if module else {}
    names[slot.path] = module + (renames.get(slot.path[-1], slot.path[-1]),)
  return names


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = value
  return out


def _flax_params(tree: Any, names: dict, slots: list[ParamSlot], what: str) -> dict:
  """Our params from a reference flax params tree: renamed, reshaped (InstanceNorm++ [1,1,1,C] -> [C])."""
  if not isinstance(tree, dict):
    raise ConversionError(f"{what} is a {type(tree).__name__}, not a parameter tree")
  flat = _flatten(tree)
  used = set()
  named = []
  for slot in slots:
    ref_path = names[slot.path]
    if ref_path not in flat:
      raise ConversionError(f"{what} has no {'/'.join(ref_path)} for our {slot.name} {slot.shape}; "
                            "is it the right config?")
    value = np.asarray(flat[ref_path])
    if value.ndim == 4 and slot.layer == "InstanceNormPlus" and value.size == int(np.prod(slot.shape)):
      value = value.reshape(slot.shape)
    used.add(ref_path)
    named.append(("/".join(ref_path), value))
  extra = [p for p in flat if p not in used]
  if extra:
    raise ConversionError(f"{what} has {len(extra)} tensors the configured network lacks, the first "
                          f"{'/'.join(extra[0])}; is it the right config?")
  return _fill(slots, named, what, layout=False)


def convert_flax(state: dict, model: nn.Module, x_shape: tuple[int, ...]) -> tuple[dict, dict, int]:
  """(params, ema_params, step) of our `model` from a restored score_sde (flax) training State dict."""
  try:
    params, ema = state["optimizer"]["target"], state["params_ema"]
  except (KeyError, TypeError) as e:
    raise ConversionError("not a score_sde checkpoint: no optimizer.target and params_ema "
                          f"(top-level keys: {sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__})") from e
  if state.get("model_state"):
    raise ConversionError(f"the checkpoint has model_state {sorted(state['model_state'])}, which our networks lack")
  slots = parameter_order(model, x_shape)
  names = _flax_names(model, x_shape, params)
  step = state.get("step", 0)
  step = int(np.asarray(step)) if np.ndim(step) == 0 else step
  if not isinstance(step, int):
    raise ConversionError(f"checkpoint step is a {type(step).__name__}, not an int")
  return _flax_params(params, names, slots, "optimizer.target"), _flax_params(ema, names, slots, "params_ema"), step


def load_msgpack(path: str | pathlib.Path) -> dict:
  """The state dict of a flax msgpack checkpoint (`flax.training.checkpoints`' legacy format); no code runs."""
  from flax import serialization  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no checkpoint file {path}")
  try:
    state = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises assorted errors for truncated or foreign data
    raise ConversionError(f"{path} is not a readable flax msgpack checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:80] if str(e) else ''})") from e
  if not isinstance(state, dict):
    raise ConversionError(f"{path} holds a {type(state).__name__}, not a checkpoint state dict")
  return state


_PTH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a")  # torch's zip format; a legacy torch.save's first pickle


def load_checkpoint(path: str | pathlib.Path, model: nn.Module, x_shape: tuple[int, ...]) -> tuple[dict, dict, int]:
  """(params, ema_params, step) from a score_sde_pytorch `.pth` or a score_sde msgpack, told apart by content."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no checkpoint file {path}")
  with open(path, "rb") as f:
    head = f.read(4)
  if head.startswith(_PTH_MAGIC):
    return convert_pytorch(load_pth(path), model, x_shape)
  return convert_flax(load_msgpack(path), model, x_shape)


def convert_to_workdir(source: str | pathlib.Path, config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> int:
  """Converts `source` for `config` and writes `workdir`; returns the step. Writes nothing on failure.

  The snapshot is first written to a sibling temporary directory, which is renamed to `workdir`
  only when complete.
  """
  workdir = pathlib.Path(workdir)
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise FileExistsError(f"--workdir {workdir} exists and is not empty; give a new directory")
  model = models.get_model(config)
  params, ema_params, step = load_checkpoint(source, model, datasets.data_shape(config))
  state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, ema_params=ema_params,
                     opt_state=losses.get_optimizer(config).init(params))
  meta = {"seed": config.seed, "config": json.loads(config.to_json_best_effort()), "step": step,
          "converted_from": str(pathlib.Path(source).resolve())}
  workdir.parent.mkdir(parents=True, exist_ok=True)
  staging = workdir.parent / f".{workdir.name}.converting-{os.getpid()}"
  staging.mkdir()
  try:
    ckpt = checkpoint.Checkpointer(staging)
    try:
      ckpt.save(step, state, meta, snapshot=True)
    finally:
      ckpt.close()
    if workdir.exists():
      workdir.rmdir()
    staging.rename(workdir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return step
