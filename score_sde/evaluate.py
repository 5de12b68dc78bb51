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

from score_sde import (checkpoint, configs_util, console, datasets, likelihood, losses, models, parallel, sampling,
                       schedules, testing)
from score_sde import sde as sde_lib
from score_sde.metrics import features as metrics_features
from score_sde.metrics import quality as metrics_quality
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


def model_score_fn(config: ml_collections.ConfigDict, sde: sde_lib.SDE, model: nn.Module, params
                   ) -> tuple[sde_lib.SDE, sde_lib.ScoreFn]:
  """(the SDE with a learned noise schedule's parameters bound in, the network's score under it), train=False.

  Fixed-schedule SDEs come back unchanged (`schedules.bind`)."""
  bound = schedules.bind(sde, params)
  return bound, models.get_score_fn(bound, model, params, train=False, continuous=config.training.continuous)


def get_sample_fn(config: ml_collections.ConfigDict, sde: sde_lib.SDE, model: nn.Module, num_samples: int
                  ) -> Callable[[Array, object], tuple[Array, Array]]:
  """Jitted (rng, params) -> (samples in data space, nfe) with the configured sampler.

  Samples are mapped back by the inverse data scaler ([0, 1] images; toys unchanged).
  """
  shape = (num_samples,) + datasets.data_shape(config)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  method, options = configs_util.sampler_options(config)

  @jax.jit
  def sample_fn(rng: Array, params) -> tuple[Array, Array]:
    bound, score_fn = model_score_fn(config, sde, model, params)
    x, nfe = sampling.sample(rng, score_fn, bound, shape, method=method, **options)
    return inverse_scaler(x), nfe

  return sample_fn


def eight_bit_values(x: Array, dequantized: bool) -> Array:
  """The {0..255} pixel values of data x in [0, 1]: floor(256 x) of dequantized data, round(255 x) otherwise."""
  return jnp.floor(x * 256.0) if dequantized else jnp.round(x * 255.0)


def _uniform_logp(config, rng, score_fn, sde, x):
  """log p_eps(scaler(x)) of (dequantized) data x in [0, 1]."""
  return likelihood.log_likelihood(rng, score_fn, sde, datasets.get_data_scaler(config)(x), **_ode_options(config))


def _encoder_logp(config, rng, score_fn, sde, x):
  """The forward-process bound on log P of the 8-bit values of x, spread over each pixel's bin."""
  scaler = datasets.get_data_scaler(config)
  pixels = eight_bit_values(x, config.data.uniform_dequantization)
  nll, nfe = likelihood.encoder_bound_nll(rng, score_fn, sde, scaler(pixels / 255.0),
                                          grid=likelihood.pixel_grid(scaler), **_ode_options(config))
  return likelihood.bin_log_density(-nll, x.shape[1:], scaler), nfe


def _ode_options(config) -> dict:
  return dict(rtol=config.eval.rtol, atol=config.eval.atol, eps=config.training.eps,
              variables=config.eval.ode_variables, error_norm=config.eval.ode_error_norm, solver=config.eval.ode_solver)


# config.eval.ode_dequantization -> how the ODE's density becomes a likelihood of 8-bit data:
# "uniform": x + U[0, 1) / 256 (score_sde, for models trained on dequantized data); "encoder": the
# forward process at eps with the pixel-grid decoder (`likelihood.encoder_bound_nll`, models of 8-bit data).
ODE_DEQUANTIZATIONS = {"uniform": _uniform_logp, "encoder": _encoder_logp}


