"""Sample-quality statistics on feature vectors: Frechet distance, Inception Score, KID.

Everything here is float64 NumPy on the host; features arrive batch by batch from any network
(`score_sde.metrics.inception` for FID/IS/KID, `score_sde.metrics.mnist` for FD-MNIST).

- `FeatureStats`: streaming mean and covariance from running float64 sums (count, sum x, sum x x^T),
  so 50k feature vectors never sit in memory; partial statistics (per batch, per process) merge by
  adding their sums.
- `frechet_distance`: d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) (Heusel et al. 2017),
  the formula of pytorch-fid's `calculate_frechet_distance`.
- `ClassifierScoreStats` / `inception_score`: IS = exp(E_x KL(p(y|x) || p(y))) over splits, streaming.
- `FeatureBank` / `kernel_distance`: KID, the unbiased MMD^2 with the kernel (x.y / d + 1)^3 averaged
  over random subsets (Binkowski et al. 2018), as torch-fidelity computes it.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Running float64 sums of feature vectors: n, sum_i x_i, sum_i x_i x_i^T."""
  count: int
  total: np.ndarray
  outer: np.ndarray

  @classmethod
  def empty(cls, dim: int) -> FeatureStats:
    return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

  @classmethod
  def of(cls, features: np.ndarray) -> FeatureStats:
    """Sums of a batch of features [N, D]."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    return cls(len(x), x.sum(axis=0), x.T @ x)

  def update(self, features: np.ndarray) -> FeatureStats:
    """These statistics plus a batch of features [N, D]."""
    return self.merge(FeatureStats.of(features))

  def merge(self, other: FeatureStats) -> FeatureStats:
    """The statistics of the union of both sets (sums add)."""
    return FeatureStats(self.count + other.count, self.total + other.total, self.outer + other.outer)

  @property
  def mean(self) -> np.ndarray:
    return self.total / self.count

  @property
  def covariance(self) -> np.ndarray:
    """Unbiased sample covariance (sum x x^T - n mu mu^T) / (n - 1), as np.cov(x, rowvar=False)."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
    mu = self.mean
    return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
  eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr (S_1 S_2)^{1/2} = ||S_1^{1/2} S_2^{1/2}||_* (the sum of singular values).

  S_1 S_2 is similar to the symmetric PSD matrix S_1^{1/2} S_2 S_1^{1/2} = M M^T with
  M = S_1^{1/2} S_2^{1/2}, so its eigenvalues are real, >= 0 and the squares of M's singular values.
  This avoids the complex parts and singular-product fallbacks of `scipy.linalg.sqrtm` on the
  non-symmetric product (pytorch-fid drops imaginary parts below 1e-3 and, when the product is
  singular, adds 1e-6 I to both covariances), and singular values near 0 stay near 0 instead of
  becoming square roots of round-off.
  """
  product = _psd_sqrt(np.asarray(sigma1, np.float64)) @ _psd_sqrt(np.asarray(sigma2, np.float64))
  return float(np.linalg.svd(product, compute_uv=False).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """d^2 = |mu_1 - mu_2|^2 + Tr S_1 + Tr S_2 - 2 Tr (S_1 S_2)^{1/2} between N(mu_1, S_1) and N(mu_2, S_2)."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"mean/covariance shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_of(stats1: FeatureStats, stats2: FeatureStats) -> float:
  """Frechet distance between the Gaussians fitted to two sets of features."""
  return frechet_distance(stats1.mean, stats1.covariance, stats2.mean, stats2.covariance)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def split_of(num_samples: int, splits: int, shuffle_seed: int | None) -> np.ndarray:
  """Split index [N] of every sample: contiguous blocks [i N / s, (i + 1) N / s), after the permutation
  `RandomState(shuffle_seed).permutation(N)` when a seed is given (torch-fidelity: seed 2020)."""
  split_of_position = np.searchsorted(np.arange(1, splits + 1) * num_samples // splits, np.arange(num_samples),
                                      side="right")
  if shuffle_seed is None:
    return split_of_position
  permutation = np.random.RandomState(shuffle_seed).permutation(num_samples)
  split = np.empty(num_samples, np.int64)
  split[permutation] = split_of_position  # sample permutation[j] sits at position j
  return split


