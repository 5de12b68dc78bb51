"""Cost and accuracy of `likelihood.log_likelihood` and the bounds, on the Gaussian-mixture oracle.

Prints three tables (ratios of seconds measured side by side in this run, never absolute times):
  1. rtol = atol sweep (VP, 32-D): NFE, seconds per batch relative to the tightest tolerance, and the
     solver error of the exact-trace solve against the oracle log p_eps.
  2. divergence estimators at rtol = atol = 1e-5 (VP, 32-D): NFE, bias +- standard error against
     the oracle, per-sample standard deviation, and seconds relative to one Rademacher probe (the
     divergence integral is error-controlled too, so a noisier estimator takes more steps).
  3. bounds (2-D mixture, exact score): E[log p_eps - bound] for the continuous ELBO and the DDPM ELBO.
With --workdir (a trained image run, e.g. of configs/digits/vp_unet.py), instead, on its model:
  4. bits/dim of --num_examples test images (one Rademacher probe, shared by every solve) for ODE
     formulations (`flow_variables.VARIABLES`), rtol = atol, error norms (`likelihood.ERROR_NORMS`) and solvers:
     NFE, seconds relative to the old default (variables="time", 1e-4, batch_rms; one timed call each,
     after a compiling one), and the max / mean |error| and the error of the mean bits/dim against a
     tight solve (variables="time", rtol = atol = 1e-7, per_example).
  5. probability-flow sampling of --num_examples images from the same latents: NFE and the max / RMS
     pixel error in [0, 1] against a tight decode (rtol = atol = 1e-7).
Run: .venv/bin/python benchmarks/likelihood_cost.py [--workdir RUN --num_examples 64 [--skip_sampling]]
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import datasets, evaluate, likelihood, train
from score_sde import sde as sde_lib
from score_sde import testing
from score_sde.sampling import ode

EPS = 1e-5


def _seconds(fns: list, rounds: int) -> list[float]:
  """Shortest wall time of each fn() over `rounds` round-robin passes, after one compiling call each.

  Interleaving and taking the minimum keep the ratios meaningful on a CPU shared with other jobs.
  """
  for fn in fns:
    jax.block_until_ready(fn())
  best = [np.inf] * len(fns)
  for _ in range(rounds):
    for i, fn in enumerate(fns):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      best[i] = min(best[i], time.perf_counter() - start)
  return best


def _oracle(mixture, sde, x):
  return np.asarray(mixture.log_prob(x, sde, jnp.full((x.shape[0],), EPS)))


def tolerance_table(mixture, sde, score_fn, prior_logp, x):
  print("\n1. rtol = atol sweep: VP, 32-D mixture, batch", x.shape[0])
  print(f"{'rtol=atol':>10} {'NFE':>5} {'sec ratio':>9} {'max |err| (exact)':>18} {'mean err (exact)':>17}")
  truth = _oracle(mixture, sde, x)
  tolerances = (1e-2, 1e-3, 1e-4, 1e-5)

  def run(estimator, tol):
    return likelihood.log_likelihood(jax.random.PRNGKey(1), score_fn, sde, x, estimator, rtol=tol, atol=tol,
                                     eps=EPS, prior_logp=prior_logp)

  seconds = _seconds([lambda tol=tol: run("rademacher", tol)[0] for tol in tolerances], rounds=7)
  rows = []
  for tol, sec in zip(tolerances, seconds):
    logp, nfe = run("exact", tol)
    err = np.asarray(logp) - truth
    rows.append((tol, int(nfe), sec, np.abs(err).max(), err.mean()))
  reference = rows[-1][2]
  for tol, nfe, sec, max_err, mean_err in rows:
    print(f"{tol:>10.0e} {nfe:>5d} {sec / reference:>9.2f} {max_err:>18.2e} {mean_err:>17.2e}")


def estimator_table(mixture, sde, score_fn, prior_logp, points, num_repeats: int = 64):
  print(f"\n2. estimators at rtol=atol=1e-5: VP, 32-D, {points.shape[0]} points x {num_repeats} independent runs")
  print(f"{'estimator':>10} {'probes':>6} {'NFE':>5} {'bias +- s.e. (nats)':>22} {'std/sample':>10} {'sec ratio':>9}")
  truth = _oracle(mixture, sde, points)
  x = jnp.tile(points, (num_repeats, 1))
  configs = (("rademacher", 1), ("gaussian", 1), ("rademacher", 4), ("exact", 1))

  def run(estimator, probes):
    return likelihood.log_likelihood(jax.random.PRNGKey(2), score_fn, sde, x, estimator, eps=EPS,
                                     num_probes=probes, prior_logp=prior_logp)

  seconds = _seconds([lambda config=config: run(*config)[0] for config in configs], rounds=3)
  rows = []
  for (estimator, probes), sec in zip(configs, seconds):
    logp, nfe = run(estimator, probes)
    draws = np.asarray(logp).reshape(num_repeats, -1) - truth
    bias = draws.mean()
    std_err = draws.mean(axis=1).std(ddof=1) / np.sqrt(num_repeats)
    rows.append((estimator, probes, int(nfe), bias, std_err, draws.std(axis=0, ddof=1).mean(), sec))
  reference = rows[0][-1]
  for estimator, probes, nfe, bias, std_err, std, sec in rows:
    print(f"{estimator:>10} {probes:>6d} {nfe:>5d} {bias:>+12.4f} +- {std_err:.4f} {std:>10.3f} "
          f"{sec / reference:>9.2f}")


def bounds_table(mixture, num: int = 2048):
  print(f"\n3. bounds with the exact score: 2-D mixture, {num} data points; gap = mean(log p - bound) +- s.e.")
  print(f"{'sde':>7} {'bound':>28} {'gap (nats)':>18}")
  x, _ = mixture.sample(jax.random.PRNGKey(0), num)
  for name, sde in (("vp", sde_lib.VPSDE()), ("ve", sde_lib.VESDE())):
    score_fn = mixture.score_fn(sde)
    bounds = {
        "continuous ELBO (num_t=16)": (likelihood.elbo(jax.random.PRNGKey(1), score_fn, sde, x, num_t=16),
                                       _oracle(mixture, sde, x)),
    }
    for num_steps in (10, 100, 1000):
      bound = likelihood.ddpm_elbo(jax.random.PRNGKey(1), score_fn, sde, x, num_steps=num_steps)
      bounds[f"DDPM ELBO N={num_steps} log-SNR"] = (bound, np.asarray(mixture.log_prob(x)))
    bound = likelihood.ddpm_elbo(jax.random.PRNGKey(1), score_fn, sde, x, num_steps=1000, grid="uniform")
    bounds["DDPM ELBO N=1000 uniform t"] = (bound, np.asarray(mixture.log_prob(x)))
    for label, (bound, truth) in bounds.items():
      gap = truth - np.asarray(bound)
      print(f"{name:>7} {label:>28} {gap.mean():>+9.4f} +- {gap.std() / np.sqrt(num):.4f}")


TIGHT = 1e-7
# (variables, rtol = atol) measured on a trained model; ("time", 1e-4) was the digits config's eval default.
TRAINED_CASES = (("time", 1e-3), ("time", 1e-4), ("log_snr", 1e-3), ("ddim", 1e-2), ("ddim", 3e-3),
                 ("ddim", 1e-3))
# (variables, rtol = atol, error norm, solver) of the likelihood solve (`likelihood.ERROR_NORMS`, `ode.SOLVERS`); the
# old default first.
TRAINED_BPD_CASES = (("time", 1e-4, "batch_rms", "tsit5"), ("time", 3e-5, "batch_rms", "tsit5"),
                     ("time", 2e-5, "batch_rms", "tsit5"), ("time", 1e-5, "batch_rms", "tsit5"),
                     ("ddim", 1e-2, "batch_rms", "tsit5"), ("time", 1e-4, "per_example", "tsit5"),
                     ("ddim", 3e-3, "per_example", "tsit5"), ("ddim", 5e-4, "per_example", "tsit5"),
                     ("ddim", 3e-3, "per_example", "dopri5"), ("ddim", 5e-4, "per_example", "dopri5"),
                     ("ddim", 1e-3, "per_example", "bosh3"), ("ddim", 7e-4, "per_example", "bosh3"),
                     ("ddim", 5e-4, "per_example", "bosh3"))


def _trained_model(workdir: str, num_examples: int):
  """(config, sde, score_fn, first num_examples dequantized test images in [0, 1]) of a trained run."""
  config, state, step = evaluate.restore_run(workdir)
  setup = train.build(config)
  sde, score_fn = evaluate.model_score_fn(config, setup.sde, setup.model, train.evaluation_params(state))
  images = next(datasets.get_dataset(config, "test", batch_size=num_examples, repeat=False))["image"]
  print(f"\n{config.model.name} ({config.training.sde}) on {config.data.dataset}, step {step}, {workdir}")
  return config, sde, score_fn, jnp.asarray(images)


def trained_bpd_table(config, sde, score_fn, images):
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
  x = scaler(images)
  rng = jax.random.PRNGKey(1)

  def run(variables, tol, error_norm, solver="tsit5"):
    logp, nfe = likelihood.log_likelihood(rng, score_fn, sde, x, rtol=tol, atol=tol, eps=config.training.eps,
                                          variables=variables, error_norm=error_norm, solver=solver)
    return likelihood.bits_per_dim(logp, x.shape[1:], inverse_scaler=inverse_scaler), nfe

  truth, truth_nfe = run("time", TIGHT, "per_example")
  truth = np.asarray(truth)
  print(f"\n4. bits/dim of {x.shape[0]} test images, one Rademacher probe shared by all solves; reference: "
        f"variables=time, rtol=atol={TIGHT:.0e} ({int(truth_nfe)} NFE, mean {truth.mean():.4f} bits/dim)")
  print(f"{'variables':>10} {'rtol=atol':>9} {'error norm':>11} {'solver':>6} {'NFE':>5} {'sec ratio':>9} "
        f"{'max |err|':>9} {'mean |err|':>10} {'err of mean':>11}")
  default = None
  for case in TRAINED_BPD_CASES:  # a compiling call, then a timed one; the old default first
    jax.block_until_ready(run(*case))
    start = time.perf_counter()
    bpd, nfe = jax.block_until_ready(run(*case))
    sec = time.perf_counter() - start
    default = default or sec
    err = np.asarray(bpd) - truth
    variables, tol, error_norm, solver = case
    print(f"{variables:>10} {tol:>9.0e} {error_norm:>11} {solver:>6} {int(nfe):>5d} {sec / default:>9.2f} "
          f"{np.abs(err).max():>9.4f} {np.abs(err).mean():>10.4f} {err.mean():>+11.4f}", flush=True)


def trained_sampling_table(config, sde, score_fn, shape):
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  z = sde.prior_sampling(jax.random.PRNGKey(3), shape)

  def run(variables, tol):
    x, nfe = ode.decode(score_fn, sde, z, rtol=tol, atol=tol, variables=variables)
    return np.asarray(inverse_scaler(x)), int(nfe)

  truth, truth_nfe = run("time", TIGHT)
  print(f"\n5. probability-flow sampling (eps = 1e-3) of {shape[0]} images from the same latents; reference: "
        f"variables=time, rtol=atol={TIGHT:.0e} ({truth_nfe} NFE); pixel errors in [0, 1]")
  print(f"{'variables':>10} {'rtol=atol':>9} {'NFE':>5} {'max |err|':>9} {'RMS err':>8}")
  for variables, tol in (("time", 1e-5),) + TRAINED_CASES:
    x, nfe = run(variables, tol)
    err = x - truth
    print(f"{variables:>10} {tol:>9.0e} {nfe:>5d} {np.abs(err).max():>9.4f} {np.sqrt(np.mean(err**2)):>8.4f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", help="a trained image run: measure its model (tables 4-5) instead of the oracle")
  parser.add_argument("--num_examples", type=int, default=64)
  parser.add_argument("--skip_sampling", action="store_true", help="with --workdir: table 4 alone")
  args = parser.parse_args()
  if args.workdir:
    config, sde, score_fn, images = _trained_model(args.workdir, args.num_examples)
    trained_bpd_table(config, sde, score_fn, images)
    if not args.skip_sampling:
      trained_sampling_table(config, sde, score_fn, images.shape)
    return
  sde = sde_lib.VPSDE()
  mixture = testing.high_dim_mixture(dim=32)
  score_fn = mixture.score_fn(sde)

  def prior_logp(z):
    return mixture.log_prob(z, sde, jnp.full((z.shape[0],), sde.T))

  x, _ = mixture.sample(jax.random.PRNGKey(0), 64)
  tolerance_table(mixture, sde, score_fn, prior_logp, x)
  estimator_table(mixture, sde, score_fn, prior_logp, x[:8])
  bounds_table(testing.two_dim_mixture())


if __name__ == "__main__":
  main()
