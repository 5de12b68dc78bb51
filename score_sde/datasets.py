"""Datasets as deterministic, shuffled, batched numpy iterators; data scalers.

`get_dataset(config, split)` yields global batches `{"image": float32 [B, ...], "label": int32 [B]}`.
Images lie in [0, 1] (`x / 255`, or `(x + u) / 256` with uniform dequantization, u ~ U[0, 1)) and
toy points in R^D; `get_data_scaler` maps them into the model's input space. Batch `k` of a
stream is a pure function of (seed, split, k), so training resumes at any step with the same data.
With several processes each reads only its own rows of every global batch (`rows`,
`parallel.process_rows`) and `parallel.global_batch` assembles the global array. With
`config.data.prefetch` > 0, grain threads build the next batches while the caller uses the current
one; being pure functions of k, the batches are the same as when read synchronously.

Sources (`config.data.dataset`, see `available_datasets()`):
- 2-D toys, sampled afresh at every step: checkerboard, swiss_roll, two_moons, eight_gaussians,
  and `mixture`, the oracle's Gaussian mixture (`score_sde.testing`, any `data.dim`);
- `digits`: scikit-learn's bundled 8x8 digits (offline);
- TFDS: MNIST, CIFAR10, CELEBA, SVHN, LSUN/<category>, IMAGENET32/64 (downsampled), read with
  `tfds.data_source`;
- local files, whenever `config.data.path` is set (whatever the dataset name): a folder of IDX
  files (`*-images-idx3-ubyte[.gz]`, as MNIST ships), an `.npz`, or a folder of PNGs.
A source without its own test split holds out its last `config.data.num_heldout` examples.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import logging
import pathlib
import socket
import sys
import warnings
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np
from PIL import Image

from score_sde import testing

Batch = dict[str, np.ndarray]
_SPLIT_IDS = {"train": 0, "test": 1}
_ENDLESS = sys.maxsize  # the last batch index of a repeated stream: endless in practice


class DatasetUnavailableError(RuntimeError):
  """A dataset that is neither on disk nor downloadable from here."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A finite split: uint8 images [N, H, W, C] (or float points [N, D]) and int labels [N]."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.images)

  def fetch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]


# --------------------------------------------------------------------------------------- 2-D toys
def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
  """Uniform on the 8 dark cells of a 4x4 board over [-2, 2]^2."""
  cells = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], np.float64)
  return cells[rng.integers(len(cells), size=n)] + rng.uniform(size=(n, 2)) - 2.0


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
  """(t cos t, t sin t) / 5 for t ~ U[1.5 pi, 4.5 pi], plus N(0, 0.05^2) noise."""
  t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
  return np.stack([t * np.cos(t), t * np.sin(t)], -1) / 5 + 0.05 * rng.normal(size=(n, 2))


def _two_moons(rng: np.random.Generator, n: int) -> np.ndarray:
  """Two interleaved half circles (centred, scaled by 2), plus N(0, 0.1^2) noise."""
  theta = np.pi * rng.uniform(size=n)
  upper = rng.integers(2, size=n).astype(bool)
  x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
  y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
  return 2 * (np.stack([x, y], -1) - [0.5, 0.25]) + 0.1 * rng.normal(size=(n, 2))


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
  """Eight N(mu_k, 0.15^2 I) on the circle of radius 2, equally weighted."""
  angles = 2 * np.pi * rng.integers(8, size=n) / 8
  return 2 * np.stack([np.cos(angles), np.sin(angles)], -1) + 0.15 * rng.normal(size=(n, 2))


def oracle_mixture(config: ml_collections.ConfigDict) -> testing.GaussianMixture:
  """The oracle mixture behind the `mixture` dataset: the 2-D default, or a random one in R^dim."""
  dim = config.data.dim
  return testing.two_dim_mixture() if dim == 2 else testing.high_dim_mixture(dim=dim)


