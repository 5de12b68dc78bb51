"""The command-line programs: expected errors are one stderr line (exit 1, no traceback) found before any
output is written; config -> sampler options in one place; configs from the installed package; the
demo and classifier programs run; a non-editable install trains, samples and evaluates."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import base
from score_sde import configs_util, datasets, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = str(ROOT / "configs/toy/vp_mlp.py")
DIGITS = str(ROOT / "configs/digits/vp_unet.py")
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> pathlib.Path:
  """A 2-step toy run with its final checkpoint."""
  workdir = tmp_path_factory.mktemp("toy_run")
  config = configs_util.load_config(TOY, ["--config.model.nf=16", "--config.model.num_res_blocks=1",
                                          "--config.training.n_iters=2", "--config.training.batch_size=16",
                                          "--config.training.snapshot_sampling=False"])
  train.train_and_evaluate(config, workdir, progress=False)
  return workdir


def _program(name: str, *args: str, env: dict | None = None, cwd: pathlib.Path | None = None) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _assert_one_line_error(process: subprocess.Popen, message: str) -> None:
  _, stderr = process.communicate(timeout=TIMEOUT_S)
  assert process.returncode == 1, (process.args, stderr)
  assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
  assert message in stderr, stderr


def test_every_expected_error_is_one_line_and_leaves_nothing_behind(tmp_path, toy_run):
  """The cases a new user ran into; all programs start at once to share the import time."""
  (tmp_path / "not_images").mkdir()
  (tmp_path / "not_images" / "notes.txt").write_text("no images here")
  new = tmp_path / "new"  # no program may create it
  damaged = shutil.copytree(toy_run, tmp_path / "damaged")
  for array_file in (damaged / "checkpoints" / "2" / "state").rglob("d/*"):
    array_file.unlink()
  two_devices = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  cases = [
      (_program("train", f"--config={DIGITS}", f"--workdir={new}", "--config.data.path=/no/such/folder"),
       "config.data.path='/no/such/folder' does not exist"),
      (_program("train", f"--config={DIGITS}", f"--workdir={new}", f"--config.data.path={tmp_path / 'not_images'}"),
       "holds no IDX files, .npz or PNGs"),
      (_program("train", f"--config={DIGITS}", f"--workdir={new}", "--config.data.dataset=SVHN",
                "--config.data.image_size=32", "--config.data.num_channels=3"), "TFDS dataset 'svhn_cropped'"),
      (_program("train", f"--config={TOY}", f"--workdir={new}", "--config.training.batch_size=3", env=two_devices),
       "training.batch_size=3 is not divisible by the 2 devices"),
      (_program("train", f"--config={TOY}"), "--workdir is required"),
      (_program("sample", f"--workdir={toy_run}", "--num=0"), "--num=0"),
      (_program("sample", f"--workdir={toy_run}", "--method=foo"), "unknown sampling method 'foo'"),
      (_program("sample", f"--workdir={toy_run}", "--inpaint=center"), "need an image model"),
      (_program("sample", f"--workdir={new}"), f"--workdir={new} is not a directory"),
      (_program("likelihood", f"--workdir={new}"), f"--workdir={new} is not a directory"),
      (_program("likelihood", f"--workdir={damaged}"), "checkpoint"),  # no orbax "Task exception" flood
      (_program("train_classifier", f"--config={TOY}", f"--workdir={new}"), "needs labelled images"),
  ]
  usage = _program("sample", "--help")
  start = time.perf_counter()
  for process, message in cases:
    _assert_one_line_error(process, message)
  help_text = usage.communicate(timeout=TIMEOUT_S)[0]  # the flags of score_sde/cli/sample.py and common.py
  assert all(re.search(rf"--(\[no\])?{flag}:", help_text) for flag in ("num_steps", "step", "use_ema", "verbose"))
  assert time.perf_counter() - start < 120  # the TFDS case among them: seconds, not a download timeout
  assert not new.exists()
  assert sorted(p.name for p in toy_run.iterdir()) == ["checkpoints", "checkpoints-meta", "metrics.jsonl", "samples",
                                                        "tensorboard"]


@pytest.mark.slow  # ~20 s on two busy cores
def test_sample_and_likelihood_name_their_outputs_and_show_progress(tmp_path, toy_run):
  workdir = shutil.copytree(toy_run, tmp_path / "run")
  cache = tmp_path / "cache"  # every compiled program goes there, however fast it compiled
  sample = _program("sample", f"--workdir={workdir}", "--num=4", "--method=pc", "--num_steps=3", "--seed=7",
                    f"--compilation_cache={cache}", env={**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  bpd = _program("likelihood", f"--workdir={workdir}", "--num_examples=4", "--batch_size=4", "--step=2",
                 "--ode_solver=bosh3", "--rtol=1e-3")
  for process in (sample, bpd):
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr
    assert "INFO" not in stderr and " I1" not in stderr  # absl/orbax INFO lines are off without --verbose
  assert "nfe=" in stderr  # the bits/dim bar counts score evaluations
  name = "samples_step2_pc_nfe7_seed7"  # 3 predictor and 3 corrector steps, then the denoising step
  assert sorted(p.name for p in (workdir / "samples_cli").iterdir()) == [f"{name}.npz", f"{name}.png"]
  assert np.load(workdir / "samples_cli" / f"{name}.npz")["samples"].shape == (4, 2)
  result = json.loads((workdir / "eval" / "bpd_test_2_first4.json").read_text())
  assert result["ode_bpd"]["num_examples"] == 4
  assert (result["ode_solver"], result["rtol"], result["atol"]) == ("bosh3", 1e-3, 1e-5)  # atol from the config
  assert any(cache.iterdir())


def test_sampler_options_come_from_the_config_and_the_overrides():
  config = configs_util.load_config(TOY, ["--config.sampling.num_steps=7", "--config.sampling.solver=euler"])
  assert configs_util.sampler_options(config) == ("ode", {"solver": "euler", "rtol": 1e-4, "atol": 1e-4,
                                                          "denoise": True, "num_steps": 7,
                                                          "variables": "time"})
  method, options = configs_util.sampler_options(config, method="pc", num_steps=None)
  assert method == "pc" and options["num_steps"] == 7 and options["n_steps"] == config.sampling.n_steps_each
  assert options["denoise"] is config.sampling.noise_removal and "solver" not in options
  config.sampling.num_steps = 0  # the sampler's own step count
  assert "num_steps" not in configs_util.sampler_options(config)[1]
  assert configs_util.sampler_options(config, num_steps=5)[1]["num_steps"] == 5
  with pytest.raises(ValueError, match="unknown sampling method 'foo'"):
    configs_util.sampler_options(config, method="foo")
  with pytest.raises(ValueError, match="takes no option \\['snr'\\]"):
    configs_util.sampler_options(config, method="ode", snr=0.1)


def test_a_saved_config_loses_the_fields_removed_since():
  saved = base.get_base_config().to_dict()
  saved["sampling"]["probability_flow"] = True
  saved["eval"].update(begin_ckpt=1, num_samples=50000)
  config = configs_util.with_defaults(json.loads(json.dumps(saved)))
  assert "probability_flow" not in config.sampling and "begin_ckpt" not in config.eval
  assert config.to_dict() == json.loads(json.dumps(base.get_base_config().to_dict()))


def test_config_paths_resolve_against_the_installed_package(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert pathlib.Path(configs_util.resolve_config_path("configs/toy/vp_mlp.py")).samefile(TOY)
  with pytest.raises(FileNotFoundError, match="configs/toy/nope.py"):
    configs_util.resolve_config_path("configs/toy/nope.py")


@pytest.mark.slow  # ~45 s on two busy cores: compiles the classifier
def test_train_classifier_saves_a_classifier_that_sample_reads(tmp_path):
  clf = tmp_path / "clf"
  done = subprocess.run([sys.executable, str(ROOT / "scripts/train_classifier.py"), f"--config={DIGITS}",
                         f"--workdir={clf}", "--steps=2", "--config.model.nf=8", "--config.training.batch_size=8"],
                        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert done.returncode == 0, done.stderr
  config, _, step = train.evaluate.restore_run(clf)
  assert step == 2 and config.model.name == "noise_classifier" and config.model.num_classes == 10


@pytest.mark.slow  # ~90 s on two busy cores: trains, samples and evaluates the digits U-Net
def test_demo_trains_samples_and_reports_bits_per_dim(tmp_path):
  done = subprocess.run([sys.executable, str(ROOT / "scripts/demo.py"), f"--workdir={tmp_path}", "--num_samples=4",
                         "--config.training.n_iters=2", "--config.model.nf=8", "--config.eval.bpd_num_examples=4",
                         "--config.training.batch_size=8"],
                        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert done.returncode == 0, done.stderr
  assert "trained 2 steps" in done.stdout and "over 4 held-out digits" in done.stdout
  assert (tmp_path / "samples.png").exists()


@pytest.mark.slow  # ~2-3 min: a fresh venv, pip install of the dependencies from the local index
def test_a_non_editable_install_trains_samples_and_evaluates_from_anywhere(tmp_path):
  source = tmp_path / "source"
  for part in ("score_sde", "configs"):
    shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(ROOT / "setup.py", source)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT_S)
  subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(source)], check=True, timeout=600,
                 capture_output=True)
  shutil.rmtree(source)  # nothing may come from the source tree
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()

  def console(name: str, *args: str) -> str:
    done = subprocess.run([str(venv / "bin" / f"score-sde-{name}"), *args], cwd=elsewhere, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout

  console("train", "--config", "configs/toy/vp_mlp.py", "--workdir", "run", "--config.training.n_iters=4",
          "--config.training.batch_size=16", "--config.model.nf=16", "--config.training.snapshot_sampling=False")
  console("sample", "--workdir", "run", "--num=8", "--method=ddim", "--num_steps=5")
  console("likelihood", "--workdir", "run", "--num_examples=8", "--batch_size=8")
  assert (elsewhere / "run" / "samples_cli" / "samples_step4_ddim_nfe6_seed0.npz").exists()  # 5 steps + denoising
  assert json.loads((elsewhere / "run" / "eval" / "bpd_test_4_first8.json").read_text())["ode_bpd"]["mean"] > 0


def test_every_leaf_config_has_the_fields_of_base_and_each_is_read_by_the_code():
  """A field only a leaf config sets would be dropped by with_defaults; a field no code names does nothing."""
  def fields(tree: dict, prefix: str = "") -> set[str]:
    return set().union(*[fields(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k} for k, v in tree.items()])

  expected = fields(base.get_base_config().to_dict())
  for path in sorted((ROOT / "configs").glob("*/*.py")):
    assert fields(configs_util.load_config(path).to_dict()) == expected, path
  code = "\n".join(p.read_text() for p in (ROOT / "score_sde").rglob("*.py"))
  names = {field: field.rsplit(".", 1)[-1] for field in expected}
  assert not [f for f in sorted(expected) if not re.search(rf"\.{names[f]}\b|\"{names[f]}\"", code)]


def test_a_png_that_is_not_an_image_is_named(tmp_path):
  (tmp_path / "a.png").write_bytes(b"not a png")
  config = configs_util.load_config(DIGITS, [f"--config.data.path={tmp_path}", "--config.data.num_heldout=1"])
  with pytest.raises(ValueError, match="a.png under config.data.path is not a readable PNG"):
    datasets.get_source(config, "train")