@dataclasses.dataclass(frozen=True)
class ClassifierScoreStats:
  """Streaming Inception Score of `num_samples` predictions announced up front.

  Per split s: n_s, sum_x p(y|x) and sum_x sum_y p(y|x) log p(y|x); then
  log IS_s = (1 / n_s) sum_x sum_y p log p - sum_y q_s log q_s with q_s = (1 / n_s) sum_x p(y|x),
  which is (1 / n_s) sum_x KL(p(y|x) || q_s). Which split a sample falls in depends only on its index.
  """
  split: np.ndarray
  count: np.ndarray
  prob_sum: np.ndarray
  neg_entropy_sum: np.ndarray
  seen: int = 0

  @classmethod
  def empty(cls, num_samples: int, num_classes: int, splits: int = 1,
            shuffle_seed: int | None = None) -> ClassifierScoreStats:
    if not 1 <= splits <= num_samples:
      raise ValueError(f"splits={splits} must lie in [1, num_samples={num_samples}]")
    return cls(split_of(num_samples, splits, shuffle_seed), np.zeros(splits, np.int64),
               np.zeros((splits, num_classes), np.float64), np.zeros(splits, np.float64))

  def update(self, logits: np.ndarray) -> ClassifierScoreStats:
    """Adds the next len(logits) samples' class logits [B, C] (samples self.seen, self.seen + 1, ...)."""
    if self.seen + len(logits) > len(self.split):
      raise ValueError(f"{self.seen + len(logits)} samples exceed the announced {len(self.split)}")
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    split = self.split[self.seen:self.seen + len(logits)]
    count, prob_sum, neg_entropy_sum = self.count.copy(), self.prob_sum.copy(), self.neg_entropy_sum.copy()
    np.add.at(count, split, 1)
    np.add.at(prob_sum, split, p)
    np.add.at(neg_entropy_sum, split, (p * log_p).sum(axis=1))
    return ClassifierScoreStats(self.split, count, prob_sum, neg_entropy_sum, self.seen + len(logits))

  def scores(self) -> np.ndarray:
    """IS of every split."""
    if self.seen != len(self.split):
      raise ValueError(f"got {self.seen} of the announced {len(self.split)} samples")
    q = self.prob_sum / self.count[:, None]
    q_log_q = np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0).sum(axis=1)
    return np.exp(self.neg_entropy_sum / self.count - q_log_q)


def inception_score(logits: np.ndarray, splits: int = 1, shuffle_seed: int | None = None) -> tuple[float, float]:
  """(mean, std) over splits of IS = exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax(logits).

  splits=1, no shuffle: TF-GAN's `classifier_score_from_logits`, which score_sde's evaluation uses.
  splits=10, shuffle_seed=2020: torch-fidelity's `isc` (which feeds it logits without the fc bias);
  splits=10 without shuffle: the original OpenAI code (contiguous splits).
  """
  stats = ClassifierScoreStats.empty(len(logits), np.shape(logits)[1], splits, shuffle_seed).update(logits)
  scores = stats.scores()
  return float(scores.mean()), float(scores.std())


@dataclasses.dataclass(frozen=True)
class FeatureBank:
  """The first `capacity` feature vectors seen, kept for KID (which needs the vectors, not sums).

  Generated samples are i.i.d., so their first k features are a uniform random subset of any longer
  run; torch-fidelity keeps all features, which equals capacity >= num_samples.
  """
  capacity: int
  features: np.ndarray

  @classmethod
  def empty(cls, capacity: int, dim: int) -> FeatureBank:
    return cls(capacity, np.zeros((0, dim), np.float32))

  def update(self, features: np.ndarray) -> FeatureBank:
    room = self.capacity - len(self.features)
    if room <= 0:
      return self
    kept = np.asarray(features, np.float32).reshape(len(features), -1)[:room]
    return FeatureBank(self.capacity, np.concatenate([self.features, kept]))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
  """k(x, y) = (gamma x.y + coef0)^degree, gamma = 1 / d by default."""
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  base = x @ y.T * gamma + coef0
  kernel = base.copy()
  for _ in range(degree - 1):  # repeated products: several times faster than a float power
    kernel *= base
  return kernel


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
  """MMD^2_u = sum_{i!=j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m^2."""
  m = len(k_xx)
  off_diagonal = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
  return float(off_diagonal / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kernel_distance(features1: np.ndarray, features2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                    degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                    seed: int = 2020) -> tuple[float, float]:
  """KID: (mean, std) of MMD^2_u over `subsets` random subsets of `subset_size` from each set.

  Subsets are drawn as torch-fidelity draws them (RandomState(seed); per subset, first
  `choice(n1, size, replace=False)` then `choice(n2, ...)`), so equal inputs give equal values;
  the kernel is evaluated in float64.
  """
  x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if min(len(x), len(y)) < subset_size:
    raise ValueError(f"KID subset_size={subset_size} exceeds the number of feature vectors "
                     f"({len(x)}, {len(y)}); lower the subset size or keep more features")
  kernel = functools.partial(polynomial_kernel, degree=degree, gamma=gamma, coef0=coef0)
  rng = np.random.RandomState(seed)
  mmds = np.zeros(subsets)
  for i in range(subsets):
    a = x[rng.choice(len(x), subset_size, replace=False)]
    b = y[rng.choice(len(y), subset_size, replace=False)]
    mmds[i] = mmd2_unbiased(kernel(a, a), kernel(a, b), kernel(b, b))
  return float(mmds.mean()), float(mmds.std())
