"""Shared pytest fixtures: float64 where a test asks for it, the mixture oracle, MNIST-style IDX files."""
import gzip
import os
import pathlib
import tempfile

import numpy as np
import pytest

from score_sde import testing
from score_sde.cli import huge_pages


@pytest.fixture(autouse=True, scope="session")
def temporary_files_in_pytest_tmp(tmp_path_factory):
  """Temporary files of the tests and their subprocesses go under pytest's own (rotated) tmp folder: offline,
  TFDS leaves an empty mkdtemp("tfds") folder behind at every lookup of a dataset it has not prepared."""
  folder = str(tmp_path_factory.mktemp("tempfile"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("TMPDIR", folder)
    patch.setattr(tempfile, "tempdir", folder)
    yield


@pytest.fixture(autouse=True, scope="session")
def scripts_start_with_huge_pages():
  """Scripts run by the tests inherit the GLIBC_TUNABLES that huge_pages.restart_with_huge_pages() would set,
  so that each does not start twice (test_huge_pages.py tests the restart itself)."""
  environ = huge_pages.environment_with_huge_pages()
  with pytest.MonkeyPatch.context() as patch:
    if "GLIBC_TUNABLES" in environ:
      patch.setenv("GLIBC_TUNABLES", environ["GLIBC_TUNABLES"])
    yield


@pytest.fixture
def mixture2d():
  return testing.two_dim_mixture()


@pytest.fixture
def mixture64d():
  return testing.high_dim_mixture(dim=64)


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def write_idx_folder():
  """(folder, num_train, num_test) -> folder with MNIST-style gzip IDX files of random 4x4 images, labels n % 10."""
  def write(folder: pathlib.Path, num_train: int, num_test: int) -> pathlib.Path:
    rng = np.random.default_rng(1)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
      _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 4, 4)))
      _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder
  return write
