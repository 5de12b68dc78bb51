"""Bits/dim of a trained checkpoint over a data split: `score-sde-likelihood --workdir runs/x [--step N]
--split test [--num_examples M] [--num_repeats K] [--elbo]` (or `python scripts/likelihood.py ...`).

It evaluates the EMA parameters (--nouse_ema: the raw ones) on the first config.eval.bpd_num_examples
examples of the split (--num_examples replaces it; 0: all), with a bar showing batches, running
bits/dim and score evaluations (NFE).
The exact likelihood comes from the probability-flow ODE (likelihood.log_likelihood, Hutchinson
divergence, tolerances config.eval.rtol/atol, variables config.eval.ode_variables, step-size control
config.eval.ode_error_norm, solver config.eval.ode_solver), on uniformly
dequantized data or, with --ode_dequantization=encoder (config.eval.ode_dequantization; the VDM
configs' default), through the forward process at eps and the pixel-grid decoder
(likelihood.encoder_bound_nll), the bound that suits models of 8-bit data; --elbo also reports the
DDPM variational bound (likelihood.ddpm_elbo_bpd), which upper-bounds the bits/dim of the SDE model,
or for a training.objective="vdm" run the model's own VDM bound (score_sde/vdm.py; --elbo_timesteps
draws of (t, eps), vdm.num_steps); --noode --elbo computes the bound alone (K network evaluations per
example instead of an ODE solve). With data.uniform_dequantization each repeat draws new
dequantization noise and new probes. Each batch is split over all devices of all processes; the
noise and probes of batch k depend only on (--seed, repeat, k), so any number of processes gives the
same result. Several processes: run it
on each with the flags of score_sde/launch.py (--coordinator_address=HOST0:PORT --num_processes=N
--process_id=I, or --distributed). Process 0 writes the summary to
<workdir>/eval/bpd_<split>_<step>[_first<num_examples>].json (and prints it) and the per-example
bits/dim [num_repeats, num_examples] to the .npz of the same name (ode_bpd, elbo_bpd).
"""
import json
import pathlib

import jax
import numpy as np
from absl import flags

from score_sde import (console, datasets, evaluate, flow_variables, launch, likelihood, models, parallel, schedules,
                       train, vdm)
from score_sde import sde as sde_lib
from score_sde.cli import common
from score_sde.sampling import ode

common.define_checkpoint_flags()
flags.DEFINE_alias("checkpoint", "step")  # deprecated name of --step
flags.DEFINE_enum("split", "test", ["train", "test"], "data split")
flags.DEFINE_integer("num_examples", None, "examples of the split to evaluate (default: config.eval.bpd_num_examples; "
                     "0: all)", lower_bound=0)
flags.DEFINE_integer("num_repeats", 1, "passes over the split, each with fresh dequantization noise and probes")
flags.DEFINE_integer("batch_size", None, "examples per batch (default: config.eval.batch_size)")
flags.DEFINE_bool("ode", True, "compute bits/dim through the probability-flow ODE (--noode: the ELBO alone)")
flags.DEFINE_enum("ode_dequantization", None, list(evaluate.ODE_DEQUANTIZATIONS),
                  "how the ODE density of 8-bit data is taken (default: config.eval.ode_dequantization): 'uniform' "
                  "dequantization, or 'encoder': the forward process at eps with the pixel-grid decoder")
flags.DEFINE_enum("ode_variables", None, list(flow_variables.VARIABLES),
                  "variables of the ODE solve (default: config.eval.ode_variables; flow_variables.py)")
flags.DEFINE_enum("ode_error_norm", None, list(likelihood.ERROR_NORMS),
                  "step-size control of the ODE solve (default: config.eval.ode_error_norm): 'batch_rms' error of "
                  "the whole batch, or 'per_example': each example's state and log-density to the tolerance")
flags.DEFINE_float("rtol", None, "relative tolerance of the ODE solve (default: config.eval.rtol)", lower_bound=0.0)
flags.DEFINE_float("atol", None, "absolute tolerance of the ODE solve (default: config.eval.atol)", lower_bound=0.0)
flags.DEFINE_enum("ode_solver", None, list(ode.ADAPTIVE_SOLVERS),
                  "adaptive solver of the ODE (default: config.eval.ode_solver; sampling/ode.py SOLVERS)")
