"""Converted reference checkpoints compute what the reference computes (fixtures: tests/fixtures/reference)."""
import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import configs_util, convert, datasets, models
from score_sde import sde as sde_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "reference"
# The default suite checks one case per code path of the reader (zip .pth, msgpack) and the VE / VP /
# sub-VP score functions; every other architecture x format case runs with the slow tests.
CASES = ["ncsnpp_cifar10", "ddpmpp", "jax_ncsnv2"] + [pytest.param(name, marks=pytest.mark.slow) for name in (
    "ncsnpp_256", "ddpm", "ncsnpp_smld", "jax_ncsnpp_cifar10", "jax_ncsnpp_256", "jax_ddpm")]
TOLERANCE = 1e-4  # max |ours - reference| / max |reference|


def _override_flags(overrides: dict) -> list[str]:
  as_text = lambda v: "(" + ",".join(map(str, v)) + ",)" if isinstance(v, list) else str(v)
  return [f"--config.{k}={as_text(v)}" for k, v in overrides.items()]


def _case(name: str, *extra: str):
  """(fixture arrays, our config for it, override flags)."""
  arrays = dict(np.load(FIXTURES / f"{name}.npz"))
  meta = json.loads(str(arrays.pop("meta")))
  flags = _override_flags({**meta["overrides"], **meta["our_overrides"]}) + list(extra)
  return arrays, configs_util.load_config(REPO / meta["our_config"], flags), meta, flags


def _relative_error(ours, reference) -> float:
  return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def _source(name: str) -> pathlib.Path:
  return FIXTURES / (f"{name}_checkpoint_7" if name.startswith("jax_") else f"{name}.pth")


@pytest.fixture(scope="module", params=CASES)
def converted(request):
  """(case, fixture arrays, jitted network apply(params, x, labels), {model, ema: params}, step)."""
  arrays, config, _, _ = _case(request.param)
  model = models.get_model(config)
  params, ema_params, step = convert.load_checkpoint(_source(request.param), model, arrays["x"].shape[1:])
  apply = jax.jit(lambda p, x, labels: model.apply({"params": p}, x, labels, train=False))
  return request.param, arrays, apply, {"model": params, "ema": ema_params}, step


def test_network_outputs_match_reference(converted):
  name, arrays, apply, weights, step = converted
  assert step == 7
  for which, params in weights.items():
    out = apply(params, jnp.asarray(arrays["x"]), jnp.asarray(arrays["labels"]))
    error = _relative_error(out, arrays[f"out_{which}"])
    assert error <= TOLERANCE, f"{name} {which}: relative error {error:.2e}"
  assert _relative_error(arrays["out_model"], arrays["out_ema"]) > 0.1  # EMA weights are a different network


def test_score_functions_match_reference(converted):
  """models.score_from_model_fn (the body of get_score_fn) against the reference's get_score_fn."""
  name, arrays, apply, weights, _ = converted
  keys = [k for k in arrays if k.startswith("score_")]
  assert keys or name.startswith("jax_")  # the JAX fixtures hold network outputs only
  for key in keys:
    _, which, sde_name, time = key.split("_")
    config = _case(name, f"--config.training.sde={sde_name}")[1]
    model_fn = functools.partial(apply, weights[which])
    score_fn = models.score_from_model_fn(sde_lib.get_sde(config), model_fn, continuous=time == "continuous")
    error = _relative_error(score_fn(jnp.asarray(arrays["x"]), jnp.asarray(arrays["t"])), arrays[key])
    assert error <= TOLERANCE, f"{name} {key}: relative error {error:.2e}"


def test_wrong_config_names_first_offending_tensor():
  arrays, _, meta, flags = _case("ddpmpp")
  config = configs_util.load_config(REPO / meta["our_config"], flags + ["--config.model.nf=16"])
  with pytest.raises(convert.ConversionError, match=r"module\.all_modules\.0\.weight .* Dense_0/kernel"):
    convert.convert_pytorch(convert.load_pth(FIXTURES / "ddpmpp.pth"), models.get_model(config), arrays["x"].shape[1:])


