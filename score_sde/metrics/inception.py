"""The FID Inception-v3 network in Flax, as pytorch-fid reproduces TensorFlow's 2015-12-05 graph.

FID, IS and KID are defined on this network: its 2048-d average-pool features (FID, KID) and its
1008 class logits (IS). It differs from torchvision's Inception-v3 in the blocks pytorch-fid patches:
the average pools of Mixed_5b-d (FIDInceptionA), Mixed_6b-e (FIDInceptionC) and Mixed_7b
(FIDInceptionE_1) exclude padded zeros from the mean, and Mixed_7c (FIDInceptionE_2) max-pools
instead. BatchNorm runs in inference mode with eps = 1e-3. Inputs are NHWC images in [0, 1],
resized to 299x299 bilinearly without antialiasing (torch `F.interpolate(..., align_corners=False)`)
and mapped to [-1, 1].

Module names equal the keys of pytorch-fid's state dict (`Mixed_5b.branch1x1.conv.weight`), so
`variables_from_state_dict` maps its weight file `pt_inception-2015-12-05-6726825d.pth`, read into
{key: numpy array}, onto this module.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
NUM_CLASSES = 1008
FEATURE_DIM = 2048


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else value


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""
  features: int
  kernel_size: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average over the unpadded neighbours (TensorFlow's, `count_include_pad=False`)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """Mixed_5b-d (FIDInceptionA): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, 1, name="branch1x1")(x)
    b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e (FIDInceptionC): 1x1 | factorized 7x7 | double factorized 7x7 | avgpool-1x1."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name="branch1x1")(x)
    b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1, average pool) and Mixed_7c (FIDInceptionE_2, max pool)."""
  pool: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(320, 1, name="branch1x1")(x)
    b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    bp = BasicConv2d(192, 1, name="branch_pool")(self.pool(x))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
  """Bilinear resize of NHWC images to size x size with half-pixel centres and no antialiasing,
  i.e. torch `F.interpolate(mode="bilinear", align_corners=False)` (which also does not antialias)."""
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "linear", antialias=False)


class FIDInceptionV3(nn.Module):
  """(2048-d pool features, 1008 logits) of NHWC images in [0, 1]; pytorch-fid's InceptionV3 (block 3).

  `resize_input=False` feeds the images at their own size (at least 75x75), as pytorch-fid's flag does.
  """
  resize_input: bool = True

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = images.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x, INPUT_SIZE)
    x = 2 * x - 1
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(_avg_pool_3x3, name="Mixed_7b")(x)
    x = InceptionE(_max_pool_3x3, name="Mixed_7c")(x)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, name="fc")(features)
    return features, logits


# Flax leaf -> (state-dict suffix, array transform from torch layout to Flax layout).
_LEAVES: dict[tuple[str, str], tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    ("params", "kernel"): ("weight", lambda w: np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w.T),
    ("params", "scale"): ("weight", lambda w: w),
    ("params", "bias"): ("bias", lambda w: w),
    ("batch_stats", "mean"): ("running_mean", lambda w: w),
    ("batch_stats", "var"): ("running_var", lambda w: w),
}
# State-dict entries with no Flax counterpart (BatchNorm's update counter).
IGNORED_SUFFIXES = ("num_batches_tracked",)


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """The state-dict key of the Flax variable `collection`/`path` ('Mixed_5b.branch1x1.conv.weight')."""
  suffix, _ = _LEAVES[(collection, path[-1])]
  return ".".join((*path[:-1], suffix))


@functools.cache
def variable_shapes() -> dict[tuple[str, tuple[str, ...]], tuple[int, ...]]:
  """(collection, path) -> shape of every variable of FIDInceptionV3."""
  shapes = jax.eval_shape(FIDInceptionV3(resize_input=False).init, jax.random.key(0),
                          jnp.zeros((1, 75, 75, 3)))
  return {(collection, path): leaf.shape for collection, tree in shapes.items()
          for path, leaf in traverse_util.flatten_dict(tree).items()}


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """Every state-dict key the network needs, with its shape in torch layout."""
  out = {}
  for (collection, path), shape in variable_shapes().items():
    if len(shape) == 4:
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif len(shape) == 2:
      shape = shape[::-1]
    out[torch_key(collection, path)] = shape
  return out


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Flax variables {'params', 'batch_stats'} of FIDInceptionV3 from pytorch-fid's state dict.

  Raises ValueError naming missing, unexpected or misshapen entries.
  """
  expected = state_dict_shapes()
  unexpected = sorted(k for k in state_dict if k not in expected and not k.endswith(IGNORED_SUFFIXES))
  missing = sorted(k for k in expected if k not in state_dict)
  if missing or unexpected:
    raise ValueError(f"not an FID Inception state dict: missing {missing[:5]} ({len(missing)}), "
                     f"unexpected {unexpected[:5]} ({len(unexpected)})")
  flat = {}
  for (collection, path), shape in variable_shapes().items():
    key = torch_key(collection, path)
    value = np.asarray(state_dict[key], np.float32)
    if value.shape != expected[key]:
      raise ValueError(f"state dict entry {key} has shape {value.shape}, expected {expected[key]}")
    flat[(collection, *path)] = jnp.asarray(_LEAVES[(collection, path[-1])][1](value))
  return traverse_util.unflatten_dict(flat)


@functools.partial(jax.jit, static_argnames="resize_input")
def apply(variables: dict, images: jax.Array, resize_input: bool = True) -> tuple[jax.Array, jax.Array]:
  """(pool features [B, 2048], logits [B, 1008]) of images [B, H, W, 3] in [0, 1].

  Gray images ([B, H, W, 1]) are repeated to three channels first.
  """
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  return FIDInceptionV3(resize_input=resize_input).apply(variables, images)
