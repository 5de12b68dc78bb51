"""Feature networks by name: weights file -> jitted images [B, H, W, C] in [0, 1] -> (features, logits).

"inception": the FID Inception-v3 (2048-d pool features, 1008 logits) with pytorch-fid's weight file
`pt_inception-2015-12-05-6726825d.pth` (or an .npz of the same state-dict keys);
"fd_mnist": the MNIST classifier of scripts/train_fd_classifier.py (128-d features, 10 logits).
"""
from __future__ import annotations

import pathlib
from typing import Callable

import jax
import numpy as np

from score_sde.metrics import inception, mnist

FeatureFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{key: array} of a PyTorch state dict: an .npz of its entries, or the .pth itself (torch-free reader)."""
  path = pathlib.Path(path)
  if path.suffix == ".npz":
    with np.load(path) as data:
      return dict(data)
  from score_sde import convert  # pylint: disable=import-outside-toplevel  (the .pth reader)
  return {key: np.asarray(value) for key, value in convert.load_pth(path).items()}


def load_inception(weights: str | None) -> FeatureFn:
  if not weights:
    raise ValueError(f"the FID Inception network needs its weights: download {inception.FID_WEIGHTS_URL} "
                     "and pass the file with --inception_weights")
  if not pathlib.Path(weights).exists():
    raise FileNotFoundError(f"Inception weights {weights!r} do not exist; download {inception.FID_WEIGHTS_URL}")
  return inception.get_feature_fn(inception.variables_from_state_dict(load_state_dict(weights)))


def load_fd_mnist(weights: str | None) -> FeatureFn:
  if not weights:
    raise ValueError("the FD-MNIST network needs the weights written by scripts/train_fd_classifier.py "
                     "(pass them with --fd_mnist_weights)")
  return mnist.get_feature_fn(mnist.load_params(weights))


FEATURE_NETWORKS: dict[str, Callable[[str | None], FeatureFn]] = {
    "inception": load_inception,
    "fd_mnist": load_fd_mnist,
}


def get_feature_fn(name: str, weights: str | None) -> FeatureFn:
  """The feature function of network `name` with the weights file `weights`."""
  if name not in FEATURE_NETWORKS:
    raise ValueError(f"unknown feature network {name!r}; choose from {sorted(FEATURE_NETWORKS)}")
  return FEATURE_NETWORKS[name](weights)
