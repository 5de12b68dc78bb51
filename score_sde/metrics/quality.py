"""FID / IS / KID of a stream of (features, logits) batches against reference statistics in an .npz.

The reference file has pytorch-fid's layout (`mu` [D], `sigma` [D, D]), so its published dataset
statistics work as they are; `scripts/fid_stats.py` also stores `features` (the first K feature
vectors, for KID) and `num_examples`, which pytorch-fid's loader ignores.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from score_sde.metrics import stats


@dataclasses.dataclass(frozen=True)
class SampleStats:
  """Everything FID, IS and KID need from `num_samples` samples, accumulated batch by batch."""
  features: stats.FeatureStats
  scores: stats.ClassifierScoreStats
  bank: stats.FeatureBank

  @classmethod
  def empty(cls, num_samples: int, feature_dim: int, num_classes: int, *, is_splits: int = 1,
            is_shuffle_seed: int | None = None, kid_features: int = 10_000) -> SampleStats:
    return cls(stats.FeatureStats.empty(feature_dim),
               stats.ClassifierScoreStats.empty(num_samples, num_classes, is_splits, is_shuffle_seed),
               stats.FeatureBank.empty(kid_features, feature_dim))

  def update(self, features: np.ndarray, logits: np.ndarray) -> SampleStats:
    return SampleStats(self.features.update(features), self.scores.update(logits), self.bank.update(features))


def save_reference(path: str | pathlib.Path, features: stats.FeatureStats, bank: stats.FeatureBank) -> None:
  """Writes `mu`, `sigma` (pytorch-fid's layout), `features` (for KID) and `num_examples`."""
  np.savez(path, mu=features.mean, sigma=features.covariance, features=bank.features, num_examples=features.count)


def load_reference(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"reference statistics {str(path)!r} do not exist; write them with scripts/fid_stats.py")
  with np.load(path) as data:
    reference = dict(data)
  if "mu" not in reference or "sigma" not in reference:
    raise ValueError(f"{path} holds {sorted(reference)}; expected pytorch-fid's 'mu' and 'sigma'")
  return reference


def quality(sample: SampleStats, reference: dict[str, np.ndarray], *, kid_subsets: int = 100,
            kid_subset_size: int = 1000) -> dict:
  """{"fd", "inception_score", "kid"} of the samples against the reference.

  KID (torch-fidelity's subsets and kernel) needs the reference's `features`; it is None without
  them. Its subset size shrinks to the smaller number of kept feature vectors when that is below
  `kid_subset_size`, and the size used is reported.
  """
  if reference["mu"].shape != sample.features.mean.shape:
    raise ValueError(f"reference statistics of {reference['mu'].shape[0]}-d features do not match the "
                     f"{sample.features.mean.shape[0]}-d features of this feature network")
  scores = sample.scores.scores()
  result = {"fd": stats.frechet_distance(sample.features.mean, sample.features.covariance,
                                         reference["mu"], reference["sigma"]),
            "inception_score": {"mean": float(scores.mean()), "std": float(scores.std()), "splits": len(scores)},
            "kid": None}
  if "features" in reference and min(len(sample.bank.features), len(reference["features"])) >= 2:
    size = min(kid_subset_size, len(sample.bank.features), len(reference["features"]))
    mean, std = stats.kernel_distance(sample.bank.features, reference["features"], kid_subsets, size)
    result["kid"] = {"mean": mean, "std": std, "subsets": kid_subsets, "subset_size": size}
  return result
