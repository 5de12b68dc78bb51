"""Feature networks by name: weights file -> `FeatureNet`, images [B, H, W, C] in [0, 1] -> (features, logits).

"inception": the FID Inception-v3 (2048-d pool features, 1008 logits) with pytorch-fid's weight file
`pt_inception-2015-12-05-6726825d.pth` (or an .npz of the same state-dict keys);
"fd_mnist": the MNIST classifier of scripts/train_fd_classifier.py (128-d features, 10 logits).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import jax
import numpy as np

from score_sde.metrics import inception, mnist


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A pure `apply(params, images) -> (features, logits)` and its params.

  The params stay an argument (not constants baked into a compiled program), so a program that
  samples and extracts features takes them like the model's params.
  """
  apply: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
  params: Any

  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.apply(self.params, images)


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{key: array} of a PyTorch state dict: an .npz of its entries, or the .pth itself (torch-free reader)."""
  path = pathlib.Path(path)
  if path.suffix == ".npz":
    with np.load(path) as data:
      return dict(data)
  from score_sde import convert  # pylint: disable=import-outside-toplevel  (the .pth reader)
  return {key: np.asarray(value) for key, value in convert.load_pth(path).items()}


def load_inception(weights: str | None) -> FeatureNet:
  if not weights:
    raise ValueError(f"the FID Inception network needs its weights: download {inception.FID_WEIGHTS_URL} "
                     "and pass the file with --inception_weights")
  if not pathlib.Path(weights).exists():
    raise FileNotFoundError(f"Inception weights {weights!r} do not exist; download {inception.FID_WEIGHTS_URL}")
  return FeatureNet(inception.apply, inception.variables_from_state_dict(load_state_dict(weights)))


def load_fd_mnist(weights: str | None) -> FeatureNet:
  if not weights:
    raise ValueError("the FD-MNIST network needs the weights written by scripts/train_fd_classifier.py "
                     "(pass them with --fd_mnist_weights)")
  return FeatureNet(mnist.apply, mnist.load_params(weights))


FEATURE_NETWORKS: dict[str, Callable[[str | None], FeatureNet]] = {
    "inception": load_inception,
    "fd_mnist": load_fd_mnist,
}


def get_feature_net(name: str, weights: str | None) -> FeatureNet:
  """Feature network `name` with the weights file `weights`."""
  if name not in FEATURE_NETWORKS:
    raise ValueError(f"unknown feature network {name!r}; choose from {sorted(FEATURE_NETWORKS)}")
  return FEATURE_NETWORKS[name](weights)
