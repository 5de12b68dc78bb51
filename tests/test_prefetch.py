"""Prefetching (config.data.prefetch > 0, grain threads): the same batches as reading synchronously."""
import contextlib
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from score_sde import configs_util, datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("grain")


def _config(config_file: str, **data):
  config = configs_util.load_config(ROOT / config_file)
  config.data.update(data)
  return config


def _take(config, split: str, n: int, **kwargs) -> list[datasets.Batch]:
  """The first n batches (n=0: all) of get_dataset(config, split, **kwargs); the stream is closed after."""
  with contextlib.closing(datasets.get_dataset(config, split, **kwargs)) as stream:
    return [next(stream) for _ in range(n)] if n else list(stream)


def _assert_same_streams(config, split: str, n: int, **kwargs) -> None:
  """prefetch=2 and prefetch=0 yield the same n batches (n=0: all), bit for bit; consecutive batches differ."""
  config.data.prefetch = 0
  expected = _take(config, split, n, **kwargs)
  config.data.prefetch = 2
  got = _take(config, split, n, **kwargs)
  assert len(got) == len(expected) >= 2
  for a, b in zip(got, expected):
    for name in ("image", "label"):
      assert a[name].dtype == b[name].dtype
      np.testing.assert_array_equal(a[name], b[name])
  assert not np.array_equal(expected[0]["image"], expected[1]["image"])


# digits: 1500 training images, 64 per batch, 23 batches per epoch: start 22 crosses an epoch.
@pytest.mark.parametrize("start_step, rows", [(0, slice(None)), (22, slice(None)), (22, slice(32, 64))])
def test_digits_prefetched_equals_synchronous(start_step, rows):
  config = _config("configs/digits/vp_unet.py", random_flip=True, uniform_dequantization=True)
  _assert_same_streams(config, "train", 4, batch_size=64, start_step=start_step, rows=rows)


def test_ordered_pass_prefetched_equals_synchronous():
  config = _config("configs/digits/vp_unet.py", uniform_dequantization=True)  # 297 test images
  _assert_same_streams(config, "test", 0, batch_size=64, repeat=False)
  assert [len(b["image"]) for b in _take(config, "test", 0, batch_size=64, repeat=False)] == [64] * 4 + [41]


def test_toy_training_batches_are_sampled_without_threads():
  config = _config("configs/toy/vp_mlp.py", dataset="mixture")
  before = _reader_threads()
  _assert_same_streams(config, "train", 4, batch_size=64, start_step=5, rows=slice(16, 48))
  assert _reader_threads() <= before  # no new reader threads


def _local_config(path: pathlib.Path):
  return _config("configs/digits/vp_unet.py", dataset="files", path=str(path), image_size=4, num_channels=1,
                 num_heldout=10, random_flip=True, uniform_dequantization=True)


def test_npz_prefetched_equals_synchronous(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (50, 4, 4), np.uint8)
  np.savez(tmp_path / "data.npz", images=images, labels=np.arange(50))
  config = _local_config(tmp_path / "data.npz")  # 40 train images: 5 batches of 8 per epoch
  _assert_same_streams(config, "train", 4, batch_size=8, start_step=3, rows=slice(4, 8))


def test_idx_folder_prefetched_equals_synchronous(tmp_path, write_idx_folder):
  write_idx_folder(tmp_path, 24, 12)
  config = _local_config(tmp_path)
  _assert_same_streams(config, "train", 4, batch_size=8, start_step=2, rows=slice(0, 4))
  _assert_same_streams(config, "test", 0, batch_size=5, repeat=False)


@pytest.mark.parametrize("dataset, image_size, channels", [("MNIST", 28, 1), ("CIFAR10", 16, 3)])  # 32 -> 16: resized
def test_tfds_prefetched_equals_synchronous(dataset, image_size, channels):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = _config("configs/mnist/vp_unet.py", dataset=dataset, image_size=image_size, num_channels=channels,
                   random_flip=True, uniform_dequantization=True)
  with tfds.testing.mock_data(num_examples=24):  # 3 batches of 8 per epoch
    _assert_same_streams(config, "train", 3, batch_size=8, start_step=4, rows=slice(4, 8))
    _assert_same_streams(config, "test", 0, batch_size=10, repeat=False)


def _reader_threads() -> set[threading.Thread]:
  return {t for t in threading.enumerate() if t.name.startswith("grain-prefetch")}


def _wait_until_gone(threads: set[threading.Thread], timeout: float = 10.0) -> None:
  deadline = time.monotonic() + timeout
  for thread in threads:
    thread.join(max(deadline - time.monotonic(), 0.0))
  assert not [t for t in threads if t.is_alive()]


@pytest.mark.parametrize("how", ["close", "drop"])
def test_reader_threads_stop_when_the_stream_is_closed_or_dropped(how):
  config = _config("configs/digits/vp_unet.py", prefetch=2)
  before = _reader_threads()
  stream = datasets.get_dataset(config, "train", batch_size=64)
  next(stream)
  started = _reader_threads() - before
  assert 1 <= len(started) <= 2  # prefetch=2 threads at most
  if how == "close":
    stream.close()
  else:
    del stream
  _wait_until_gone(started)


def test_synchronous_stream_starts_no_threads():
  before = _reader_threads()
  stream = datasets.get_dataset(_config("configs/digits/vp_unet.py", prefetch=0), "train", batch_size=64)
  next(stream)
  assert _reader_threads() <= before  # no new reader threads


def test_a_script_that_leaves_a_prefetching_stream_open_exits():
  """The interpreter exits (no reader thread keeps it alive) with a prefetching stream still open."""
  code = ("from score_sde import configs_util, datasets; "
          "config = configs_util.load_config('configs/digits/vp_unet.py'); "
          "stream = datasets.get_dataset(config, 'train', batch_size=64); next(stream); print('read')")
  done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0 and done.stdout.strip() == "read", done.stderr[-2000:]


def test_an_error_while_reading_ahead_reaches_the_caller_at_its_batch():
  def batch_at(k: int) -> datasets.Batch:
    if k == 3:
      raise OSError(f"cannot read batch {k}")
    return {"image": np.full((2, 1), k, np.float32), "label": np.zeros(2, np.int32)}

  before = _reader_threads()
  stream = datasets.read_ahead(batch_at, range(10), prefetch=2)
  assert [int(next(stream)["image"][0, 0]) for _ in range(3)] == [0, 1, 2]
  started = _reader_threads() - before
  with pytest.raises(OSError, match="cannot read batch 3"):
    next(stream)
  assert 1 <= len(started) <= 2  # prefetch=2 threads at most
  _wait_until_gone(started)  # the failed stream stopped its threads


def test_without_grain_prefetch_warns_and_reads_synchronously(monkeypatch):
  config = _config("configs/digits/vp_unet.py", prefetch=0)
  expected = _take(config, "train", 2, batch_size=64)
  monkeypatch.setitem(sys.modules, "grain", None)  # `import grain` raises ImportError
  config.data.prefetch = 2
  before = _reader_threads()
  with pytest.warns(UserWarning, match="needs grain"):
    got = _take(config, "train", 2, batch_size=64)
  assert _reader_threads() <= before  # no new reader threads
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_bad_prefetch_values_are_rejected():
  with pytest.raises(ValueError, match=r"config.data.prefetch=-1 must be an int >= 0"):
    datasets.get_dataset(_config("configs/digits/vp_unet.py", prefetch=-1), "train")
  for prefetch in (1.5, True, None):
    with pytest.raises(ValueError, match=f"config.data.prefetch={prefetch}"):
      datasets.read_ahead(lambda k: {}, range(3), prefetch)
