"""The FD-MNIST feature network: a small MNIST classifier whose penultimate layer replaces Inception.

Inception-v3 was trained on ImageNet photographs; on 28x28 gray digits its features say little. The
"FD-MNIST" Frechet distance is the Frechet distance (`stats.frechet_distance`) between the 128-d
penultimate features of this classifier on two image sets, and its 10 class logits give a
classifier Inception score (`stats.inception_score`, at most 10). The network is trained by
`scripts/train_fd_classifier.py` on the MNIST training split; its weights are not shipped.

Network: [B, 28, 28, 1] in [0, 1] -> conv3x3(32)-ReLU-maxpool2 -> conv3x3(64)-ReLU-maxpool2 ->
dense(128)-ReLU (features) -> dense(10) (logits).
"""
from __future__ import annotations

import pathlib
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

IMAGE_SHAPE = (28, 28, 1)
FEATURE_DIM = 128
NUM_CLASSES = 10


class MnistFeatureNet(nn.Module):
  """(features [B, 128], logits [B, 10]) of images [B, 28, 28, 1] in [0, 1]."""

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = images.astype(jnp.float32) - 0.5
    for features in (32, 64):
      x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3))(x)), (2, 2), strides=(2, 2))
    features = nn.relu(nn.Dense(FEATURE_DIM)(x.reshape(len(x), -1)))
    return features, nn.Dense(NUM_CLASSES)(features)


def init_params(rng: jax.Array) -> dict:
  return MnistFeatureNet().init(rng, jnp.zeros((1, *IMAGE_SHAPE)))["params"]


def cross_entropy(params: dict, images: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean -log softmax(logits)[label]."""
  _, logits = MnistFeatureNet().apply({"params": params}, images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _batches(rng: np.random.Generator, num_examples: int, batch_size: int) -> Iterator[np.ndarray]:
  """Index batches of reshuffled epochs, endlessly (the last partial batch of an epoch is dropped)."""
  while True:
    order = rng.permutation(num_examples)
    for start in range(0, num_examples - batch_size + 1, batch_size):
      yield order[start:start + batch_size]


def train(seed: int, images: np.ndarray, labels: np.ndarray, num_steps: int, batch_size: int = 128,
          learning_rate: float = 1e-3, progress: Callable[[int, float], None] | None = None) -> dict:
  """Params after `num_steps` Adam steps on the cross-entropy of images [N, 28, 28, 1] in [0, 1]."""
  if len(images) < batch_size:
    raise ValueError(f"{len(images)} training images are fewer than batch_size={batch_size}")
  optimizer = optax.adam(learning_rate)
  params = init_params(jax.random.key(seed))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(cross_entropy)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batches = _batches(np.random.default_rng(seed), len(images), batch_size)
  for k in range(num_steps):
    index = next(batches)
    params, opt_state, loss = step(params, opt_state, images[index], labels[index])
    if progress is not None:
      progress(k, float(loss))
  return params


@jax.jit
def apply(params: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(features [B, 128], logits [B, 10]) of images [B, 28, 28, 1] in [0, 1]."""
  if images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f"the FD-MNIST network takes images of shape {IMAGE_SHAPE}, got {images.shape[1:]}")
  return MnistFeatureNet().apply({"params": params}, images)


def accuracy(params: dict, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
  predictions = np.concatenate([np.argmax(apply(params, images[i:i + batch_size])[1], axis=1)
                                for i in range(0, len(images), batch_size)])
  return float(np.mean(predictions == labels))


def save_params(path: str | pathlib.Path, params: dict) -> None:
  """Writes params as an .npz keyed by '/'-joined paths ('Conv_0/kernel')."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  np.savez(path, **{key: np.asarray(value) for key, value in flat.items()})


def load_params(path: str | pathlib.Path) -> dict:
  """Params written by `save_params`; checks they fit MnistFeatureNet."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"FD-MNIST classifier weights {str(path)!r} do not exist; "
                            "train them with scripts/train_fd_classifier.py")
  with np.load(path) as data:
    params = traverse_util.unflatten_dict({key: jnp.asarray(value) for key, value in data.items()}, sep="/")
  expected = jax.tree.map(jnp.shape, jax.eval_shape(init_params, jax.random.key(0)))
  if jax.tree.map(jnp.shape, params) != expected:
    raise ValueError(f"{path} does not hold FD-MNIST classifier weights (scripts/train_fd_classifier.py)")
  return params