def _mixture_sampler(config: ml_collections.ConfigDict) -> Callable[[np.random.Generator, int], np.ndarray]:
  mixture = oracle_mixture(config)

  def sample(rng: np.random.Generator, n: int) -> np.ndarray:
    k = rng.choice(len(mixture.weights), size=n, p=mixture.weights)
    return mixture.means[k] + mixture.stds[k, None] * rng.normal(size=(n, mixture.dim))

  return sample


_TOYS: dict[str, Callable[[ml_collections.ConfigDict], Callable[[np.random.Generator, int], np.ndarray]]] = {
    "checkerboard": lambda config: _checkerboard,
    "swiss_roll": lambda config: _swiss_roll,
    "two_moons": lambda config: _two_moons,
    "eight_gaussians": lambda config: _eight_gaussians,
    "mixture": _mixture_sampler,
}


# --------------------------------------------------------------------------------- image sources
def _holdout(images: np.ndarray, labels: np.ndarray, split: str, num_heldout: int) -> ArraySource:
  """The first N - num_heldout examples are `train`, the last num_heldout are `test`."""
  if not 0 < num_heldout < len(images):
    raise ValueError(f"config.data.num_heldout={num_heldout} must lie in (0, {len(images)}) for this source")
  cut = len(images) - num_heldout
  part = slice(None, cut) if split == "train" else slice(cut, None)
  return ArraySource(images[part], labels[part])


def _digits(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  """scikit-learn's 1797 8x8 digits (values 0..16) as uint8 [N, 8, 8, 1] in 0..255."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  return _holdout(images, digits.target.astype(np.int32), split, config.data.num_heldout)


def _read_idx(path: pathlib.Path) -> np.ndarray:
  """An IDX file (optionally gzipped): big-endian magic (0x08 = uint8, ndim), dims, uint8 payload."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    data = f.read()
  if data[:2] != b"\x00\x00" or data[2] != 0x08:
    raise ValueError(f"{path} is not a uint8 IDX file (magic {data[:4].hex()})")
  ndim = data[3]
  dims = np.frombuffer(data, ">i4", count=ndim, offset=4)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_folder(path: pathlib.Path, split: str, num_heldout: int) -> ArraySource:
  """MNIST-style IDX files; `train-*` and `t10k-*` are the splits, else a lone file is held out."""
  image_files = sorted(path.glob("*-images-idx3-ubyte*"))
  by_split = {"train": [f for f in image_files if f.name.startswith("train")],
              "test": [f for f in image_files if f.name.startswith("t10k")]}

  def load(image_file: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(image_file)[..., None]
    label_file = image_file.with_name(image_file.name.replace("images-idx3", "labels-idx1"))
    labels = _read_idx(label_file).astype(np.int32) if label_file.exists() else np.zeros(len(images), np.int32)
    return images, labels

  if by_split["train"] and by_split["test"]:
    return ArraySource(*load(by_split[split][0]))
  return _holdout(*load(image_files[0]), split, num_heldout)


def _npz(path: pathlib.Path, split: str, num_heldout: int) -> ArraySource:
  """An .npz with `x_train`/`x_test` (and `y_*`), or `images` (and `labels`) to be held out."""
  with np.load(path) as data:
    arrays = dict(data)
  if f"x_{split}" in arrays:
    images = arrays[f"x_{split}"]
    labels = arrays.get(f"y_{split}", np.zeros(len(images)))
    return ArraySource(_as_nhwc(images, path), labels.astype(np.int32))
  if "images" not in arrays:
    raise ValueError(f"{path} holds {sorted(arrays)}; expected 'images' [N, H, W(, C)] or 'x_train'/'x_test'")
  images = _as_nhwc(arrays["images"], path)
  labels = arrays.get("labels", np.zeros(len(images))).astype(np.int32)
  return _holdout(images, labels, split, num_heldout)


def _as_nhwc(images: np.ndarray, path: pathlib.Path) -> np.ndarray:
  if images.dtype != np.uint8:
    raise ValueError(f"{path}: images must be uint8 in 0..255, got {images.dtype}")
  return images[..., None] if images.ndim == 3 else images


def _read_png(path: pathlib.Path, num_channels: int) -> np.ndarray:
  """uint8 [H, W, num_channels]; ValueError naming a file that is not an image."""
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert({1: "L", 3: "RGB"}[num_channels]))
  except OSError as e:  # PIL.UnidentifiedImageError and truncated files
    raise ValueError(f"{path} under config.data.path is not a readable PNG ({e})") from e
  return pixels.reshape(pixels.shape[0], pixels.shape[1], num_channels)


def _png_folder(path: pathlib.Path, split: str, num_heldout: int, num_channels: int) -> ArraySource:
  """PNGs under `path` (sorted); `path/train` and `path/test` subfolders are the splits if present."""
  if (path / "train").is_dir() and (path / "test").is_dir():
    path, num_heldout = path / split, 0
  files = sorted(path.rglob("*.png"))
  if not files:
    raise FileNotFoundError(f"config.data.path={str(path)!r} holds no IDX files, .npz or PNGs")
  images = [_read_png(f, num_channels) for f in files]
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ValueError(f"PNGs under {path} have different shapes {sorted(shapes)}")
  images, labels = np.stack(images), np.zeros(len(images), np.int32)
  return ArraySource(images, labels) if num_heldout == 0 else _holdout(images, labels, split, num_heldout)


def _local_files(config: ml_collections.ConfigDict, split: str) -> ArraySource:
  path = pathlib.Path(config.data.path).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"config.data.path={config.data.path!r} does not exist")
  if path.suffix == ".npz":
    return _npz(path, split, config.data.num_heldout)
  if any(path.glob("*-images-idx3-ubyte*")):
    return _idx_folder(path, split, config.data.num_heldout)
  return _png_folder(path, split, config.data.num_heldout, config.data.num_channels)


