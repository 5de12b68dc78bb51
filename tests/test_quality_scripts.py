"""FD-MNIST network, reference statistics files, config -> sampler options, and (slow) the
fid_stats.py / evaluate.py scripts end to end, including a resumed evaluation."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from score_sde import configs_util, evaluate
from score_sde.metrics import mnist, quality, stats

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _blocks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """28x28 images in [0, 1] of class k = a bright 7x7 block at one of 10 places, plus noise."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 10
  images = 0.1 * rng.uniform(size=(n, 28, 28, 1)).astype(np.float32)
  for i, k in enumerate(labels):
    row, col = divmod(int(k), 4)
    images[i, 7 * row:7 * row + 7, 7 * col:7 * col + 7] = 1.0
  return images, labels.astype(np.int32)


def test_fd_mnist_classifier_learns_and_round_trips(tmp_path):
  images, labels = _blocks(200)
  params = mnist.train(0, images, labels, num_steps=30, batch_size=50)
  test_images, test_labels = _blocks(100, seed=1)
  features, logits = mnist.apply(params, test_images)
  assert features.shape == (100, mnist.FEATURE_DIM) and logits.shape == (100, mnist.NUM_CLASSES)
  assert np.mean(np.argmax(logits, axis=1) == test_labels) > 0.9
  # The classifier score of well-classified, balanced digits approaches the number of classes.
  assert stats.inception_score(np.asarray(logits))[0] > 5
  mnist.save_params(tmp_path / "fd.npz", params)
  jax.tree.map(np.testing.assert_array_equal, mnist.load_params(tmp_path / "fd.npz"), params)
  with pytest.raises(FileNotFoundError, match="train_fd_classifier"):
    mnist.load_params(tmp_path / "missing.npz")


def test_reference_file_round_trip_and_quality(tmp_path):
  rng = np.random.default_rng(0)
  feats, logits = rng.standard_normal((300, 8)), rng.standard_normal((300, 5))
  reference = stats.FeatureStats.of(feats)
  quality.save_reference(tmp_path / "ref.npz", reference, stats.FeatureBank.empty(100, 8).update(feats))
  loaded = quality.load_reference(tmp_path / "ref.npz")
  np.testing.assert_allclose(loaded["sigma"], np.cov(feats, rowvar=False), rtol=1e-9)
  sample = quality.SampleStats.empty(300, 8, 5, kid_features=100)
  for i in range(0, 300, 64):
    sample = sample.update(feats[i:i + 64], logits[i:i + 64])
  result = quality.quality(sample, loaded)
  assert abs(result["fd"]) < 1e-9
  assert result["inception_score"]["mean"] == pytest.approx(stats.inception_score(logits)[0])
  assert result["kid"]["subset_size"] == 100  # both keep the same first 100 vectors
  assert result["kid"]["mean"] == pytest.approx(stats.kernel_distance(feats[:100], feats[:100], subset_size=100)[0])
  np.savez(tmp_path / "mu_only.npz", mu=np.zeros(8))
  with pytest.raises(ValueError, match="'mu' and 'sigma'"):
    quality.load_reference(tmp_path / "mu_only.npz")


def _script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], capture_output=True,
                        text=True, timeout=600, env=env, cwd=ROOT, check=False)
  if check:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  return done


@pytest.mark.slow  # 3-8 min on 2 busy cores: a training run and four script processes
def test_fid_stats_and_a_killed_evaluation_that_resumes(tmp_path):
  from score_sde import train  # pylint: disable=import-outside-toplevel
  images, _ = _blocks(60)
  np.savez(tmp_path / "digits.npz", images=np.round(images[..., 0] * 255).astype(np.uint8))
  overrides = [f"--config.data.path={tmp_path / 'digits.npz'}", "--config.data.num_heldout=20",
               "--config.model.nf=8", "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
               "--config.training.batch_size=8", "--config.eval.batch_size=20"]
  config = configs_util.load_config(ROOT / "configs/mnist/vp_unet.py", overrides)
  config.training.update(n_iters=2, eval_freq=1000, snapshot_freq=1000, snapshot_sampling=False)
  run = tmp_path / "run"
  train.train_and_evaluate(config, run, progress=False, devices=jax.devices()[:1])
  mnist.save_params(tmp_path / "fd.npz", mnist.init_params(jax.random.key(0)))
  net = ["--feature_net=fd_mnist", f"--fd_mnist_weights={tmp_path / 'fd.npz'}"]
  _script("fid_stats", "--config=configs/mnist/vp_unet.py", *overrides, "--split=test", *net,
          f"--out={tmp_path / 'ref.npz'}")
  reference = np.load(tmp_path / "ref.npz")
  assert reference["mu"].shape == (128,) and reference["sigma"].shape == (128, 128)
  assert int(reference["num_examples"]) == 20 and reference["features"].shape == (20, 128)

  evaluation = [f"--workdir={run}", f"--stats={tmp_path / 'ref.npz'}", *net, "--method=ddim", "--num_steps=2",
                "--num_samples=12", "--batch_size=4"]
  _script("evaluate", *evaluation)
  out = run / "eval" / "quality_2_ddim"
  fresh = json.loads(out.with_suffix(".json").read_text())
  assert fresh["fd"] > 0 and 1 <= fresh["inception_score"]["mean"] <= 10 and fresh["nfe"] == 3  # 2 steps + denoising
  assert fresh["kid"]["subset_size"] == 12 and not out.with_suffix(".partial").exists()

  # A run that dies before its JSON: all batches stay; drop the last as if killed while sampling it.
  out.with_suffix(".json").unlink()
  out.with_suffix(".json").mkdir()
  assert _script("evaluate", *evaluation, check=False).returncode != 0
  (out.with_suffix(".partial") / "batch_2.npz").unlink()
  out.with_suffix(".json").rmdir()
  resumed = _script("evaluate", *evaluation)
  assert "2/3" in resumed.stderr  # the bar starts after the two finished batches
  result = json.loads(out.with_suffix(".json").read_text())
  for key in ("fd", "inception_score", "kid", "nfe"):
    assert result[key] == pytest.approx(fresh[key], rel=1e-5), key


def test_samples_are_quantized_as_saved_images():
  x = np.array([-0.5, 0.0, 0.5, 1.0 / 255 - 1e-6, 1.0, 1.7])
  np.testing.assert_allclose(evaluate.as_saved_images(x), [0, 0, 127 / 255, 0, 1, 1], atol=1e-7)