flags.DEFINE_bool("elbo", False, "also compute the DDPM ELBO bound in bits/dim")
flags.DEFINE_integer("elbo_steps", 1000, "steps of the DDPM chain for --elbo")
flags.DEFINE_integer("elbo_timesteps", 64, "Monte-Carlo draws of the chain step per example for --elbo (0: all)")
flags.DEFINE_integer("seed", 0, "PRNG seed of the probes and dequantization")
launch.define_flags()
common.define_verbose_flag()
FLAGS = flags.FLAGS


def get_elbo_fn(config, sde, model):
  """Jitted (rng, params, x in [0, 1]) -> DDPM ELBO in nats [B]."""
  scaler = datasets.get_data_scaler(config)

  @jax.jit
  def elbo_fn(rng, params, x):
    score_fn = models.get_score_fn(sde, model, params, train=False, continuous=config.training.continuous)
    return likelihood.ddpm_elbo(rng, score_fn, sde, scaler(x), num_steps=FLAGS.elbo_steps,
                                num_timesteps=FLAGS.elbo_timesteps or None)

  return elbo_fn


def get_vdm_elbo_fn(config, sde, model):
  """Jitted (rng, params, x in [0, 1]) -> the VDM bound on log P(8-bit x) as a model-space log-density [B]
  (`likelihood.bin_log_density`); --elbo_timesteps draws of (t, eps) per example."""
  scaler = datasets.get_data_scaler(config)
  grid = likelihood.pixel_grid(scaler)

  @jax.jit
  def elbo_fn(rng, params, x):
    pixels = evaluate.eight_bit_values(x, config.data.uniform_dequantization)
    bound = schedules.bind(sde, params)
    score_fn = models.get_score_fn(bound, model, params, train=False)
    bpd = vdm.elbo_bpd(rng, score_fn, bound, scaler(pixels / 255.0), grid=grid, t0=config.training.eps,
                       num_steps=config.vdm.num_steps, num_samples=FLAGS.elbo_timesteps or 1)
    dim = np.prod(x.shape[1:])
    return likelihood.bin_log_density(-bpd * dim * np.log(2.0), x.shape[1:], scaler)

  return elbo_fn


# training.objective -> the variational bound that --elbo reports: DDPM's for score models, the model's own for VDM.
ELBO_FNS = {"dsm": get_elbo_fn, "vdm": get_vdm_elbo_fn}


def get_batch_fn(config, sde, model):
  """(rng, params, x in [0, 1]) -> ({"ode": log p in nats [B] with --ode, "elbo": the DDPM ELBO [B] with --elbo},
  score evaluations of the ODE solve)."""
  logp_fn = evaluate.get_logp_fn(config, sde, model) if FLAGS.ode else None
  elbo_fn = ELBO_FNS[config.training.objective](config, sde, model) if FLAGS.elbo else None

  def batch_fn(rng, params, x):
    bounds, nfe = {}, 0
    if logp_fn is not None:
      bounds["ode"], nfe = logp_fn(rng, params, x)
    if elbo_fn is not None:
      bounds["elbo"] = elbo_fn(rng, params, x)
    return bounds, nfe

  return batch_fn


def _summary(values: np.ndarray) -> dict:
  """Mean and standard error over examples of the per-example mean over repeats of values [R, N]."""
  per_example = np.mean(values, axis=0)
  return {"mean": float(per_example.mean()), "stderr": float(per_example.std(ddof=1) / np.sqrt(len(per_example)))
          if len(per_example) > 1 else 0.0, "num_examples": int(len(per_example))}


