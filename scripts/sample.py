"""Sample a trained model: `python scripts/sample.py --workdir runs/x [--step K] [--method pc] [--num 64]`.

Loads the EMA parameters of the latest (or --step) checkpoint of --workdir and the config saved with
it, samples in batches and writes <out>/samples.npz (images in [0, 1], labels) and a PNG grid.
Conditioning (score_sde/controllable.py):
  --class_label K [--guidance_scale W]   classifier-free guidance of a class-conditional model
                                         (model.num_classes > 0); W = 1 is the plain conditional
  --class_label K --classifier_workdir D [--guidance_scale W]
                                         classifier guidance of an unconditional model with the
                                         classifier of scripts/train_classifier.py
  --inpaint MASK                         inpaint test images of the dataset (MASK: right_half,
                                         bottom_half, center); each grid cell shows the original,
                                         the observed part and the sample from top to bottom
  --colorize                             colorize the gray levels of 3-channel test images
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root: `configs`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402
from absl import app, flags  # noqa: E402

from score_sde import checkpoint, controllable, datasets, evaluate, models, sampling  # noqa: E402
from score_sde import sde as sde_lib  # noqa: E402

flags.DEFINE_string("workdir", None, "training directory holding checkpoints/ and checkpoints-meta/")
flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
flags.DEFINE_string("method", None, "sampling method (default: config.sampling.method)")
flags.DEFINE_integer("num_steps", None, "sampler steps (default: the sampler's own)")
flags.DEFINE_integer("num", 64, "number of samples")
flags.DEFINE_integer("batch_size", 64, "samples per batch")
flags.DEFINE_integer("seed", 0, "PRNG seed")
flags.DEFINE_string("out", None, "output directory (default: <workdir>/samples_cli)")
flags.DEFINE_integer("class_label", None, "class to sample")
flags.DEFINE_float("guidance_scale", 1.0, "guidance scale w")
flags.DEFINE_string("classifier_workdir", None, "workdir of scripts/train_classifier.py (classifier guidance)")
flags.DEFINE_enum("inpaint", None, ["right_half", "bottom_half", "center"], "region of the test images to inpaint")
flags.DEFINE_bool("colorize", False, "colorize gray test images")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def _right_half(h: int, w: int) -> np.ndarray:
  return (np.arange(w) < w // 2)[None, :].repeat(h, 0)


def _bottom_half(h: int, w: int) -> np.ndarray:
  return _right_half(w, h).T


def _center(h: int, w: int) -> np.ndarray:
  rows, cols = np.abs(np.arange(h) - (h - 1) / 2), np.abs(np.arange(w) - (w - 1) / 2)
  return ~((rows[:, None] < h / 4) & (cols[None, :] < w / 4))


# --inpaint region -> mask [H, W], 1 where the pixel is known (outside the region).
MASKS = {"right_half": _right_half, "bottom_half": _bottom_half, "center": _center}


def restore(workdir: str, step: int | None):
  """(config, model, EMA params, step) of checkpoint `step` (default the latest) of `workdir`."""
  try:
    config, state, step = evaluate.restore_run(workdir, step)
  except checkpoint.CheckpointError as e:
    sys.exit(str(e))
  return config, models.get_model(config), state.ema_params, step


def sampler_options(config, method: str, accepted) -> dict:
  """The config.sampling fields (and --num_steps) that `method` accepts."""
  s = config.sampling
  candidates = {"solver": s.solver, "rtol": s.rtol, "atol": s.atol, "predictor": s.predictor, "corrector": s.corrector,
                "snr": s.snr, "n_steps": s.n_steps_each, "denoise": s.noise_removal, "num_steps": FLAGS.num_steps}
  return {k: v for k, v in candidates.items() if k in accepted and v is not None}


def class_score_fn(config, sde, model, params, labels):
  """The guided score for --class_label: classifier-free (conditional model) or classifier guidance."""
  continuous = config.training.continuous
  if FLAGS.classifier_workdir:
    clf_config, classifier, clf_params, _ = restore(FLAGS.classifier_workdir, None)
    if clf_config.model.name != "noise_classifier":
      sys.exit(f"{FLAGS.classifier_workdir} holds a {clf_config.model.name!r}, not a noise_classifier")
    score_fn = models.get_score_fn(sde, model, params, continuous=continuous)
    log_probs_fn = controllable.classifier_log_probs_fn(classifier, clf_params)
    return controllable.classifier_guided_score_fn(score_fn, log_probs_fn, labels, FLAGS.guidance_scale)
  if not config.model.num_classes:
    sys.exit("--class_label needs a class-conditional model (model.num_classes > 0) or --classifier_workdir")
  return controllable.classifier_free_model_score_fn(sde, model, params, labels, FLAGS.guidance_scale,
                                                     continuous=continuous)


def observations(config, batch: dict) -> tuple[np.ndarray, controllable.Observation]:
  """A batch of test images in model space and the condition (--inpaint mask or --colorize) observing them."""
  images = jnp.asarray(datasets.get_data_scaler(config)(batch["image"]))
  if FLAGS.colorize:
    if images.shape[-1] != 3:
      sys.exit(f"--colorize needs 3-channel images, the dataset has {images.shape[-1]}")
    return images, controllable.colorization(jnp.mean(images, axis=-1, keepdims=True))
  mask = MASKS[FLAGS.inpaint](*images.shape[1:3]).astype(np.float32)[None, :, :, None]
  return images, controllable.inpainting(images, mask)


def observed_view(images, condition: controllable.Observation) -> np.ndarray:
  """What the sampler sees: the gray image for colorization, the masked image (gray elsewhere) for inpainting."""
  if condition.basis is not None:
    return np.repeat(np.mean(images, axis=-1, keepdims=True), images.shape[-1], axis=-1)
  return np.asarray(images * condition.mask + (1 - condition.mask) * 0.5 * (images.min() + images.max()))


def main(argv):
  del argv
  config, model, params, step = restore(FLAGS.workdir, FLAGS.step)
  sde = sde_lib.get_sde(config)
  method = FLAGS.method or config.sampling.method
  inverse = FLAGS.inpaint is not None or FLAGS.colorize
  out = pathlib.Path(FLAGS.out or pathlib.Path(FLAGS.workdir) / "samples_cli")
  out.mkdir(parents=True, exist_ok=True)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  batch = min(FLAGS.batch_size, FLAGS.num)
  shape = (batch,) + datasets.data_shape(config)
  labels = None if FLAGS.class_label is None else jnp.full((batch,), FLAGS.class_label, jnp.int32)
  if labels is not None:
    score_fn = class_score_fn(config, sde, model, params, labels)
  else:
    score_fn = models.get_score_fn(sde, model, params, continuous=config.training.continuous)
  rng = jax.random.key(FLAGS.seed)
  test_batches = datasets.get_dataset(config, "test", batch_size=batch) if inverse else None
  samples, originals, observed, total_nfe = [], [], [], 0
  for k in tqdm.trange(-(-FLAGS.num // batch), desc=f"sampling ({method})", unit="batch"):
    key = jax.random.fold_in(rng, k)
    if inverse:
      images, condition = observations(config, next(test_batches))
      options = sampler_options(config, method, controllable.inverse_options_of(method))
      x, nfe = controllable.sample_conditional(key, score_fn, sde, shape, condition, method=method, **options)
      originals.append(np.asarray(inverse_scaler(images)))
      observed.append(np.asarray(inverse_scaler(observed_view(images, condition))))
    else:
      x, nfe = sampling.sample(key, score_fn, sde, shape, method=method,
                               **sampler_options(config, method, sampling.options_of(method)))
    samples.append(np.asarray(inverse_scaler(x)))
    total_nfe += float(jnp.mean(nfe))
  samples = np.concatenate(samples)[:FLAGS.num]
  arrays = {"samples": samples}
  if labels is not None:
    arrays["labels"] = np.full(len(samples), FLAGS.class_label)
  name = "colorization" if FLAGS.colorize else f"inpainting_{FLAGS.inpaint}" if inverse else "samples"
  if inverse:
    arrays.update(originals=np.concatenate(originals)[:FLAGS.num], observed=np.concatenate(observed)[:FLAGS.num])
    # One cell per example: original, observed and sample from top to bottom.
    triplets = np.concatenate([arrays["originals"], arrays["observed"], samples], axis=1)
    evaluate.save_image_grid(out / f"{name}.png", triplets)
  else:
    evaluate.save_image_grid(out / f"{name}.png", samples)
  np.savez(out / f"{name}.npz", **arrays)
  print(f"step {step}: {len(samples)} samples, {total_nfe / -(-FLAGS.num // batch):.0f} score evaluations per "
        f"batch, written to {out / name}.npz and .png")


if __name__ == "__main__":
  app.run(main)
