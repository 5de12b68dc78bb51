"""FID / IS / KID against pytorch-fid and torch-fidelity (tests/fixtures/make_metrics_fixtures.py)."""
import pathlib
import sys

import numpy as np
import pytest

from score_sde.metrics import stats

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from metrics_inputs import feature_sets  # noqa: E402

REFERENCE = np.load(FIXTURES / "metrics_reference.npz")


def _gaussian(features):
  return np.mean(features, axis=0), np.cov(features, rowvar=False)


def test_frechet_distance_matches_pytorch_fid_and_torch_fidelity():
  x, y, few, _ = feature_sets()
  fid = stats.frechet_distance(*_gaussian(x), *_gaussian(y))
  np.testing.assert_allclose(fid, REFERENCE["fid_pytorch_fid"], rtol=1e-6)
  np.testing.assert_allclose(fid, REFERENCE["fid_torch_fidelity"], rtol=1e-6)
  # 40 vectors in 64 dimensions: a singular covariance, where pytorch-fid's sqrtm takes complex detours.
  np.testing.assert_allclose(stats.frechet_distance(*_gaussian(few), *_gaussian(y)), REFERENCE["fid_pytorch_fid_few"],
                             rtol=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_symmetric():
  x, y, few, _ = feature_sets()
  assert abs(stats.frechet_distance(*_gaussian(x), *_gaussian(x))) < 1e-9
  assert abs(stats.frechet_distance(*_gaussian(few), *_gaussian(few))) < 1e-9
  np.testing.assert_allclose(stats.frechet_distance(*_gaussian(x), *_gaussian(y)),
                             stats.frechet_distance(*_gaussian(y), *_gaussian(x)), rtol=1e-10)


def test_frechet_distance_of_gaussians_in_closed_form():
  # Commuting covariances: Tr (S1 S2)^{1/2} = sum sqrt(s1_i s2_i).
  s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
  expected = 5.0 + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
  assert stats.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_streaming_feature_stats_equal_numpy_and_merge():
  x, _, _, _ = feature_sets()
  streamed = stats.FeatureStats.empty(x.shape[1])
  for batch in np.array_split(x, 7):
    streamed = streamed.update(batch)
  merged = stats.FeatureStats.of(x[:500]).merge(stats.FeatureStats.of(x[500:]))
  for s in (streamed, merged):
    assert s.count == len(x)
    np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_inception_score_matches_torch_fidelity():
  *_, logits = feature_sets()
  np.testing.assert_allclose(stats.inception_score(logits, splits=10, shuffle_seed=2020),
                             REFERENCE["isc_torch_fidelity"], rtol=1e-6)


def test_streaming_inception_score_equals_one_pass_and_single_split_formula():
  *_, logits = feature_sets()
  streamed = stats.ClassifierScoreStats.empty(len(logits), logits.shape[1], splits=10, shuffle_seed=2020)
  for batch in np.array_split(logits, 3):
    streamed = streamed.update(batch)
  scores = streamed.scores()
  np.testing.assert_allclose((scores.mean(), scores.std()), REFERENCE["isc_torch_fidelity"], rtol=1e-6)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  kl = (p * (np.log(p) - np.log(p.mean(0)))).sum(1)
  assert stats.inception_score(logits)[0] == pytest.approx(np.exp(kl.mean()), rel=1e-10)
  assert stats.inception_score(np.zeros((20, 10)))[0] == pytest.approx(1.0)
  assert stats.inception_score(100 * np.eye(10))[0] == pytest.approx(10.0, rel=1e-6)


def test_kernel_distance_matches_torch_fidelity():
  # torch-fidelity's defaults but subsets of 200 (its default 1000 costs ~20 GFLOP in float64).
  x, y, _, _ = feature_sets()
  np.testing.assert_allclose(stats.kernel_distance(x, y, subset_size=200), REFERENCE["kid_torch_fidelity"], rtol=1e-6)


def test_kernel_distance_needs_enough_features():
  x, _, few, _ = feature_sets()
  with pytest.raises(ValueError, match="subset_size=1000"):
    stats.kernel_distance(x, few)


def test_feature_bank_keeps_the_first_vectors():
  x, _, _, _ = feature_sets()
  bank = stats.FeatureBank.empty(1100, x.shape[1])
  for batch in np.array_split(x, 4):
    bank = bank.update(batch)
  np.testing.assert_array_equal(bank.features, x[:1100].astype(np.float32))