def test_missing_and_extra_tensors_are_named():
  arrays, config, _, _ = _case("ddpmpp")
  model = models.get_model(config)
  checkpoint = convert.load_pth(FIXTURES / "ddpmpp.pth")
  last = list(checkpoint["model"])[-1]
  del checkpoint["model"][last]
  with pytest.raises(convert.ConversionError, match="nothing for Conv_"):
    convert.convert_pytorch(checkpoint, model, arrays["x"].shape[1:])
  checkpoint = convert.load_pth(FIXTURES / "ddpmpp.pth")
  checkpoint["model"]["module.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(convert.ConversionError, match=r"module\.extra\.weight"):
    convert.convert_pytorch(checkpoint, model, arrays["x"].shape[1:])
  with pytest.raises(convert.ConversionError, match="no 'model' state dict"):
    convert.convert_pytorch({"params": {}}, model, arrays["x"].shape[1:])


def test_flax_mismatch_names_tensor(tmp_path):
  arrays, config, _, _ = _case("jax_ddpm")
  model = models.get_model(config)
  state = convert.load_msgpack(_source("jax_ddpm"))
  del state["params_ema"]["AttnBlock_1"]["NIN_2"]
  with pytest.raises(convert.ConversionError, match="params_ema has no AttnBlock_1/NIN_2/W for our AttnBlock_1/Dense_2"):
    convert.convert_flax(state, model, arrays["x"].shape[1:])
  (tmp_path / "t").write_bytes(_source("jax_ddpm").read_bytes()[:1000])
  with pytest.raises(convert.ConversionError, match="not a readable flax msgpack"):
    convert.load_checkpoint(tmp_path / "t", model, arrays["x"].shape[1:])


def test_cli_writes_workdir_only_on_success(tmp_path):
  _, config, meta, flags = _case("ncsnpp_cifar10")
  step = convert.convert_to_workdir(FIXTURES / "ncsnpp_cifar10.pth", config, tmp_path / "run")
  assert step == 7 and (tmp_path / "run" / "checkpoints" / "7").is_dir()
  with pytest.raises(FileExistsError):
    convert.convert_to_workdir(FIXTURES / "ncsnpp_cifar10.pth", config, tmp_path / "run")
  truncated = tmp_path / "t.pth"
  truncated.write_bytes((FIXTURES / "ncsnpp_cifar10.pth").read_bytes()[:5000])
  wrong = configs_util.load_config(REPO / meta["our_config"], flags + ["--config.model.num_res_blocks=2"])
  for source, cfg in ((truncated, config), (FIXTURES / "ncsnpp_cifar10.pth", wrong)):
    with pytest.raises(ValueError):
      convert.convert_to_workdir(source, cfg, tmp_path / "bad")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "t.pth"]


def test_cli_error_is_one_line(tmp_path):
  _, _, meta, flags = _case("ncsnpp_cifar10")
  result = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_checkpoint.py"),
                           "--source", str(FIXTURES / "ddpmpp.pth"), "--config", str(REPO / meta["our_config"]),
                           "--workdir", str(tmp_path / "run"), *flags], capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("convert_checkpoint.py: error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr and "module.all_modules" in errors[0]
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_converted_checkpoint_samples_and_gives_bits_per_dim(tmp_path):
  """Round trip from the command line: convert, scripts/sample.py, scripts/likelihood.py."""
  arrays, _, meta, flags = _case("ncsnpp_cifar10")
  images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  np.savez(tmp_path / "data.npz", x_train=images, x_test=images)
  run = lambda script, *args: subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)],
                                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
  result = run("convert_checkpoint.py", "--source", FIXTURES / "ncsnpp_cifar10.pth", "--config",
               REPO / meta["our_config"], "--workdir", tmp_path / "run", *flags, "--config.data.dataset=files",
               f"--config.data.path={tmp_path / 'data.npz'}")
  assert result.returncode == 0, result.stderr[-2000:]
  result = run("sample.py", "--workdir", tmp_path / "run", "--num", 2, "--batch_size", 2, "--num_steps", 3,
               "--out", tmp_path / "samples")
  assert result.returncode == 0, result.stderr[-2000:]
  (samples_file,) = (tmp_path / "samples").glob("samples_*.npz")
  assert np.all(np.isfinite(next(iter(np.load(samples_file).values()))))
  result = run("likelihood.py", "--workdir", tmp_path / "run", "--num_examples", 2, "--batch_size", 2)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "bpd" in result.stdout + result.stderr


def test_score_sde_ddpm_has_reference_parameter_count():
  """The layout of score_sde's released DDPM checkpoints (its models/ddpm.py on CIFAR-10)."""
  config = configs_util.load_config(REPO / "configs/cifar10/vp_ddpm.py", ["--config.model.name=ddpm_score_sde"])
  slots = convert.parameter_order(models.get_model(config), (32, 32, 3))
  assert sum(int(np.prod(s.shape)) for s in slots) == 35_218_947


SHAPES = json.loads((FIXTURES / "param_shapes.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("our_config", sorted(SHAPES))
def test_every_network_config_fits_the_full_size_reference(our_config):
  """Names and shapes (no values) of each full-size reference network map one to one onto ours."""
  entry = SHAPES[our_config]
  config = configs_util.load_config(REPO / our_config, _override_flags(entry["our_overrides"]))
  model, x_shape = models.get_model(config), datasets.data_shape(config)
  tensors = [(name, np.broadcast_to(np.float32(0), shape)) for name, shape in entry["tensors"]]
  slots = convert.parameter_order(model, x_shape)
  if entry["format"] == "pytorch":
    named = [(k, v) for k, v in tensors if k.split(".")[-1] not in convert.BUFFERS]
    assert len(named) == len(slots)
    for slot, (key, value) in zip(slots, named):
      assert convert._to_ours(slot, key, value).shape == slot.shape, (slot.name, key)
    assert entry["ema"] == sum(slot.trainable for slot in slots)
  else:
    tree: dict = {}
    for name, value in tensors:
      *parents, leaf = name.split("/")
      node = tree
      for key in parents:
        node = node.setdefault(key, {})
      node[leaf] = value
    names = convert._flax_names(model, x_shape, tree)
    sizes = dict((tuple(k.split("/")), v.size) for k, v in tensors)
    assert sorted(names.values()) == sorted(sizes)
    assert all(sizes[names[slot.path]] == int(np.prod(slot.shape)) for slot in slots)