def get_logp_fn(config: ml_collections.ConfigDict, sde: sde_lib.SDE, model: nn.Module
                ) -> Callable[[Array, object, Array], tuple[Array, Array]]:
  """Jitted (rng, params, x in [0, 1]) -> (log-density in nats [B], nfe) of the probability-flow ODE.

  Per config.eval.ode_dequantization (ODE_DEQUANTIZATIONS): log p_eps(scaler(x)), or the encoder bound on
  log P(8-bit x) as a model-space density (`likelihood.bin_log_density`); `likelihood.bits_per_dim`
  reads both. With "encoder", x must hold 8-bit values (data.uniform_dequantization=False) or their
  dequantization.
  """
  dequantization = config.eval.ode_dequantization
  if dequantization not in ODE_DEQUANTIZATIONS:
    raise ValueError(f"unknown eval.ode_dequantization {dequantization!r}; choose from {sorted(ODE_DEQUANTIZATIONS)}")
  logp_of = ODE_DEQUANTIZATIONS[dequantization]

  @jax.jit
  def logp_fn(rng: Array, params, x: Array) -> tuple[Array, Array]:
    bound, score_fn = model_score_fn(config, sde, model, params)
    return logp_of(config, rng, score_fn, bound, x)

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
                            mesh: Mesh | None = None, progress: bool = False) -> tuple[np.ndarray, int]:
  """Per-example bits/dim of the first `num_examples` (0: all) examples of `split`, and the total NFE.

  Batches of `batch_size` (default config.eval.batch_size) examples are split over `mesh` (default:
  all devices of all processes); every process returns all the results. With
  data.uniform_dequantization the examples are dequantized once ((y + u) / 256), so the mean is an
  upper bound on the discrete negative log-likelihood in bits/dim. With `progress`, a bar counts
  the examples done and shows the running bits/dim and score evaluations (NFE).
  """
  mesh = parallel.get_mesh() if mesh is None else mesh
  batches = split_batches(config, split, batch_size or config.eval.batch_size, mesh, num_examples)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  results, total_nfe = [], 0
  with console.progress_bar(total=num_examples or None, desc=f"{split} bits/dim", unit="example",
                            disable=not progress) as bar:
    for (logp, nfe), count in map_over_split(rng, get_logp_fn(config, sde, model), params, batches, mesh):
      results.append(np.asarray(likelihood.bits_per_dim(logp[:count], datasets.data_shape(config),
                                                        inverse_scaler=inverse_scaler)))
      total_nfe += int(nfe)
      bar.update(count)
      bar.set_postfix(bpd=f"{np.concatenate(results).mean():.3f}", nfe=total_nfe)
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


def feature_statistics_over_split(config: ml_collections.ConfigDict, feature_net: metrics_features.FeatureNet,
                                  split: str, batch_size: int, num_examples: int = 0, *, kid_features: int = 10_000,
                                  mesh: Mesh | None = None, progress: bool = False) -> metrics_quality.SampleStats:
  """Streaming feature statistics, classifier scores (1 split) and the first `kid_features` features of
  the first `num_examples` (0: all) images of `split`, read without dequantization noise (x / 255).

  `feature_net`: images [B, H, W, C] in [0, 1] -> (features, logits), e.g. `metrics.features.get_feature_net`.
  `progress`: a progress bar with ETA on the main process.
  """
  config = config.copy_and_resolve_references()
  config.data.uniform_dequantization = False
  mesh = parallel.get_mesh() if mesh is None else mesh
  available = len(datasets.get_source(config, split))
  total = min(num_examples or available, available)
  feature_params = parallel.replicate(feature_net.params, mesh)
  sample_stats = None
  batches = console.progress_bar(split_batches(config, split, batch_size, mesh, total), total=-(-total // batch_size),
                                 desc=f"features ({split})", unit="batch",
                                 disable=not (progress and parallel.is_main_process()))
  for images, count in batches:
    feats, logits = (np.asarray(a)[:count] for a in parallel.fetch(feature_net.apply(feature_params, images)))
    if sample_stats is None:
      sample_stats = metrics_quality.SampleStats.empty(total, feats.shape[1], logits.shape[1],
                                                       kid_features=kid_features)
    sample_stats = sample_stats.update(feats, logits)
  return sample_stats


def as_saved_images(x: Array) -> Array:
  """Samples in [0, 1] as the 8-bit images they would be saved as: floor(clip(255 x, 0, 255)) / 255.

  score_sde's evaluation feeds Inception `np.clip(samples * 255, 0, 255).astype(np.uint8)`, and
  pytorch-fid reads saved PNGs; pixels outside [0, 1] would otherwise dominate the features.
  """
  return jnp.floor(jnp.clip(x * 255.0, 0.0, 255.0)) / 255.0


def get_sample_feature_fn(config: ml_collections.ConfigDict, sde: sde_lib.SDE, model: nn.Module, method: str,
                          options: dict, feature_apply: Callable, num_samples: int, mesh: Mesh
                          ) -> Callable[[Array, Any, Any], tuple[Array, Array, Array]]:
  """Jitted (key, params, feature_params) -> (features, logits, nfe) of `num_samples` samples of `method`
  quantized to 8 bits (`as_saved_images`), split over `mesh`; `feature_apply` is a `FeatureNet.apply`.
  The images never leave the devices."""
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  shape = (num_samples,) + datasets.data_shape(config)

  def batch_fn(key, params, feature_params):
    bound, score_fn = model_score_fn(config, sde, model, params)
    x, nfe = sampling.sample(key, score_fn, bound, shape, method=method, **options)
    images = jax.lax.with_sharding_constraint(as_saved_images(inverse_scaler(x)), parallel.batch_sharding(mesh))
    return (*feature_apply(feature_params, images), nfe)

  return jax.jit(batch_fn, out_shardings=(parallel.batch_sharding(mesh),) * 2 + (parallel.replicated(mesh),))
