"""FD-MNIST and classifier Inception score versus NFE for the samplers, on a trained MNIST checkpoint.

Each sampler draws --num_samples images from the EMA parameters of --workdir; the table entry is the
FD-MNIST (Frechet distance of the FD-MNIST classifier's 128-d features, score_sde/metrics/mnist.py)
to the training split, and the classifier score (IS over the 10 digit classes, 1 split), with the
NFE the sampler reports. The first row is the held-out split (the same number of real images) against
the training split: the FD of real images at that sample size, but not a floor where the two splits
differ (MNIST from IDX files: training = the first 9000 of t10k, whose first 5000 come from NIST's
cleaner SD-3 writers, held out = the last 1000, from SD-1), since a model fits its training split.
The last line is the ratio (best sampler at <= 20 NFE) / (1000-step PC), measured in this run. --adaptive_ode adds the
adaptive probability-flow ODE (Tsit5) at the given variables:tolerance pairs (flow_variables.py), e.g.
today's default "time:1e-5" against the DDIM variables at looser tolerances.

  python scripts/train.py --config configs/mnist/vp_unet.py --workdir runs/mnist_vp \
      --config.data.path=DIR --config.training.n_iters=4000
  python scripts/train_fd_classifier.py --config configs/mnist/vp_unet.py --config.data.path=DIR \
      --out runs/fd_mnist.npz
  python benchmarks/sampler_quality.py --workdir runs/mnist_vp --fd_mnist_weights runs/fd_mnist.npz \
      [--num_samples 1000] [--nfes 10,20,50] [--pc_steps 1000]
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from score_sde import evaluate, models, parallel
from score_sde import sde as sde_lib
from score_sde.metrics import features, quality

# name -> (method, options reaching about n score evaluations, or None where n is out of reach);
# the NFE column prints what the sampler reports.
SAMPLERS = {
    "Euler-Maruyama": ("pc", lambda n: dict(predictor="euler_maruyama", corrector="none", num_steps=n)),
    "ancestral": ("pc", lambda n: dict(predictor="ancestral", corrector="none", num_steps=n)),
    "ODE tsit5 (diffrax fixed steps)": ("ode", lambda n: dict(solver="tsit5", num_steps=n // 6) if n >= 6 else None),
    "DDIM": ("ddim", lambda n: dict(num_steps=n)),
    "DPM-Solver-2": ("dpm_solver", lambda n: dict(order=2, num_steps=n // 2)),
    "DPM-Solver-3": ("dpm_solver", lambda n: dict(order=3, num_steps=n // 3)),
    "DPM-Solver++(2M)": ("dpm_solver_pp", lambda n: dict(num_steps=n)),
    "EDM Heun": ("edm_heun", lambda n: dict(num_steps=n // 2)),
}


def sample_quality(config, sde, model, params, method: str, options: dict, feature_net, reference, num_samples: int,
                   batch_size: int, mesh, seed: int) -> tuple[dict, float]:
  """(quality.quality of num_samples samples, mean NFE per sample)."""
  batch_fn = evaluate.get_sample_feature_fn(config, sde, model, method, options, feature_net.apply, batch_size, mesh)
  rng, params, feature_params = parallel.replicate((jax.random.key(seed), params, feature_net.params), mesh)
  sample_stats, nfes = None, []
  for k in range(-(-num_samples // batch_size)):
    feats, logits, nfe = parallel.fetch(batch_fn(jax.random.fold_in(rng, k), params, feature_params))
    count = min(batch_size, num_samples - k * batch_size)
    if sample_stats is None:
      sample_stats = quality.SampleStats.empty(num_samples, feats.shape[1], logits.shape[1], kid_features=0)
    sample_stats = sample_stats.update(feats[:count], logits[:count])
    nfes.append(float(np.mean(nfe)))
  return quality.quality(sample_stats, reference), float(np.mean(nfes))


def cell(result: dict, nfe: float) -> str:
  return f"{result['fd']:.2f} / {result['inception_score']['mean']:.2f} ({nfe:.0f})"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--fd_mnist_weights", required=True)
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--nfes", default="10,20,50")
  parser.add_argument("--pc_steps", type=int, default=1000, help="steps of the reference PC sampler (0: skip)")
  parser.add_argument("--samplers", nargs="*", default=list(SAMPLERS), choices=list(SAMPLERS), help="rows to run")
  parser.add_argument("--adaptive_ode", default="", help="comma-separated variables:tolerance pairs of the "
                      "adaptive ODE sampler, e.g. time:1e-5,ddim:1e-3 (empty: none)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  nfes = [int(n) for n in args.nfes.split(",")]
  mesh = parallel.get_mesh()
  batch_size = min(args.batch_size, args.num_samples)
  config, state, step = evaluate.restore_run(args.workdir, args.step)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  feature_net = features.get_feature_net("fd_mnist", args.fd_mnist_weights)
  start = time.time()
  train_stats = evaluate.feature_statistics_over_split(config, feature_net, "train", batch_size, mesh=mesh)
  reference = {"mu": train_stats.features.mean, "sigma": train_stats.features.covariance}
  held_out = evaluate.feature_statistics_over_split(config, feature_net, "test", batch_size, args.num_samples,
                                                    kid_features=0, mesh=mesh)
  real = quality.quality(held_out, reference)
  print(f"checkpoint step {step} of {args.workdir}; {args.num_samples} samples per entry; FD-MNIST against "
        f"{train_stats.features.count} training images")
  print("\n| sampler | " + " | ".join(f"~{n} NFE" for n in nfes) + " |")
  print("|---|" + "---|" * len(nfes))
  print(f"| held-out images ({held_out.features.count}) | "
        + " | ".join(f"{real['fd']:.2f} / {real['inception_score']['mean']:.2f}" for _ in nfes) + " |")
  best_fast = np.inf
  for name in args.samplers:
    method, options_at = SAMPLERS[name]
    cells = []
    for n in nfes:
      options = options_at(n)
      if options is None or options.get("num_steps", 1) < 1:
        cells.append("-")
        continue
      result, nfe = sample_quality(config, sde, model, state.ema_params, method, options, feature_net, reference,
                                   args.num_samples, batch_size, mesh, args.seed)
      cells.append(cell(result, nfe))
      if nfe <= 20:
        best_fast = min(best_fast, result["fd"])
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
  for pair in filter(None, args.adaptive_ode.split(",")):
    variables, tolerance = pair.split(":")
    result, nfe = sample_quality(config, sde, model, state.ema_params, "ode",
                                 dict(solver="tsit5", rtol=float(tolerance), atol=float(tolerance),
                                      variables=variables),
                                 feature_net, reference, args.num_samples, batch_size, mesh, args.seed)
    print(f"adaptive ODE (tsit5, {variables} variables, rtol = atol = {tolerance}): {cell(result, nfe)}", flush=True)
  if args.pc_steps:
    pc, nfe = sample_quality(config, sde, model, state.ema_params, "pc",
                             dict(predictor="reverse_diffusion", corrector="langevin", num_steps=args.pc_steps),
                             feature_net, reference, args.num_samples, batch_size, mesh, args.seed)
    print(f"\nPC (reverse diffusion + Langevin, {args.pc_steps} steps): {cell(pc, nfe)}")
    if np.isfinite(best_fast):
      print(f"best FD-MNIST at <= 20 NFE / PC's: {best_fast / pc['fd']:.3f}")
  print(f"\ncells: FD-MNIST / classifier IS (NFE per sample); {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