# ------------------------------------------------------------------------------------------ TFDS
_TFDS_NAMES = {"MNIST": "mnist", "CIFAR10": "cifar10", "CELEBA": "celeb_a", "SVHN": "svhn_cropped"}
_LSUN_CATEGORIES = ("bedroom", "bridge", "church_outdoor", "classroom", "conference_room", "dining_room",
                    "kitchen", "living_room", "restaurant", "tower")
_TFDS_NAMES.update({f"LSUN/{c}": f"lsun/{c}" for c in _LSUN_CATEGORIES})
_TFDS_NAMES.update({f"IMAGENET{n}": f"downsampled_imagenet/{n}x{n}" for n in (32, 64)})
_TFDS_CROP = {"celeb_a": 140}  # central crop before resizing, as in the score_sde paper
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def _reachable(address: tuple[str, int], timeout: float = 3.0) -> bool:
  try:
    with socket.create_connection(address, timeout=timeout):
      return True
  except OSError:
    return False


@contextlib.contextmanager
def _absl_warnings_off() -> Iterator[None]:
  """Only errors from absl logging (tfds logs through it) inside the block."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


@dataclasses.dataclass(frozen=True)
class TFDSSource:
  """A random-access TFDS split; images are cropped/resized to `image_size` as they are fetched."""

  source: object  # tfds data source: len() and integer indexing
  image_size: int
  crop: int | None

  def __len__(self) -> int:
    return len(self.source)

  def fetch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    examples = [self.source[int(i)] for i in indices]
    images = np.stack([_crop_resize(np.asarray(e["image"]), self.image_size, self.crop) for e in examples])
    labels = np.array([int(e.get("label", 0)) for e in examples], np.int32)
    return images, labels


def _tfds(config: ml_collections.ConfigDict, split: str) -> TFDSSource:
  """`tfds.data_source`, downloading only when the download host answers within seconds."""
  name = _TFDS_NAMES[config.data.dataset]
  hint = (f"TFDS dataset {name!r} is not on disk and cannot be downloaded from here; point "
          "--config.data.path at local files (a folder of IDX .gz files, an .npz or a folder of PNGs)")
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DatasetUnavailableError(f"{hint} (tensorflow_datasets is not installed: pip install -e '.[tfds]')") from e
  try:
    with _absl_warnings_off():  # "no dataset_info.json" and the like: the message below says it
      source = tfds.data_source(name, split=split, download=False)
  except Exception:  # tfds raises assorted errors for unprepared data; the download decides below
    if not _reachable(_DOWNLOAD_HOST):
      raise DatasetUnavailableError(hint) from None
    source = tfds.data_source(name, split=split, download=True,
                              download_and_prepare_kwargs={"file_format": "array_record"})
  return TFDSSource(source, config.data.image_size, _TFDS_CROP.get(name))


def _crop_resize(image: np.ndarray, size: int, crop: int | None = None) -> np.ndarray:
  """Central crop (to `crop`, else to a square) then bicubic resize to size x size; uint8 HWC."""
  height, width, channels = image.shape
  side = crop or min(height, width)
  if (height, width) == (size, size):
    return image
  top, left = (height - side) // 2, (width - side) // 2
  square = Image.fromarray(image[top:top + side, left:left + side].squeeze(-1) if channels == 1 else
                           image[top:top + side, left:left + side])
  resized = np.asarray(square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None))
  return resized.reshape(size, size, channels)


# ----------------------------------------------------------------------------------- the iterator
_IMAGE_SOURCES: dict[str, Callable[[ml_collections.ConfigDict, str], ArraySource | TFDSSource]] = {
    "digits": _digits, **{name: _tfds for name in _TFDS_NAMES}, "files": _local_files}


def available_datasets() -> list[str]:
  return sorted(_TOYS) + sorted(_IMAGE_SOURCES)


def is_toy(config: ml_collections.ConfigDict) -> bool:
  return config.data.dataset in _TOYS and not config.data.path


def data_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Per-example shape: (dim,) for toys, (image_size, image_size, num_channels) for images."""
  if is_toy(config):
    return (config.data.dim,)
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def get_source(config: ml_collections.ConfigDict, split: str) -> ArraySource | TFDSSource:
  """The finite examples of `split` (toys: a fixed test set of `num_heldout` points)."""
  if split not in _SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; use one of {list(_SPLIT_IDS)}")
  name = config.data.dataset
  if is_toy(config):
    if split == "train":
      raise ValueError("toy training data is sampled afresh at every step and has no finite train split")
    points = _TOYS[name](config)(np.random.default_rng([config.seed, _SPLIT_IDS[split]]), config.data.num_heldout)
    return ArraySource(points.astype(np.float32), np.zeros(len(points), np.int32))
  if config.data.path:
    source = _local_files(config, split)
  elif name == "files":
    raise ValueError("config.data.dataset='files' needs config.data.path")
  elif name in _IMAGE_SOURCES:
    source = _IMAGE_SOURCES[name](config, split)
  else:
    raise ValueError(f"unknown config.data.dataset {name!r}; available: {available_datasets()}")
  if isinstance(source, ArraySource):
    source = ArraySource(np.stack([_crop_resize(im, config.data.image_size) for im in source.images]), source.labels)
  _check_shape(source.fetch(np.arange(1))[0].shape[1:], data_shape(config), name)
  return source


