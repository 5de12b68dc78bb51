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
Each batch is split over all devices of all processes and gathered; the samples depend only on
(--seed, batch index), not on the number of processes. Several processes: run it on each with the
flags of score_sde/launch.py (--coordinator_address=HOST0:PORT --num_processes=N --process_id=I, or
--distributed); process 0 writes the files.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root: `configs`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402
from absl import app, flags  # noqa: E402

from score_sde import (checkpoint, controllable, datasets, evaluate, launch, models, parallel, sampling,  # noqa: E402
                       schedules, train)
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
launch.define_flags()
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


def score_fn_factory(config, sde, model, labels, classifier):
  """(params, classifier_params) -> the score to sample: unguided, classifier-free or classifier guided.

  `labels` [B] (None: unguided) are the --class_label of every sample; `classifier` is the network of
  --classifier_workdir (None: classifier-free guidance of a class-conditional model).
  """
  continuous = config.training.continuous

  def make_score_fn(params, classifier_params):
    sde_p = schedules.bind(sde, params)  # a learned noise schedule reads its parameters from params
    if labels is None:
      return models.get_score_fn(sde_p, model, params, continuous=continuous)
    if classifier is None:
      return controllable.classifier_free_model_score_fn(sde_p, model, params, labels, FLAGS.guidance_scale,
                                                         continuous=continuous)
    score_fn = models.get_score_fn(sde_p, model, params, continuous=continuous)
    log_probs_fn = controllable.classifier_log_probs_fn(classifier, classifier_params)
    return controllable.classifier_guided_score_fn(score_fn, log_probs_fn, labels, FLAGS.guidance_scale)

  return make_score_fn


def observe(images):
  """The condition (--inpaint mask or --colorize) observing test images in model space."""
  if FLAGS.colorize:
    return controllable.colorization(jnp.mean(images, axis=-1, keepdims=True))
  mask = MASKS[FLAGS.inpaint](*images.shape[1:3]).astype(np.float32)[None, :, :, None]
  return controllable.inpainting(images, mask)


def observed_view(images, condition: controllable.Observation) -> np.ndarray:
  """What the sampler sees: the gray image for colorization, the masked image (gray elsewhere) for inpainting."""
  if condition.basis is not None:
    return np.repeat(np.mean(images, axis=-1, keepdims=True), images.shape[-1], axis=-1)
  return np.asarray(images * condition.mask + (1 - condition.mask) * 0.5 * (images.min() + images.max()))


def get_draw_fn(config, sde, method: str, shape, make_score_fn, mesh):
  """Jitted (key, params, classifier_params, test images in [0, 1] or None) -> (samples in [0, 1], nfe).

  The samples are split over `mesh` along the batch axis; with test images it solves the inverse
  problem of --inpaint / --colorize.
  """
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
  inverse = FLAGS.inpaint is not None or FLAGS.colorize
  accepted = controllable.inverse_options_of(method) if inverse else sampling.options_of(method)
  options = sampler_options(config, method, accepted)

  def draw(key, params, classifier_params, images):
    score_fn = make_score_fn(params, classifier_params)
    bound = schedules.bind(sde, params)
    if images is None:
      x, nfe = sampling.sample(key, score_fn, bound, shape, method=method, **options)
    else:
      x, nfe = controllable.sample_conditional(key, score_fn, bound, shape, observe(scaler(images)),
                                               method=method, **options)
    return inverse_scaler(x), nfe

  return jax.jit(draw, out_shardings=(parallel.batch_sharding(mesh), parallel.replicated(mesh)))


def check_flags(config, batch: int, mesh) -> None:
  """Exits with the reason if the flags do not fit the model, the data or the devices."""
  if batch % mesh.size:
    sys.exit(f"the batch of {batch} samples (min(--batch_size, --num)) is not divisible by the {mesh.size} "
             "devices of all processes")
  if FLAGS.colorize and config.data.num_channels != 3:
    sys.exit(f"--colorize needs 3-channel images, the dataset has {config.data.num_channels}")
  if FLAGS.class_label is not None and not FLAGS.classifier_workdir and not config.model.num_classes:
    sys.exit("--class_label needs a class-conditional model (model.num_classes > 0) or --classifier_workdir")


