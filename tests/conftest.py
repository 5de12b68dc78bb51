"""Shared pytest fixtures: float64 where a test asks for it, the mixture oracle."""
import pytest

from score_sde import testing


@pytest.fixture
def mixture2d():
  return testing.two_dim_mixture()


@pytest.fixture
def mixture64d():
  return testing.high_dim_mixture(dim=64)
