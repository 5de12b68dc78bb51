"""Sample a trained model: `score-sde-sample --workdir runs/x [--step K] [--method pc] [--num 64]`
(or `python scripts/sample.py ...`).

Loads the EMA parameters (--nouse_ema: the raw ones) of the newest (or --step) checkpoint of
--workdir and the config saved with it, samples in batches with the sampler of the config
(`configs_util.sampler_options`: config.sampling.*, replaced by --method and --num_steps) and writes
<out>/samples_step<K>_<method>_nfe<N>_seed<S>.npz (images in [0, 1], labels; `inpainting_<MASK>_...` or
`colorization_...` for inverse problems) and a PNG grid of the same name, N being the score
evaluations per batch; another step, method or seed never overwrites it (--out: default
<workdir>/samples_cli).
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

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from score_sde import (configs_util, controllable, datasets, evaluate, launch, models, parallel, sampling, schedules,
                       train)
from score_sde import sde as sde_lib
from score_sde.cli import common
from score_sde.sampling.progress import StepBar

common.define_checkpoint_flags()
flags.DEFINE_string("method", None, "sampling method (default: config.sampling.method)")
flags.DEFINE_integer("num_steps", None, "sampler steps (default: config.sampling.num_steps, or the sampler's own)")
flags.DEFINE_integer("num", 64, "number of samples", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "samples per batch", lower_bound=1)
flags.DEFINE_integer("seed", 0, "PRNG seed")
flags.DEFINE_string("out", None, "output directory (default: <workdir>/samples_cli)")
flags.DEFINE_integer("class_label", None, "class to sample")
flags.DEFINE_float("guidance_scale", 1.0, "guidance scale w")
flags.DEFINE_string("classifier_workdir", None, "workdir of scripts/train_classifier.py (classifier guidance)")
flags.DEFINE_enum("inpaint", None, ["right_half", "bottom_half", "center"], "region of the test images to inpaint")
flags.DEFINE_bool("colorize", False, "colorize gray test images")
launch.define_flags()
common.define_verbose_flag()
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


def restore(workdir: str, step: int | None, flag: str = "--workdir"):
  """(config, model, params (EMA unless --nouse_ema), step) of checkpoint `step` (default the newest) of `workdir`."""
  config, state, step = evaluate.restore_run(common.existing_workdir(workdir, flag), step)
  return config, models.get_model(config), train.evaluation_params(state, FLAGS.use_ema), step


def score_fn_factory(config, model, labels, classifier):
  """(sde, params, classifier_params) -> the score to sample: unguided, classifier-free or classifier guided.

  `labels` [B] (None: unguided) are the --class_label of every sample; `classifier` is the network of
  --classifier_workdir (None: classifier-free guidance of a class-conditional model).
  """
  continuous = config.training.continuous

  def make_score_fn(sde, params, classifier_params):
    if labels is None:
      return models.get_score_fn(sde, model, params, continuous=continuous)
    if classifier is None:
      return controllable.classifier_free_model_score_fn(sde, model, params, labels, FLAGS.guidance_scale,
                                                         continuous=continuous)
    score_fn = models.get_score_fn(sde, model, params, continuous=continuous)
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


def get_draw_fn(config, sde, method: str, options: dict, shape, make_score_fn, mesh, progress):
  """Jitted (key, params, classifier_params, test images in [0, 1] or None) -> (samples in [0, 1], nfe).

  The samples are split over `mesh` along the batch axis; with test images it solves the inverse
  problem of --inpaint / --colorize. progress(steps_done, steps_total) is called after every sampler step.
  """
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)

  def draw(key, params, classifier_params, images):
    bound = schedules.bind(sde, params)  # a learned noise schedule reads its parameters from params
    score_fn = make_score_fn(bound, params, classifier_params)
    if images is None:
      x, nfe = sampling.sample(key, score_fn, bound, shape, method=method, progress=progress, **options)
    else:
      x, nfe = sampling.sample_inverse(key, score_fn, bound, shape, observe(scaler(images)), method=method,
                                       progress=progress, **options)
    return inverse_scaler(x), nfe

  return jax.jit(draw, out_shardings=(parallel.batch_sharding(mesh), parallel.replicated(mesh)))


def check_flags(config, batch: int, mesh) -> tuple[str, dict]:
  """(method, options) of the sampler; ValueError naming the flag that does not fit the model, data or devices."""
  if batch % mesh.size:
    raise ValueError(f"the batch of {batch} samples (min(--batch_size, --num)) is not divisible by the {mesh.size} "
                     "devices of all processes")
  inverse = FLAGS.inpaint is not None or FLAGS.colorize
  if inverse and datasets.is_toy(config):
    raise ValueError(f"--inpaint and --colorize need an image model; {FLAGS.workdir} holds a "
                     f"{config.data.dataset!r} model of {config.data.dim}-D points")
  if FLAGS.colorize and config.data.num_channels != 3:
    raise ValueError(f"--colorize needs 3-channel images, the dataset has {config.data.num_channels}")
  if FLAGS.class_label is not None and not FLAGS.classifier_workdir and not config.model.num_classes:
    raise ValueError("--class_label needs a class-conditional model (model.num_classes > 0) or --classifier_workdir")
  method, options = configs_util.sampler_options(config, method=FLAGS.method, num_steps=FLAGS.num_steps)
  if inverse:
    accepted = sampling.options_of(method, inverse_problem=True)
    options = {name: value for name, value in options.items() if name in accepted}
  return method, options


def restore_classifier():
  """(classifier network, its params) of --classifier_workdir, or (None, None) without it."""
  if not FLAGS.classifier_workdir:
    return None, None
  clf_config, classifier, clf_params, _ = restore(FLAGS.classifier_workdir, None, "--classifier_workdir")
  if clf_config.model.name != "noise_classifier":
    raise ValueError(f"--classifier_workdir={FLAGS.classifier_workdir} holds a {clf_config.model.name!r}, "
                     "not a noise_classifier")
  return classifier, clf_params


def output_name(step: int, method: str, nfe: float) -> str:
  """samples / inpainting_<mask> / colorization, then _step<K>_<method>_nfe<N>_seed<S>: one file per choice."""
  inverse = FLAGS.inpaint is not None or FLAGS.colorize
  kind = "colorization" if FLAGS.colorize else f"inpainting_{FLAGS.inpaint}" if inverse else "samples"
  return f"{kind}_step{step}_{method}_nfe{round(nfe)}_seed{FLAGS.seed}"


def write(config, out: pathlib.Path, name: str, arrays: dict) -> pathlib.Path:
  """Writes <out>/<name>.npz and .png (a grid or scatter plot of the samples; original/observed/sample cells
  for inverse problems); returns <out>/<name>."""
  inverse = FLAGS.inpaint is not None or FLAGS.colorize
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
  inverse = FLAGS.inpaint is not None or FLAGS.colorize
  mesh = parallel.get_mesh()
  batch = min(FLAGS.batch_size, FLAGS.num)
  method, options = check_flags(config, batch, mesh)
  labels = None if FLAGS.class_label is None else np.full(batch, FLAGS.class_label, np.int32)
  classifier, classifier_params = restore_classifier()
  make_score_fn = score_fn_factory(config, model, labels, classifier)
  num_batches = -(-FLAGS.num // batch)
  bar = StepBar(num_batches, desc=f"sampling ({method}, {num_batches} batches)",
                disable=not parallel.is_main_process())
  draw = get_draw_fn(config, sde, method, options, (batch,) + datasets.data_shape(config), make_score_fn, mesh,
                     bar)
  rng, params, classifier_params = parallel.replicate((jax.random.key(FLAGS.seed), params, classifier_params), mesh)
  test_batches = (datasets.get_dataset(config, "test", batch_size=batch, rows=parallel.process_rows(batch, mesh))
                  if inverse else None)
  samples, originals, observed, total_nfe = [], [], [], 0.0
  for k in range(num_batches):
    bar.start_batch(k)
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
  bar.close()
  if parallel.is_main_process():
    out = pathlib.Path(FLAGS.out or pathlib.Path(FLAGS.workdir) / "samples_cli")
    path = write(config, out, output_name(step, method, total_nfe / num_batches), arrays)
    print(f"step {step}: {FLAGS.num} samples, {total_nfe / num_batches:.0f} score evaluations per batch, "
          f"written to {path}.npz and .png")


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
