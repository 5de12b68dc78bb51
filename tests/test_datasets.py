"""Datasets: determinism and resumption, splits, value ranges, local-file loaders, TFDS, scalers."""
import pathlib
import time

import numpy as np
import pytest
from PIL import Image

from score_sde import configs_util, datasets

MNIST_DIR = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def _digits():
  return configs_util.load_config("configs/digits/vp_unet.py")


def _mnist():
  return configs_util.load_config("configs/mnist/vp_unet.py")


def _toy(name: str, **data):
  config = configs_util.load_config("configs/toy/vp_mlp.py")
  config.data.dataset = name
  config.data.update(data)
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("name", ["checkerboard", "swiss_roll", "two_moons", "eight_gaussians", "mixture"])
def test_toy_stream_is_deterministic_and_resumable(name):
  config = _toy(name)
  first = _take(datasets.get_dataset(config, "train", batch_size=64), 5)
  again = _take(datasets.get_dataset(config, "train", batch_size=64), 5)
  resumed = _take(datasets.get_dataset(config, "train", batch_size=64, start_step=3), 2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(first[3]["image"], resumed[0]["image"])
  np.testing.assert_array_equal(first[4]["image"], resumed[1]["image"])
  assert first[0]["image"].shape == (64, 2) and first[0]["image"].dtype == np.float32
  assert not np.array_equal(first[0]["image"], first[1]["image"])


def test_toy_distributions_have_their_closed_form_statistics():
  rng_batch = lambda name: next(datasets.get_dataset(_toy(name), "train", batch_size=20000))["image"]  # noqa: E731
  board = rng_batch("checkerboard")
  cells = np.floor(board + 2).astype(int)
  assert np.all(np.abs(board) <= 2) and np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)  # dark cells only
  np.testing.assert_allclose(board.mean(0), 0.0, atol=0.05)  # the 8 dark cells are symmetric about 0
  radii = np.linalg.norm(rng_batch("eight_gaussians"), axis=1)
  np.testing.assert_allclose(radii.mean(), 2.0, atol=0.02)  # E|mu + 0.15 z| = 2 + O(0.15^2 / 4)
  config = _toy("mixture")
  mixture = datasets.oracle_mixture(config)
  np.testing.assert_allclose(rng_batch("mixture").mean(0), mixture.weights @ mixture.means, atol=0.05)


def test_toy_test_split_is_a_fixed_held_out_set():
  config = _toy("two_moons")
  config.data.num_heldout = 100
  batches = list(datasets.get_dataset(config, "test", batch_size=40, repeat=False))
  assert [len(b["image"]) for b in batches] == [40, 40, 20]
  points = np.concatenate([b["image"] for b in batches])
  np.testing.assert_array_equal(points, datasets.get_source(config, "test").images)


def test_digits_splits_are_disjoint_and_cover_the_dataset():
  config = _digits()
  train, test = datasets.get_source(config, "train"), datasets.get_source(config, "test")
  assert (len(train), len(test)) == (1797 - config.data.num_heldout, config.data.num_heldout)
  assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
  assert train.images.max() == 255 and train.images.min() == 0
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  np.testing.assert_array_equal(np.concatenate([train.labels, test.labels]), load_digits().target)


def test_uniform_dequantization_stays_in_the_pixel_bin():
  config = _digits()
  config.data.uniform_dequantization = True
  source = datasets.get_source(config, "test")
  batch = next(datasets.get_dataset(config, "test", batch_size=len(source), repeat=False))
  assert batch["image"].dtype == np.float32 and 0.0 <= batch["image"].min() and batch["image"].max() < 1.0
  np.testing.assert_array_equal(np.floor(batch["image"] * 256).astype(np.uint8), source.images)  # (y + u) / 256
  config.data.uniform_dequantization = False
  batch = next(datasets.get_dataset(config, "test", batch_size=len(source), repeat=False))
  np.testing.assert_allclose(batch["image"] * 255, source.images, atol=1e-4)