def bits_per_dim_over_repeats(config, batch_fn, params, mesh, batch_size: int, num_examples: int
                              ) -> dict[str, np.ndarray]:
  """Per-example bits/dim [num_repeats, num_examples] of each bound of `batch_fn`, first `num_examples` (0: all)."""
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  rng = jax.random.key(FLAGS.seed)
  results = {}
  for repeat in range(FLAGS.num_repeats):
    if config.data.uniform_dequantization:  # fresh noise for each repeat; the seed also draws toy test sets
      with config.unlocked():
        config.seed = FLAGS.seed + repeat
    batches = evaluate.split_batches(config, FLAGS.split, batch_size, mesh, num_examples)
    outputs = evaluate.map_over_split(jax.random.fold_in(rng, repeat), batch_fn, params, batches, mesh)
    progress = console.progress_bar(outputs, desc=f"bits/dim {FLAGS.split} (repeat {repeat + 1}/{FLAGS.num_repeats})",
                                    unit="batch", disable=not parallel.is_main_process())
    bpd, total_nfe = {}, 0
    for (bounds, nfe), count in progress:
      total_nfe += int(nfe)
      for name, nats in bounds.items():
        bpd.setdefault(name, []).append(np.asarray(likelihood.bits_per_dim(
            nats[:count], datasets.data_shape(config), inverse_scaler=inverse_scaler)))
      running = np.concatenate(next(iter(bpd.values())))
      progress.set_postfix(bpd=f"{running.mean():.3f}±{running.std() / np.sqrt(len(running)):.3f}", nfe=total_nfe)
    for name, values in bpd.items():
      results.setdefault(name, []).append(np.concatenate(values))
  return {name: np.stack(values) for name, values in results.items()}


def main(argv):
  del argv
  launch.initialize(FLAGS)
  if not (FLAGS.ode or FLAGS.elbo):
    raise ValueError("--noode without --elbo leaves nothing to compute")
  config, state, step = evaluate.restore_run(common.existing_workdir(FLAGS.workdir), FLAGS.step)
  params = train.evaluation_params(state, FLAGS.use_ema)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  if FLAGS.ode:
    with config.unlocked():
      config.eval.ode_dequantization = FLAGS.ode_dequantization or config.eval.ode_dequantization
      config.eval.ode_variables = FLAGS.ode_variables or config.eval.ode_variables
      config.eval.ode_error_norm = FLAGS.ode_error_norm or config.eval.ode_error_norm
      config.eval.ode_solver = FLAGS.ode_solver or config.eval.ode_solver
      config.eval.rtol = config.eval.rtol if FLAGS.rtol is None else FLAGS.rtol
      config.eval.atol = config.eval.atol if FLAGS.atol is None else FLAGS.atol
      if config.eval.ode_dequantization == "uniform" and config.training.objective == "vdm":
        config.data.uniform_dequantization = True  # a model of 8-bit values; its bounds read them back (floor(256 x))
  batch_size = FLAGS.batch_size or config.eval.batch_size
  num_examples = config.eval.bpd_num_examples if FLAGS.num_examples is None else FLAGS.num_examples
  mesh = parallel.get_mesh()
  if batch_size % mesh.size:
    raise ValueError(f"--batch_size={batch_size} is not divisible by the {mesh.size} devices of all processes")
  bpd = bits_per_dim_over_repeats(config, get_batch_fn(config, sde, model), params, mesh, batch_size, num_examples)
  result = {"workdir": str(FLAGS.workdir), "step": int(step), "split": FLAGS.split, "ema": FLAGS.use_ema,
            "num_repeats": FLAGS.num_repeats}
  if FLAGS.ode:
    result.update(ode_bpd=_summary(bpd["ode"]), rtol=config.eval.rtol, atol=config.eval.atol,
                  ode_dequantization=config.eval.ode_dequantization, ode_variables=config.eval.ode_variables,
                  ode_error_norm=config.eval.ode_error_norm, ode_solver=config.eval.ode_solver)
  if FLAGS.elbo:
    steps = config.vdm.num_steps if config.training.objective == "vdm" else FLAGS.elbo_steps
    name = {"dsm": "ddpm_elbo_bpd", "vdm": "vdm_elbo_bpd"}[config.training.objective]
    result[name] = {**_summary(bpd["elbo"]), "num_steps": steps, "num_timesteps": FLAGS.elbo_timesteps}
  if parallel.is_main_process():
    subset = f"_first{num_examples}" if num_examples else ""
    out = pathlib.Path(FLAGS.workdir) / "eval" / f"bpd_{FLAGS.split}_{step}{subset}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    np.savez(out.with_suffix(".npz"), **{f"{name}_bpd": values for name, values in bpd.items()})
    print(json.dumps(result, indent=2))
    print(f"written to {out}.json (per-example bits/dim [num_repeats, num_examples]: {out}.npz)")


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
