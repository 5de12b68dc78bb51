"""Released score_sde_pytorch (`.pth`) checkpoints -> parameters of our networks.

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
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.torch_pickle import PthError, load_pth

__all__ = ["ConversionError", "PthError", "ParamSlot", "convert_pytorch", "load_pth", "parameter_order"]

BUFFERS = ("sigmas",)  # reference buffers that are not parameters
# Our parameter names in the reference's registration order within one layer.
_LEAF_ORDER = ("W", "kernel", "scale", "embedding", "bias")
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


def parameter_order(model: nn.Module, x_shape: tuple[int, ...]) -> list[ParamSlot]:
  """Our network's parameters in the order its layers first run (on a [1, *x_shape] input)."""
  calls: list[tuple[tuple[str, ...], str]] = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      calls.append((tuple(context.module.scope.path), type(context.module).__name__))
    return next_fun(*args, **kwargs)

  x = jnp.zeros((1,) + tuple(x_shape), jnp.float32)
  with nn.intercept_methods(record):
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                                               x, jnp.ones((1,), jnp.float32), train=False))["params"]
  slots, seen = [], set()
  for path, layer in calls:
    if path in seen:
      continue
    seen.add(path)
    node = shapes
    for key in path:
      node = node.get(key, {})  # layers without parameters (dropout, resampling) are absent
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


def _fill(slots: list[ParamSlot], named: list[tuple[str, np.ndarray]], what: str) -> dict:
  """Nested params dict from reference tensors paired in order with `slots`; errors name the tensor."""
  params: dict = {}
  for i, slot in enumerate(slots):
    if i >= len(named):
      raise ConversionError(f"{what} has {len(named)} parameter tensors, the configured network {len(slots)}: "
                            f"nothing for {slot.name} {slot.shape}; is it the right config?")
    key, value = named[i]
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
      raise ConversionError(f"{what} tensor {key} has dtype {value.dtype}, expected floating point")
    converted = _to_ours(slot, key, value)
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

