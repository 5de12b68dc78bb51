"""The torch-free .pth reader on files crafted here the way torch.save lays them out (no torch needed)."""
import io
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest

from score_sde import torch_pickle


class Global:
  """A global named by module and name, pickled as a GLOBAL opcode without importing it."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires a callable in a REDUCE; this one is only written
    raise AssertionError("never called")


class Call:
  """`func(*args)` in the pickle (a REDUCE)."""

  def __init__(self, func: Global, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


class Tensor:
  """A torch tensor as torch.save pickles it: _rebuild_tensor_v2 over a persistent storage."""

  def __init__(self, array: np.ndarray, key: str, storage_type: str = "FloatStorage"):
    self.array, self.key, self.storage_type = np.ascontiguousarray(array), key, storage_type

  def __reduce__(self):
    stride = tuple(s // self.array.itemsize for s in self.array.strides)
    return (Global("torch._utils", "_rebuild_tensor_v2"),
            (Storage(self), 0, self.array.shape, stride, False, Call(Global("collections", "OrderedDict"))))


class Storage:

  def __init__(self, tensor: Tensor):
    self.tensor = tensor


class _Pickler(pickle._Pickler):
  dispatch = pickle._Pickler.dispatch.copy()

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.tensors: list[Tensor] = []

  def save_global_marker(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[Global] = save_global_marker

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    t = obj.tensor
    self.tensors.append(t)
    pid = ("storage", Global("torch", t.storage_type), t.key, "cpu", t.array.size)
    return pid + (None,) if self.legacy else pid


def _dumps(obj, legacy: bool) -> tuple[bytes, list[Tensor]]:
  buf = io.BytesIO()
  pickler = _Pickler(buf, legacy)
  pickler.dump(obj)
  return buf.getvalue(), pickler.tensors


def write_zip(path, obj) -> None:
  data, tensors = _dumps(obj, legacy=False)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data)
    z.writestr("archive/byteorder", "little")
    for t in tensors:
      z.writestr(f"archive/data/{t.key}", t.array.tobytes())


def write_legacy(path, obj) -> None:
  data, tensors = _dumps(obj, legacy=True)
  with open(path, "wb") as f:
    for header in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(data)
    keys = list(dict.fromkeys(t.key for t in tensors))
    pickle.dump(keys, f, protocol=2)
    for key in keys:
      array = next(t.array for t in tensors if t.key == key)
      f.write(struct.pack("<q", array.size) + array.tobytes())


WRITERS = {"zip": write_zip, "legacy": write_legacy}


def _checkpoint():
  rng = np.random.default_rng(0)
  weight, bias = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
  model = Call(Global("collections", "OrderedDict"), [("module.conv.weight", Tensor(weight, "0")),
                                                      ("module.conv.bias", Tensor(bias, "1"))])
  step = Tensor(np.array([3], np.int64), "2", "LongStorage")
  ema = {"decay": 0.999, "num_updates": None,
         "shadow_params": [Call(Global("torch._utils", "_rebuild_parameter"), Tensor(weight, "3"), True,
                                Call(Global("collections", "OrderedDict")))]}
  optimizer = {"state": {0: {"step": step}}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}
  return {"model": model, "ema": ema, "optimizer": optimizer, "step": 5}, weight, bias


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_reads_checkpoint(tmp_path, fmt):
  obj, weight, bias = _checkpoint()
  WRITERS[fmt](tmp_path / "c.pth", obj)
  loaded = torch_pickle.load_pth(tmp_path / "c.pth")
  np.testing.assert_array_equal(loaded["model"]["module.conv.weight"], weight)
  np.testing.assert_array_equal(loaded["model"]["module.conv.bias"], bias)
  np.testing.assert_array_equal(loaded["ema"]["shadow_params"][0], weight)
  assert list(loaded["model"]) == ["module.conv.weight", "module.conv.bias"]
  assert loaded["step"] == 5 and loaded["ema"]["decay"] == 0.999
  assert loaded["optimizer"]["state"][0]["step"].dtype == np.int64
  assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_reads_strided_view(tmp_path):
  base = np.arange(24, dtype=np.float32)

  class View(Tensor):
    def __reduce__(self):  # x.reshape(4, 6)[:, 1::2]: offset 1, strides (6, 2)
      return (Global("torch._utils", "_rebuild_tensor_v2"),
              (Storage(self), 1, (4, 3), (6, 2), False, Call(Global("collections", "OrderedDict"))))

  write_zip(tmp_path / "v.pth", {"v": View(base, "0")})
  np.testing.assert_array_equal(torch_pickle.load_pth(tmp_path / "v.pth")["v"], base.reshape(4, 6)[:, 1::2])


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("torch", "load")])
def test_refuses_other_globals_without_running_them(tmp_path, fmt, module, name):
  marker = tmp_path / "ran"
  WRITERS[fmt](tmp_path / "evil.pth", {"x": Call(Global(module, name), f"open('{marker}', 'w')")})
  with pytest.raises(torch_pickle.PthError, match=f"{module}.{name}") as info:
    torch_pickle.load_pth(tmp_path / "evil.pth")
  assert "\n" not in str(info.value)
  assert not marker.exists()


def test_refuses_os_system_on_a_command(tmp_path):
  marker = tmp_path / "ran"
  write_zip(tmp_path / "evil.pth", {"x": Call(Global("os", "system"), f"touch {marker}")})
  with pytest.raises(torch_pickle.PthError, match="os.system"):
    torch_pickle.load_pth(tmp_path / "evil.pth")
  assert not os.path.exists(marker)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_truncated_file_is_one_line_error(tmp_path, fmt):
  obj, _, _ = _checkpoint()
  WRITERS[fmt](tmp_path / "c.pth", obj)
  data = (tmp_path / "c.pth").read_bytes()
  for cut in (len(data) // 3, len(data) - 10):
    (tmp_path / "t.pth").write_bytes(data[:cut])
    with pytest.raises(torch_pickle.PthError) as info:
      torch_pickle.load_pth(tmp_path / "t.pth")
    assert "\n" not in str(info.value)


def test_non_checkpoint_files(tmp_path):
  (tmp_path / "text.pth").write_text("hello, not a checkpoint\n")
  with pytest.raises(torch_pickle.PthError, match="not a PyTorch checkpoint"):
    torch_pickle.load_pth(tmp_path / "text.pth")
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
    z.writestr("readme.txt", "hi")
  with pytest.raises(torch_pickle.PthError, match="no single data.pkl"):
    torch_pickle.load_pth(tmp_path / "other.zip")
  write_zip(tmp_path / "list.pth", [1, 2])
  with pytest.raises(torch_pickle.PthError, match="not a dict"):
    torch_pickle.load_pth(tmp_path / "list.pth")
  with pytest.raises(FileNotFoundError):
    torch_pickle.load_pth(tmp_path / "missing.pth")


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_files_written_by_torch(fmt):
  """torch 2.13's own torch.save output (tests/fixtures/make_reference_fixtures.py), both formats."""
  fixtures = pathlib.Path(__file__).parent / "fixtures" / "reference"
  expected = np.load(fixtures / "torch_formats.npz")
  loaded = torch_pickle.load_pth(fixtures / f"torch_formats_{fmt}.pth")
  for name in expected.files:
    assert loaded["state_dict"][name].dtype == expected[name].dtype, name
    np.testing.assert_array_equal(loaded["state_dict"][name], expected[name])
  np.testing.assert_array_equal(loaded["shared"][0], expected["view"])
  np.testing.assert_array_equal(loaded["shared"][1][:, 1::2], expected["view"])
  assert loaded["step"] == 3
  np.testing.assert_array_equal(loaded["param"], np.ones(2, np.float32))