def _check_shape(shape: tuple[int, ...], expected: tuple[int, ...], name: str) -> None:
  if tuple(shape) != tuple(expected):
    raise ValueError(f"dataset {name!r} has examples of shape {tuple(shape)} but the config asks for {expected} "
                     "(data.image_size, data.num_channels)")


def dequantize(pixels, noise):
  """Uniform dequantization (y + u) / 256 in [0, 1) of {0..255} pixels y and u ~ U[0, 1) (NumPy or JAX arrays)."""
  return (pixels + noise) / 256.0


def _preprocess(config: ml_collections.ConfigDict, images: np.ndarray, rng: np.random.Generator,
                train: bool, rows: slice = slice(None), batch_size: int | None = None) -> np.ndarray:
  """uint8 -> [0, 1]: (x + u) / 256 with u ~ U[0, 1) if dequantizing, else x / 255; random flips.

  `images` are rows `rows` of a batch of `batch_size` (default: all of it); they get the noise and
  flips drawn for those rows of the whole batch.
  """
  batch_shape = (batch_size or len(images),) + images.shape[1:]
  images = images.astype(np.float32)
  if config.data.uniform_dequantization:
    images = dequantize(images, rng.uniform(size=batch_shape)[rows].astype(np.float32))
  else:
    images = images / 255.0
  if train and config.data.random_flip:
    flip = rng.uniform(size=batch_shape[0])[rows] < 0.5
    images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
  return images


