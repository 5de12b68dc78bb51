"""Start-up of a training run with and without JAX's persistent compilation cache, in fresh processes.

python benchmarks/compile_time.py [--cases vp_ddpmpp_continuous,ve_ncsnpp_continuous:32] [--batch 8]

For each case (configs/cifar10/NAME.py, NAME:NF overrides model.nf) three worker processes run one after
another: without a cache, with an empty cache directory (which it fills) and with that filled cache.
Each builds the training state and runs the first (compiling) jitted step; the table gives the
seconds of both parts and the ratio of the warm-cache start-up to the uncached one. The scripts turn the
cache on by default (`--compilation_cache`, score_sde/cli/common.py).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import train_step_case

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _worker(name: str, nf: int | None, batch: int, cache: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
  sys.path.insert(0, str(ROOT))
  tic = time.perf_counter()
  _, setup, train_step, state, batch_arrays = train_step_case.build(ROOT, f"cifar10/{name}", nf, batch)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - tic
  tic = time.perf_counter()
  _, metrics = train_step(state, batch_arrays, setup.keys.train)
  jax.block_until_ready(metrics)
  print(json.dumps({"init_s": init_s, "first_step_s": time.perf_counter() - tic}))


def _run_worker(case: str, batch: int, cache: str) -> dict:
  done = subprocess.run([sys.executable, __file__, "--worker", case, "--batch", str(batch), "--cache", cache],
                        capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="vp_ddpmpp_continuous,ve_ncsnpp_continuous:32")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker(*train_step_case.parse_case(args.worker), args.batch, args.cache)
    return
  print(f"load average {os.getloadavg()[0]:.2f}")
  print("| case | cache | state (s) | first step (s) | start-up / uncached |")
  print("|---|---|---|---|---|")
  for case in args.cases.split(","):
    with tempfile.TemporaryDirectory() as cache:
      runs = {"none": _run_worker(case, args.batch, ""), "empty (filled)": _run_worker(case, args.batch, cache),
              "warm": _run_worker(case, args.batch, cache)}
    uncached = runs["none"]["init_s"] + runs["none"]["first_step_s"]
    for label, run in runs.items():
      total = run["init_s"] + run["first_step_s"]
      print(f"| {case} | {label} | {run['init_s']:.1f} | {run['first_step_s']:.1f} | {total / uncached:.2f} |",
            flush=True)
  print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