def restore_classifier():
  """(classifier network, its params) of --classifier_workdir, or (None, None) without it."""
  if not FLAGS.classifier_workdir:
    return None, None
  clf_config, classifier, clf_params, _ = restore(FLAGS.classifier_workdir, None)
  if clf_config.model.name != "noise_classifier":
    sys.exit(f"{FLAGS.classifier_workdir} holds a {clf_config.model.name!r}, not a noise_classifier")
  return classifier, clf_params


def write(config, out: pathlib.Path, arrays: dict) -> pathlib.Path:
  """Writes <out>/<name>.npz and .png (a grid or scatter plot of the samples; original/observed/sample cells
  for inverse problems); returns <out>/<name>."""
  inverse = FLAGS.inpaint is not None or FLAGS.colorize
  name = "colorization" if FLAGS.colorize else f"inpainting_{FLAGS.inpaint}" if inverse else "samples"
  out.mkdir(parents=True, exist_ok=True)
  if inverse:  # one cell per example: original, observed and sample from top to bottom
    triplets = np.concatenate([arrays["originals"], arrays["observed"], arrays["samples"]], axis=1)
    evaluate.save_image_grid(out / f"{name}.png", triplets)
  else:
    train.save_samples(config, arrays["samples"], out / f"{name}.png")
  np.savez(out / f"{name}.npz", **arrays)
  return out / name


def main(argv):
  del argv
  launch.initialize(FLAGS)
  config, model, params, step = restore(FLAGS.workdir, FLAGS.step)
  sde = sde_lib.get_sde(config)
  method = FLAGS.method or config.sampling.method
  inverse = FLAGS.inpaint is not None or FLAGS.colorize
  mesh = parallel.get_mesh()
  batch = min(FLAGS.batch_size, FLAGS.num)
  check_flags(config, batch, mesh)
  labels = None if FLAGS.class_label is None else np.full(batch, FLAGS.class_label, np.int32)
  classifier, classifier_params = restore_classifier()
  make_score_fn = score_fn_factory(config, sde, model, labels, classifier)
  draw = get_draw_fn(config, sde, method, (batch,) + datasets.data_shape(config), make_score_fn, mesh)
  rng, params, classifier_params = parallel.replicate((jax.random.key(FLAGS.seed), params, classifier_params), mesh)
  test_batches = (datasets.get_dataset(config, "test", batch_size=batch, rows=parallel.process_rows(batch, mesh))
                  if inverse else None)
  samples, originals, observed, total_nfe = [], [], [], 0.0
  num_batches = -(-FLAGS.num // batch)
  for k in tqdm.trange(num_batches, desc=f"sampling ({method})", unit="batch", disable=not parallel.is_main_process()):
    images = parallel.global_batch(next(test_batches)["image"], mesh) if inverse else None
    x, nfe = parallel.fetch(draw(jax.random.fold_in(rng, k), params, classifier_params, images))
    samples.append(x)
    total_nfe += float(np.mean(nfe))
    if inverse:
      images = parallel.fetch(images)
      originals.append(images)
      observed.append(np.asarray(observed_view(images, observe(images))))
  arrays = {"samples": np.concatenate(samples)[:FLAGS.num]}
  if labels is not None:
    arrays["labels"] = np.full(FLAGS.num, FLAGS.class_label)
  if inverse:
    arrays.update(originals=np.concatenate(originals)[:FLAGS.num], observed=np.concatenate(observed)[:FLAGS.num])
  if parallel.is_main_process():
    path = write(config, pathlib.Path(FLAGS.out or pathlib.Path(FLAGS.workdir) / "samples_cli"), arrays)
    print(f"step {step}: {FLAGS.num} samples, {total_nfe / num_batches:.0f} score evaluations per batch, "
          f"written to {path}.npz and .png")


if __name__ == "__main__":
  app.run(main)