def _batch_rng(config: ml_collections.ConfigDict, split: str, step: int) -> np.random.Generator:
  return np.random.default_rng([config.seed, _SPLIT_IDS[split], step])


def get_dataset(config: ml_collections.ConfigDict, split: str, *, batch_size: int | None = None,
                start_step: int = 0, repeat: bool = True, rows: slice = slice(None)) -> Iterator[Batch]:
  """Batches of `split` ("train" | "test"), `batch_size` (default training.batch_size) examples each.

  repeat=True: an endless stream, reshuffled every epoch, of full batches; batch k depends only on
  (seed, split, k), and the stream starts at batch `start_step` (resuming). Toy training batches are
  fresh samples. repeat=False: one ordered pass over the split (the last batch may be smaller).

  `rows` (repeat=True only): the rows of every batch to yield, e.g. one process's share; only those
  examples are read, with the random flips and dequantization noise they get in the whole batch.

  With config.data.prefetch > 0, that many grain threads build the next batches of image sources
  while the caller uses the current one (see `read_ahead`); the batches are the same as with
  prefetch=0. Toy batches are always sampled when asked: that takes less time than a thread hand-off.
  """
  batch_size = batch_size or config.training.batch_size
  if not repeat and rows != slice(None):
    raise ValueError("rows= selects a process's share of a repeated stream; use repeat=True")
  if is_toy(config) and split == "train":
    if not repeat:
      raise ValueError("toy training data is an endless stream; use repeat=True")
    if config.data.dataset != "mixture" and config.data.dim != 2:
      raise ValueError(f"dataset {config.data.dataset!r} is 2-D; config.data.dim={config.data.dim}")
    sample = _TOYS[config.data.dataset](config)
    batch_at = functools.partial(_toy_batch, config, split, sample, batch_size, rows)
    return read_ahead(batch_at, range(start_step, _ENDLESS), prefetch=0)  # cheaper than a hand-off to a thread
  source = get_source(config, split)
  if repeat:
    if len(source) < batch_size:
      raise ValueError(f"split {split!r} has {len(source)} examples, fewer than one batch of {batch_size}")
    epoch_order = functools.lru_cache(maxsize=2)(  # one permutation per epoch, not one per batch
        functools.partial(_epoch_order, config.seed, split, len(source)))
    batch_at = functools.partial(_shuffled_batch, config, source, split, batch_size, rows, epoch_order)
    return read_ahead(batch_at, range(start_step, _ENDLESS), config.data.prefetch)
  batch_at = functools.partial(_ordered_batch, config, source, split, batch_size)
  return read_ahead(batch_at, range(-(-len(source) // batch_size)), config.data.prefetch)


def read_ahead(batch_at: Callable[[int], Batch], steps: range, prefetch: int) -> Iterator[Batch]:
  """`batch_at(k)` for k in `steps`, in order; `prefetch` > 0 grain threads build the next batches ahead.

  Each batch is a pure function of k, so the stream does not depend on `prefetch`. Without grain
  installed it warns and reads synchronously. Closing the iterator (or dropping it) stops the threads.
  """
  if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
    raise ValueError(f"config.data.prefetch={prefetch!r} must be an int >= 0 (batches read ahead; 0: none)")
  grain = _grain_or_none() if prefetch else None
  if grain is None:
    return (batch_at(k) for k in steps)
  return _prefetched(grain, batch_at, steps, prefetch)


def _grain_or_none():
  """The grain module, or None (with a warning) when it is not installed."""
  try:
    import grain  # pylint: disable=import-outside-toplevel
  except ImportError:
    warnings.warn("config.data.prefetch > 0 needs grain (pip install -e '.[tfds]'); reading batches "
                  "synchronously instead", stacklevel=4)
    return None
  return grain


def _prefetched(grain, batch_at: Callable[[int], Batch], steps: range, prefetch: int) -> Iterator[Batch]:
  """A grain MapDataset over `steps`, read by `prefetch` threads with `prefetch` batches buffered."""
  dataset = grain.MapDataset.range(steps.start, steps.stop, steps.step).map(batch_at)
  options = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
  iterator = iter(dataset.to_iter_dataset(options))
  try:
    yield from iterator
  finally:
    iterator.close()  # stops the threads when the caller closes or drops this generator


def _toy_batch(config, split: str, sample, batch_size: int, rows: slice, step: int) -> Batch:
  """Rows `rows` of fresh toy batch `step` of `batch_size` points."""
  points = sample(_batch_rng(config, split, step), batch_size)
  return {"image": points[rows].astype(np.float32), "label": np.zeros(batch_size, np.int32)[rows]}


def _make_batch(config, source, split: str, indices: np.ndarray, rng: np.random.Generator,
                rows: slice = slice(None)) -> Batch:
  """Rows `rows` of the batch of examples `indices`."""
  images, labels = source.fetch(indices[rows])
  if images.dtype != np.uint8:  # toy test points are already in model space
    return {"image": images, "label": labels}
  return {"image": _preprocess(config, images, rng, train=split == "train", rows=rows, batch_size=len(indices)),
          "label": labels}


def _epoch_order(seed: int, split: str, num_examples: int, epoch: int) -> np.ndarray:
  """The order (a read-only permutation of the examples) in which epoch `epoch` visits them."""
  order = np.random.default_rng([seed, _SPLIT_IDS[split], epoch, 2**31]).permutation(num_examples)
  order.flags.writeable = False
  return order


def _shuffled_batch(config, source, split: str, batch_size: int, rows: slice,
                    epoch_order: Callable[[int], np.ndarray], step: int) -> Batch:
  """Batch `step` = examples [p B, (p + 1) B) of epoch e's order, (e, p) = divmod(step, N // B)."""
  epoch, position = divmod(step, len(source) // batch_size)
  indices = epoch_order(epoch)[position * batch_size:(position + 1) * batch_size]
  return _make_batch(config, source, split, indices, _batch_rng(config, split, step), rows)


def _ordered_batch(config, source, split: str, batch_size: int, step: int) -> Batch:
  """Batch `step` of one ordered pass: examples [step B, min((step + 1) B, N))."""
  indices = np.arange(step * batch_size, min((step + 1) * batch_size, len(source)))
  return _make_batch(config, source, split, indices, _batch_rng(config, split, step))


# ---------------------------------------------------------------------------------------- scalers
def get_data_scaler(config: ml_collections.ConfigDict) -> Callable:
  """[0, 1] -> [-1, 1] (x -> 2x - 1) when config.data.centered, else the identity."""
  return (lambda x: 2 * x - 1) if config.data.centered else (lambda x: x)


def get_data_inverse_scaler(config: ml_collections.ConfigDict) -> Callable:
  """Inverse of `get_data_scaler`: [-1, 1] -> [0, 1] when centered, else the identity."""
  return (lambda x: (x + 1) / 2) if config.data.centered else (lambda x: x)