def _indexed_npz(tmp_path, n=20, size=4):
  """Images whose first pixel is their index, so batches reveal which examples they hold."""
  images = np.zeros((n, size, size), np.uint8)
  images[:, 0, 0] = np.arange(n)
  path = tmp_path / "data.npz"
  np.savez(path, images=images, labels=np.arange(n))
  return path


def _files_config(path, size=4, channels=1, num_heldout=5):
  config = _digits()
  config.data.update(dataset="files", path=str(path), image_size=size, num_channels=channels,
                     num_heldout=num_heldout, uniform_dequantization=False)
  return config


def test_every_epoch_is_a_permutation_and_epochs_differ(tmp_path):
  config = _files_config(_indexed_npz(tmp_path))  # 15 train examples, 3 batches of 5 per epoch
  batches = _take(datasets.get_dataset(config, "train", batch_size=5), 6)
  index = lambda b: list(np.round(b["image"][:, 0, 0, 0] * 255).astype(int))  # noqa: E731
  epochs = [sum((index(b) for b in batches[k:k + 3]), []) for k in (0, 3)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(15))
  assert epochs[0] != epochs[1]
  assert all(list(b["label"]) == index(b) for b in batches)


def test_the_stream_is_pinned_so_resumed_runs_read_the_same_batches(tmp_path):
  """Batch 4 (epoch 1) of a fixed source and seed, as recorded: its examples, flips and noise.

  A change here would feed runs resumed from older checkpoints other data: update only on purpose.
  """
  config = _files_config(_indexed_npz(tmp_path))  # 15 train examples, 3 batches of 5 per epoch
  config.data.update(uniform_dequantization=True, random_flip=True, prefetch=0)
  batch = next(datasets.get_dataset(config, "train", batch_size=5, start_step=4))
  assert batch["label"].tolist() == [10, 9, 4, 5, 6]
  np.testing.assert_allclose(batch["image"][:, 0, 0, 0], [0.04293792, 0.0366145, 0.01751198, 0.02300814, 0.00223012],
                             atol=1e-7)  # (index + u) / 256; example 6 is flipped: its mark is on the right
  np.testing.assert_array_equal(np.floor(batch["image"][:, 0, -1, 0] * 256), [0, 0, 0, 0, 6])


def test_each_epoch_is_shuffled_once_not_once_per_batch(tmp_path, monkeypatch):
  epochs = []
  epoch_order = datasets._epoch_order  # pylint: disable=protected-access
  monkeypatch.setattr(datasets, "_epoch_order", lambda *args: epochs.append(args[-1]) or epoch_order(*args))
  config = _files_config(_indexed_npz(tmp_path))
  config.data.prefetch = 0
  _take(datasets.get_dataset(config, "train", batch_size=5, start_step=2), 7)  # batches 2..8: epochs 0, 1, 2
  assert epochs == [0, 1, 2]


def test_random_flip_mirrors_about_half_the_training_images(tmp_path):
  images = np.zeros((400, 4, 4, 3), np.uint8)
  images[:, 1, 0, :] = 1 + np.arange(400)[:, None] % 255  # a mark in the left column only
  np.savez(tmp_path / "rgb.npz", images=images)
  config = _files_config(tmp_path / "rgb.npz", channels=3, num_heldout=100)
  config.data.random_flip = True
  batch = next(datasets.get_dataset(config, "train", batch_size=300))["image"]
  flipped = batch[:, 1, -1, 0] > 0
  np.testing.assert_array_equal(batch[flipped][:, :, :-1], 0.0)  # the mark moved to the right column
  np.testing.assert_array_equal(batch[~flipped][:, :, 1:], 0.0)
  assert 0.4 < np.mean(flipped) < 0.6
  test_batch = next(datasets.get_dataset(config, "test", batch_size=100, repeat=False))["image"]
  assert np.all(test_batch[:, 1, 0, 0] > 0)  # no flips outside training


