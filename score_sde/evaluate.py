"""Evaluation: bits/dim over a data split, sample metrics, and sample figures (PNG grids, scatter plots)."""
from __future__ import annotations

import pathlib
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from PIL import Image, ImageDraw

from score_sde import checkpoint, datasets, likelihood, losses, models, parallel, sampling, testing
from score_sde import sde as sde_lib
from score_sde.train_state import TrainState

Array = jax.Array


def state_template(config: ml_collections.ConfigDict) -> TrainState:
  """The abstract train state (shapes and dtypes only) that a checkpoint of `config` restores into."""
  model = models.get_model(config)
  optimizer = losses.get_optimizer(config)
  return jax.eval_shape(lambda: TrainState.create(
      models.init_params(jax.random.key(0), model, datasets.data_shape(config)), optimizer))


def restore_run(workdir: str | pathlib.Path, step: int | None = None
                ) -> tuple[ml_collections.ConfigDict, TrainState, int]:
  """(config saved with it, train state, step) of checkpoint `step` (default: the latest) of a run."""
  return checkpoint.restore_run(workdir, step, template_fn=state_template)


def sampling_options(config: ml_collections.ConfigDict) -> dict:
  """The `config.sampling` fields that `sampling.sample(method=config.sampling.method)` accepts."""
  s = config.sampling
  candidates = {"solver": s.solver, "rtol": s.rtol, "atol": s.atol, "predictor": s.predictor,
                "corrector": s.corrector, "snr": s.snr, "n_steps": s.n_steps_each, "denoise": s.noise_removal}
  if s.num_steps > 0:
    candidates["num_steps"] = s.num_steps
  accepted = sampling.options_of(s.method)
  return {name: value for name, value in candidates.items() if name in accepted}


def get_sample_fn(config: ml_collections.ConfigDict, sde: sde_lib.SDE, model: nn.Module, num_samples: int
                  ) -> Callable[[Array, object], tuple[Array, Array]]:
  """Jitted (rng, params) -> (samples in data space, nfe) with the configured sampler.

  Samples are mapped back by the inverse data scaler ([0, 1] images; toys unchanged).
  """
  shape = (num_samples,) + datasets.data_shape(config)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  options = sampling_options(config)

  @jax.jit
  def sample_fn(rng: Array, params) -> tuple[Array, Array]:
    score_fn = models.get_score_fn(sde, model, params, train=False, continuous=config.training.continuous)
    x, nfe = sampling.sample(rng, score_fn, sde, shape, method=config.sampling.method, **options)
    return inverse_scaler(x), nfe

  return sample_fn


def get_logp_fn(config: ml_collections.ConfigDict, sde: sde_lib.SDE, model: nn.Module
                ) -> Callable[[Array, object, Array], tuple[Array, Array]]:
  """Jitted (rng, params, x in [0, 1]) -> (log p(scaler(x)) in nats [B], nfe), probability-flow ODE."""
  scaler = datasets.get_data_scaler(config)

  @jax.jit
  def logp_fn(rng: Array, params, x: Array) -> tuple[Array, Array]:
    score_fn = models.get_score_fn(sde, model, params, train=False, continuous=config.training.continuous)
    return likelihood.log_likelihood(rng, score_fn, sde, scaler(x), rtol=config.eval.rtol, atol=config.eval.atol,
                                     eps=config.training.eps, variables=config.eval.get("ode_variables", "time"))

  return logp_fn


