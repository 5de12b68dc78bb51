"""The Flax FID Inception network against pytorch-fid's InceptionV3 on the same seeded random weights."""
import pathlib
import sys

import numpy as np
import pytest

from score_sde.metrics import inception

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from metrics_inputs import random_state_dict  # noqa: E402

REFERENCE = np.load(FIXTURES / "metrics_reference.npz")


@pytest.fixture(scope="module")
def state_dict():
  return random_state_dict(inception.state_dict_shapes())


@pytest.fixture(scope="module")
def variables(state_dict):
  return inception.variables_from_state_dict(state_dict)


def _assert_close(actual, expected, rtol=1e-4):
  """Agreement to `rtol` of the reference's largest magnitude, per array."""
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.abs(expected).max())


def test_state_dict_keys_and_sizes_equal_pytorch_fids():
  shapes = inception.state_dict_shapes()
  assert sorted(shapes) == sorted(REFERENCE["state_dict_keys"])
  sizes = dict(zip(REFERENCE["state_dict_keys"], REFERENCE["state_dict_sizes"]))
  assert all(np.prod(shape) == sizes[key] for key, shape in shapes.items())
  assert sum(np.prod(shape) for shape in shapes.values()) > 23e6


def test_features_and_logits_equal_pytorch_fid_unresized(variables):
  features, logits = inception.apply(variables, REFERENCE["images_large"], resize_input=False)
  assert features.shape == (2, 2048) and logits.shape == (2, 1008)
  _assert_close(features, REFERENCE["features_large"])
  _assert_close(logits, REFERENCE["logits_large"])


def test_features_and_logits_equal_pytorch_fid_resized_to_299(variables):
  features, logits = inception.apply(variables, REFERENCE["images_small"])
  _assert_close(features, REFERENCE["features_small"])
  _assert_close(logits, REFERENCE["logits_small"])


def test_resize_equals_torch_interpolate_up_and_down():
  np.testing.assert_allclose(inception.resize_bilinear(REFERENCE["images_tiny"], 19), REFERENCE["resize_tiny_up"],
                             atol=1e-6)
  np.testing.assert_allclose(inception.resize_bilinear(REFERENCE["images_small"], 13), REFERENCE["resize_small_down"],
                             atol=1e-6)


def test_state_dict_errors_name_the_entry(state_dict):
  missing = {k: v for k, v in state_dict.items() if k != "Mixed_5b.branch1x1.conv.weight"}
  with pytest.raises(ValueError, match="Mixed_5b.branch1x1.conv.weight"):
    inception.variables_from_state_dict(missing)
  with pytest.raises(ValueError, match="fc.bias has shape"):
    inception.variables_from_state_dict({**state_dict, "fc.bias": np.zeros(1000, np.float32)})
  with_counter = {**state_dict, "Mixed_5b.branch1x1.bn.num_batches_tracked": np.zeros((), np.int64)}
  assert inception.variables_from_state_dict(with_counter)["params"]["fc"]["bias"].shape == (1008,)