def test_idx_folder_with_train_and_test_files(tmp_path, write_idx_folder):
  write_idx_folder(tmp_path, 12, 6)
  config = _files_config(tmp_path)
  train, test = datasets.get_source(config, "train"), datasets.get_source(config, "test")
  assert (len(train), len(test)) == (12, 6) and train.images.shape[1:] == (4, 4, 1)
  np.testing.assert_array_equal(test.labels, np.arange(6))


def test_png_folder_and_size_mismatch(tmp_path):
  for i in range(6):
    Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(tmp_path / f"{i:02d}.png")
  config = _files_config(tmp_path, channels=3, num_heldout=2)
  assert len(datasets.get_source(config, "train")) == 4
  np.testing.assert_array_equal(datasets.get_source(config, "test").images[:, 0, 0, 0], [160, 200])
  config.data.num_channels = 1
  assert datasets.get_source(config, "test").images.shape == (2, 4, 4, 1)  # converted to grayscale


def test_bad_local_paths_fail_with_the_path_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does-not-exist"):
    datasets.get_source(_files_config(tmp_path / "does-not-exist"), "train")
  np.savez(tmp_path / "odd.npz", pixels=np.zeros((3, 4, 4), np.uint8))
  with pytest.raises(ValueError, match="expected 'images'"):
    datasets.get_source(_files_config(tmp_path / "odd.npz"), "train")


@pytest.mark.skipif(not MNIST_DIR.exists(), reason=f"MNIST IDX files not found at {MNIST_DIR}")
def test_shared_mnist_idx_files_split_9000_1000():
  config = _mnist()
  config.data.path = str(MNIST_DIR)
  train, test = datasets.get_source(config, "train"), datasets.get_source(config, "test")
  assert (len(train), len(test)) == (9000, 1000) and train.images.shape[1:] == (28, 28, 1)
  assert train.images.max() == 255 and set(np.unique(test.labels)) == set(range(10))


def test_tfds_mock_data_is_read_through_data_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  config = _mnist()
  with tfds.testing.mock_data(num_examples=40):
    batch = next(datasets.get_dataset(config, "train", batch_size=16))
    test = list(datasets.get_dataset(config, "test", batch_size=16, repeat=False))
  assert batch["image"].shape == (16, 28, 28, 1) and 0.0 <= batch["image"].min() <= batch["image"].max() <= 1.0
  assert [len(b["image"]) for b in test] == [16, 16, 8]


def test_tfds_cifar_is_resized_to_the_configured_size():
  tfds = pytest.importorskip("tensorflow_datasets")
  config = _mnist()
  config.data.update(dataset="CIFAR10", image_size=16, num_channels=3)
  with tfds.testing.mock_data(num_examples=8):
    batch = next(datasets.get_dataset(config, "train", batch_size=4))
  assert batch["image"].shape == (4, 16, 16, 3)


def test_undownloadable_tfds_dataset_fails_fast_with_a_hint(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  monkeypatch.setattr(datasets, "_DOWNLOAD_HOST", ("127.0.0.1", 9))  # nothing listens on the discard port
  config = _mnist()
  config.data.dataset = "SVHN"
  config.data.num_channels = 3
  start = time.perf_counter()
  with pytest.raises(datasets.DatasetUnavailableError, match="data.path"):
    datasets.get_source(config, "train")
  assert time.perf_counter() - start < 10.0


def test_scalers_map_unit_interval_to_model_space_and_back():
  config = _digits()
  x = np.linspace(0, 1, 11, dtype=np.float32)
  scaler, inverse = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
  np.testing.assert_allclose(scaler(x), 2 * x - 1, atol=1e-7)
  np.testing.assert_allclose(inverse(scaler(x)), x, atol=1e-7)
  config.data.centered = False
  np.testing.assert_array_equal(datasets.get_data_scaler(config)(x), x)


def test_data_shape_and_unknown_dataset():
  assert datasets.data_shape(_toy("mixture", dim=5)) == (5,)
  assert datasets.data_shape(_mnist()) == (28, 28, 1)
  with pytest.raises(ValueError, match="is 2-D"):
    next(datasets.get_dataset(_toy("swiss_roll", dim=3), "train"))