def split_batches(config: ml_collections.ConfigDict, split: str, batch_size: int, mesh: Mesh,
                  num_examples: int = 0) -> Iterator[tuple[Array, int]]:
  """(global batch of `batch_size` examples split over `mesh`, number of real examples) for each batch.

  One ordered pass over the first `num_examples` (0: all) examples of `split`, in [0, 1] (with
  data.uniform_dequantization, the noise of batch k depends only on (config.seed, split, k)). The
  last batch is padded by repeating its last example, so every batch has one compiled shape; a
  subset smaller than `batch_size` gets one batch of `num_examples` rounded up to a multiple of the
  device count, not a full padded batch. Each process contributes its own rows
  (`parallel.process_rows`) to the global array; it reads whole batches, as `datasets.get_dataset`
  selects rows only of repeated streams.
  """
  if num_examples:
    batch_size = min(batch_size, -(-num_examples // mesh.size) * mesh.size)
  rows = parallel.process_rows(batch_size, mesh)
  seen = 0
  for batch in datasets.get_dataset(config, split, batch_size=batch_size, repeat=False):
    x = batch["image"][:num_examples - seen] if num_examples else batch["image"]
    padded = np.concatenate([x, np.repeat(x[-1:], batch_size - len(x), axis=0)])
    yield parallel.global_batch(padded[rows], mesh), len(x)
    seen += len(x)
    if num_examples and seen >= num_examples:
      return


def map_over_split(rng: Array, batch_fn: Callable[[Array, Any, Array], Any], params,
                   batches: Iterable[tuple[Array, int]], mesh: Mesh) -> Iterator[tuple[Any, int]]:
  """(batch_fn(fold_in(rng, k), params, x_k) fetched to every process, count_k) for the batches (x_k, count_k).

  The key of batch k depends only on (rng, k) and the batches are the same global arrays however
  many processes hold them, so P processes give the results of one process with as many devices.
  Random draws do not depend on the devices either (partitionable threefry); a different number of
  devices changes only float rounding, which an adaptive solve can amplify up to its tolerance.
  Rows from count_k on are padding.
  """
  rng, params = parallel.replicate(rng, mesh), parallel.replicate(params, mesh)
  for k, (x, count) in enumerate(batches):
    yield parallel.fetch(batch_fn(jax.random.fold_in(rng, k), params, x)), count


def bits_per_dim_over_split(rng: Array, config: ml_collections.ConfigDict, sde: sde_lib.SDE, model: nn.Module,
                            params, split: str = "test", num_examples: int = 0, *, batch_size: int | None = None,
                            mesh: Mesh | None = None) -> tuple[np.ndarray, int]:
  """Per-example bits/dim of the first `num_examples` (0: all) examples of `split`, and the total NFE.

  Batches of `batch_size` (default config.eval.batch_size) examples are split over `mesh` (default:
  all devices of all processes); every process returns all the results. With
  data.uniform_dequantization the examples are dequantized once ((y + u) / 256), so the mean is an
  upper bound on the discrete negative log-likelihood in bits/dim.
  """
  mesh = parallel.get_mesh() if mesh is None else mesh
  batches = split_batches(config, split, batch_size or config.eval.batch_size, mesh, num_examples)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  results, total_nfe = [], 0
  for (logp, nfe), count in map_over_split(rng, get_logp_fn(config, sde, model), params, batches, mesh):
    results.append(np.asarray(likelihood.bits_per_dim(logp[:count], datasets.data_shape(config),
                                                      inverse_scaler=inverse_scaler)))
    total_nfe += int(nfe)
  return np.concatenate(results), total_nfe


def sample_metrics(rng: Array, samples: Array, reference: Array) -> dict[str, float]:
  """Sliced 2-Wasserstein distance between samples and as many reference points."""
  n = min(len(samples), len(reference))
  return {"sliced_wasserstein": float(testing.sliced_wasserstein(rng, jnp.asarray(samples[:n]),
                                                                 jnp.asarray(reference[:n])))}


def save_image_grid(path: str | pathlib.Path, images: np.ndarray, padding: int = 1, scale: int = 4) -> None:
  """Writes images [N, H, W, C] in [0, 1] as one PNG grid of ceil(sqrt N) columns, upscaled `scale` x."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, height, width, channels = images.shape
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.ones(((height + padding) * rows + padding, (width + padding) * cols + padding, channels), np.float32)
  for i, image in enumerate(images):
    top, left = padding + (i // cols) * (height + padding), padding + (i % cols) * (width + padding)
    grid[top:top + height, left:left + width] = image
  pixels = np.round(grid * 255).astype(np.uint8)
  picture = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
  picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST).save(path)


def save_scatter(path: str | pathlib.Path, points: np.ndarray, reference: np.ndarray | None = None,
                 size: int = 512) -> None:
  """Writes 2-D points (black; optional reference points in light red underneath) as a PNG scatter plot."""
  layers = [np.asarray(p, np.float64) for p in ([reference] if reference is not None else []) + [points]]
  everything = np.concatenate(layers)
  low, high = np.percentile(everything, 0.5, axis=0), np.percentile(everything, 99.5, axis=0)
  center, half = (low + high) / 2, 0.6 * np.max(high - low)
  picture = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(picture)
  colors = ([(240, 150, 150)] if reference is not None else []) + [(0, 0, 0)]
  for layer, color in zip(layers, colors):
    pixels = (layer[:, :2] - center + half) / (2 * half) * size
    for x, y in pixels:
      draw.ellipse((x - 1, size - y - 1, x + 1, size - y + 1), fill=color)
  picture.save(path)
