"""Distance to the truth versus NFE for every sampler, on the exact Gaussian-mixture oracle.

Each sampler is fed the exact score of a 2-D and a 64-D Gaussian mixture diffused by each SDE (VP,
sub-VP, VE); the table entry is the sliced 2-Wasserstein distance between its samples and exact
samples of the mixture (lower is better; the `exact` row is the distance between two independent
exact sample sets, the Monte-Carlo floor). A second table compares the wall time of the diffrax
reverse-SDE solve with the lax.scan Euler-Maruyama sampler at equal NFE, as a ratio measured in
this run.

  python benchmarks/sampler_nfe.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import jax

from score_sde import sampling
from score_sde import sde as sde_lib
from score_sde import testing

# name -> (method, options for a given NFE, or None where that NFE is out of reach)
METHODS = {
    "PC: Euler-Maruyama": ("pc", lambda n: dict(predictor="euler_maruyama", corrector="none", num_steps=n)),
    "PC: reverse diffusion + Langevin": ("pc", lambda n: dict(predictor="reverse_diffusion", corrector="langevin",
                                                               num_steps=n // 2) if n >= 2 else None),
    "PC: ancestral": ("pc", lambda n: dict(predictor="ancestral", corrector="none", num_steps=n)),
    "SDE (diffrax): Euler": ("sde", lambda n: dict(solver="euler", num_steps=n)),
    "SDE (diffrax): Heun": ("sde", lambda n: dict(solver="heun", num_steps=n // 2) if n >= 2 else None),
    "ODE (diffrax): Euler": ("ode", lambda n: dict(solver="euler", num_steps=n)),
    "ODE (diffrax): Heun": ("ode", lambda n: dict(solver="heun", num_steps=n // 2) if n >= 2 else None),
    "DDIM (eta=0)": ("ddim", lambda n: dict(num_steps=n)),
    "DPM-Solver-1 (logSNR)": ("dpm_solver", lambda n: dict(order=1, num_steps=n)),
    "DPM-Solver-2 (logSNR)": ("dpm_solver", lambda n: dict(order=2, num_steps=n // 2) if n >= 2 else None),
    "DPM-Solver-3 (logSNR)": ("dpm_solver", lambda n: dict(order=3, num_steps=n // 3) if n >= 3 else None),
    "DPM-Solver++(2M) (logSNR)": ("dpm_solver_pp", lambda n: dict(num_steps=n)),
    "EDM Heun (rho=7)": ("edm_heun", lambda n: dict(num_steps=n // 2) if n >= 2 else None),
}
FIRST_ORDER = ("PC: Euler-Maruyama", "PC: reverse diffusion + Langevin", "PC: ancestral", "SDE (diffrax): Euler",
               "DDIM (eta=0)")
SDES = {"VP": sde_lib.VPSDE, "sub-VP": sde_lib.subVPSDE, "VE": sde_lib.VESDE}
ORACLES = {"2-D": (testing.two_dim_mixture, 5000), "64-D": (lambda: testing.high_dim_mixture(64), 2000)}


def distance(x, reference) -> float:
  return float(testing.sliced_wasserstein(jax.random.key(7), x, reference, num_projections=128))


def nfe_table(oracle: str, sde_name: str, nfes: list[int]) -> list[str]:
  make_mixture, num = ORACLES[oracle]
  mixture, sde = make_mixture(), SDES[sde_name]()
  score_fn = mixture.score_fn(sde)
  reference, _ = mixture.sample(jax.random.key(1), num)
  floor = distance(mixture.sample(jax.random.key(2), num)[0], reference)
  columns = nfes + [1000]
  rows = [f"| {oracle} {sde_name} | " + " | ".join(str(n) for n in columns) + " |",
          "|---|" + "---|" * len(columns),
          "| exact samples (floor) | " + " | ".join(f"{floor:.3f}" for _ in columns) + " |"]
  for name, (method, options_at) in METHODS.items():
    cells = []
    for n in columns:
      options = options_at(n)
      if options is None or (n == 1000 and name not in FIRST_ORDER):
        cells.append("-")
        continue
      x, used = sampling.sample(jax.random.key(0), score_fn, sde, (num,) + mixture.shape, method=method, **options)
      cells.append(f"{distance(x, reference):.3f}" + ("" if int(used) == n else f" ({int(used)})"))
    rows.append(f"| {name} | " + " | ".join(cells) + " |")
  for tol in (1e-2, 1e-3, 1e-5):
    x, used = sampling.sample(jax.random.key(0), score_fn, sde, (num,) + mixture.shape, method="ode", solver="tsit5",
                              rtol=tol, atol=tol)
    rows.append(f"| ODE (diffrax): Tsit5 adaptive, tol {tol:g} | {distance(x, reference):.3f} "
                f"at NFE {int(used)} |" + " |" * (len(columns) - 1))
  return rows


def timed(fn) -> float:
  jax.block_until_ready(fn())  # compile
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def sde_vs_scan_rows(nfes: list[int]) -> list[str]:
  mixture, sde = testing.high_dim_mixture(64), sde_lib.VPSDE()
  score_fn = mixture.score_fn(sde)
  rows = ["| NFE | diffrax Euler / scan EM | diffrax Heun / scan EM |", "|---|---|---|"]
  for n in nfes:
    run = lambda method, **o: lambda: sampling.sample(jax.random.key(0), score_fn, sde, (2000, 64), method, **o)
    scan = timed(run("pc", predictor="euler_maruyama", corrector="none", num_steps=n))
    euler = timed(run("sde", solver="euler", num_steps=n))
    heun = timed(run("sde", solver="heun", num_steps=n // 2))
    rows.append(f"| {n} | {euler / scan:.2f} | {heun / scan:.2f} |")
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="VP only")
  args = parser.parse_args()
  sde_names = ["VP"] if args.quick else list(SDES)
  nfes = [5, 10, 20, 50, 100]
  print("Sliced W2 to exact samples (lower is better) versus NFE; '(k)' marks an NFE of k where the method "
        "cannot hit the column's exactly.\n")
  for oracle in ORACLES:
    for sde_name in sde_names:
      print("\n".join(nfe_table(oracle, sde_name, nfes)) + "\n", flush=True)
  print("Wall-time ratio, diffrax reverse-SDE solve / lax.scan Euler-Maruyama, equal NFE, 2000 x 64-D, VP:\n")
  print("\n".join(sde_vs_scan_rows([100] if args.quick else [100, 1000])))


if __name__ == "__main__":
  main()
