"""Where the jitted training step spends its time on this CPU: XLA:CPU's per-op trace, grouped by kind.

python benchmarks/profile_train_step.py [--config cifar10/vp_ddpmpp_continuous] [--nf 0] [--batch 8] [--steps 2]

Traces --steps steps (after a compiling one) with XLA:CPU's per-thunk TraceMe events, maps each
fusion to the ops it computes in the compiled HLO and sums the thread time per kind: convolutions
(forward and input-gradient ones, small windows; weight-gradient ones, whose window spans the
activations), dots, reductions, layout transposes / copies and the remaining elementwise fusions. Thread
time summed over the intra-op threads, so its total exceeds the wall time of a step. The step's Eigen
convolutions (`train.CPU_COMPILER_OPTIONS`) run in Eigen's own thread pool, outside the trace: their rows
time only the dispatch, and the rest of the step is what the table shows.
"""
import argparse
import collections
import os
import pathlib
import re
import sys
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax._src.lib import _profile_data  # noqa: E402

import train_step_case  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def op_kinds(hlo: str) -> dict[str, str]:
  """Fusion / instruction name -> kind, from the text of a compiled module."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(r"\n(%[\w.\-]+) \([^\n]*\) -> [^\n]* \{\n(.*?)\n\}", hlo, re.S)}
  kinds = {}
  for m in re.finditer(r"\n\s*(?:ROOT )?%([\w.\-]+) = [^\n]*? (fusion|convolution|dot|copy|transpose)\(([^\n]*)", hlo):
    name, opcode, rest = m.groups()
    called = re.search(r"calls=(%[\w.\-]+)", rest)
    body = bodies.get(called.group(1), "") if called and opcode == "fusion" else m.group(0)
    window = re.search(r"convolution\([^\n]*window=\{size=([\dx]+)", body)
    if window:
      kinds[name] = ("convolution, weight gradient" if np.prod([int(k) for k in window.group(1).split("x")]) > 9
                     else "convolution, forward / input gradient")
    elif re.search(r" dot\(", body):
      kinds[name] = "dot"
    elif re.search(r" reduce(-window)?\(", body):
      kinds[name] = "reduction"
    elif re.search(r" (transpose|copy)\(", body) and not re.search(r" (add|multiply|subtract|divide)\(", body):
      kinds[name] = "transpose / copy"
    else:
      kinds[name] = "elementwise and other"
  return kinds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="cifar10/vp_ddpmpp_continuous")
  parser.add_argument("--nf", type=int, default=0, help="model.nf (0: the config's)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=2)
  args = parser.parse_args()
  config, setup, step, state, batch = train_step_case.build(ROOT, args.config, args.nf or None, args.batch)
  kinds = op_kinds(step.lower(state, batch, setup.keys.train).compile().as_text())
  state, metrics = step(state, batch, setup.keys.train)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for k in range(args.steps):
        state, metrics = step(state, batch, jax.random.fold_in(setup.keys.train, k))
        jax.block_until_ready(metrics)
    profile = _profile_data.ProfileData.from_file(str(next(pathlib.Path(trace_dir).rglob("*.xplane.pb"))))
  seconds, counts = collections.Counter(), collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in kinds:
          seconds[kinds[event.name]] += event.duration_ns * 1e-9 / args.steps
          counts[kinds[event.name]] += 1
  total = sum(seconds.values())
  print(f"{args.config} (nf={config.model.nf}, batch {args.batch}): thread time per step by kind, "
        f"load average {os.getloadavg()[0]:.2f}")
  print("| kind | s/step | share | ops/step |\n|---|---|---|---|")
  for kind, value in seconds.most_common():
    print(f"| {kind} | {value:.3f} | {value / total:.1%} | {counts[kind] // args.steps} |")
  print(f"| total | {total:.3f} | | |")


if __name__ == "__main__":
  main()
