"""Bits/dim of a trained checkpoint over a data split:
`python scripts/likelihood.py --workdir runs/x [--checkpoint N] --split test [--num_repeats K] [--elbo]`.

The exact likelihood comes from the probability-flow ODE (likelihood.log_likelihood, Hutchinson
divergence, tolerances config.eval.rtol/atol); --elbo also reports the DDPM variational bound
(likelihood.ddpm_elbo_bpd), which upper-bounds the bits/dim of the SDE model. With
data.uniform_dequantization each repeat draws new dequantization noise and new probes. Each batch
is split over all devices. The result goes to <workdir>/eval/bpd_<split>_<step>.json.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root: `configs`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402
from absl import app, flags  # noqa: E402

from score_sde import checkpoint, datasets, evaluate, likelihood, models, parallel  # noqa: E402
from score_sde import sde as sde_lib  # noqa: E402

flags.DEFINE_string("workdir", None, "training directory holding checkpoints/ and checkpoints-meta/")
flags.DEFINE_integer("checkpoint", None, "checkpoint step (default: the latest)")
flags.DEFINE_enum("split", "test", ["train", "test"], "data split")
flags.DEFINE_integer("num_examples", 0, "examples of the split to evaluate (0: all)")
flags.DEFINE_integer("num_repeats", 1, "passes over the split, each with fresh dequantization noise and probes")
flags.DEFINE_integer("batch_size", None, "examples per batch (default: config.eval.batch_size)")
flags.DEFINE_bool("elbo", False, "also compute the DDPM ELBO bound in bits/dim")
flags.DEFINE_integer("elbo_steps", 1000, "steps of the DDPM chain for --elbo")
flags.DEFINE_integer("elbo_timesteps", 64, "Monte-Carlo draws of the chain step per example for --elbo (0: all)")
flags.DEFINE_bool("use_ema", True, "evaluate the EMA parameters (else the raw ones)")
flags.DEFINE_integer("seed", 0, "PRNG seed of the probes and dequantization")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def get_elbo_bpd_fn(config, sde, model):
  """Jitted (rng, params, x in [0, 1]) -> DDPM-ELBO bits/dim [B]."""
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)

  @jax.jit
  def elbo_bpd_fn(rng, params, x):
    score_fn = models.get_score_fn(sde, model, params, train=False, continuous=config.training.continuous)
    bound = likelihood.ddpm_elbo(rng, score_fn, sde, scaler(x), num_steps=FLAGS.elbo_steps,
                                 num_timesteps=FLAGS.elbo_timesteps or None)
    return bound

  return lambda rng, params, x: likelihood.bits_per_dim(elbo_bpd_fn(rng, params, x), x.shape[1:],
                                                        inverse_scaler=inverse_scaler)


def _summary(values: list[np.ndarray]) -> dict:
  """Mean and standard error over examples of the per-example mean over repeats."""
  per_example = np.mean(np.stack(values), axis=0)
  return {"mean": float(per_example.mean()), "stderr": float(per_example.std(ddof=1) / np.sqrt(len(per_example)))
          if len(per_example) > 1 else 0.0, "num_examples": int(len(per_example))}


def main(argv):
  del argv
  try:
    config, state, step = evaluate.restore_run(FLAGS.workdir, FLAGS.checkpoint)
  except checkpoint.CheckpointError as e:
    sys.exit(str(e))
  params = state.ema_params if FLAGS.use_ema else state.params
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  batch_size = FLAGS.batch_size or config.eval.batch_size
  mesh = parallel.get_mesh()
  if batch_size % mesh.size:
    sys.exit(f"--batch_size={batch_size} is not divisible by the {mesh.size} devices")
  params = parallel.replicate(params, mesh)
  logp_fn = evaluate.get_logp_fn(config, sde, model)
  elbo_fn = get_elbo_bpd_fn(config, sde, model) if FLAGS.elbo else None
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  rng = jax.random.key(FLAGS.seed)
  ode_bpd, elbo_bpd = [], []
  for repeat in range(FLAGS.num_repeats):
    config.unlock()
    config.seed = FLAGS.seed + repeat  # fresh dequantization noise for each repeat
    batches = datasets.get_dataset(config, FLAGS.split, batch_size=batch_size, repeat=False)
    ode, elbo, seen = [], [], 0
    progress = tqdm.tqdm(batches, desc=f"bits/dim {FLAGS.split} (repeat {repeat + 1}/{FLAGS.num_repeats})",
                         unit="batch")
    for k, batch in enumerate(progress):
      x = batch["image"][:FLAGS.num_examples - seen] if FLAGS.num_examples else batch["image"]
      padded = np.concatenate([x, np.repeat(x[-1:], batch_size - len(x), axis=0)])  # one compiled shape
      key = jax.random.fold_in(jax.random.fold_in(rng, repeat), k)
      padded = jax.device_put(jnp.asarray(padded), parallel.batch_sharding(mesh))
      logp, _ = logp_fn(key, params, padded)
      ode.append(np.asarray(likelihood.bits_per_dim(logp, x.shape[1:], inverse_scaler=inverse_scaler))[:len(x)])
      if elbo_fn is not None:
        elbo.append(np.asarray(elbo_fn(key, params, padded))[:len(x)])
      seen += len(x)
      running = np.concatenate(ode)
      progress.set_postfix(bpd=f"{running.mean():.3f}±{running.std() / np.sqrt(len(running)):.3f}")
      if FLAGS.num_examples and seen >= FLAGS.num_examples:
        break
    ode_bpd.append(np.concatenate(ode))
    if elbo:
      elbo_bpd.append(np.concatenate(elbo))
  result = {"workdir": str(FLAGS.workdir), "step": int(step), "split": FLAGS.split, "ema": FLAGS.use_ema,
            "num_repeats": FLAGS.num_repeats, "ode_bpd": _summary(ode_bpd), "rtol": config.eval.rtol,
            "atol": config.eval.atol}
  if elbo_bpd:
    result["ddpm_elbo_bpd"] = {**_summary(elbo_bpd), "num_steps": FLAGS.elbo_steps,
                               "num_timesteps": FLAGS.elbo_timesteps}
  if parallel.is_main_process():
    out = pathlib.Path(FLAGS.workdir) / "eval" / f"bpd_{FLAGS.split}_{step}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
  app.run(main)
