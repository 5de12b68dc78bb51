"""Training step of this port against yang-song/score_sde_pytorch, interleaved in one run on this CPU.

python benchmarks/reference_throughput.py --reference_dir SCORE_SDE_PYTORCH --reference_python PYTHON
    [--cases ve_ncsnpp_continuous,vp_ddpmpp_continuous,ve_ncsnpp_continuous:32] [--batch 8] [--rounds 3]
    [--turn_steps 3] [--baseline_root OTHER_CHECKOUT_OF_THIS_PROJECT] [--phases] [--pause 1.0]

Each side runs in its own worker process (the reference needs PyTorch, which is never a dependency
of this project: --reference_python is an interpreter of a separate environment with torch, numpy,
scipy and ml_collections). A worker builds its side's model, loss and optimizer (the reference's own
code, imported unmodified: models.utils.create_model, losses.get_optimizer / optimization_manager /
get_step_fn, models.ema; only its CUDA `op` extension is replaced by the file's own CPU branch,
`upfirdn2d_native`, which is what it runs on CPU anyway), compiles / warms up with one step, then
runs one step per request. Our worker starts with the environment our scripts give themselves
(score_sde/cli/huge_pages.py: glibc.malloc.hugetlb=1 where it helps); the reference and a baseline
start with this process's environment, so `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python ...` gives
them the same malloc.

The controller alternates the sides in turns, so both see the same machine load: per round, each
side in turn waits --pause seconds of idle machine (a worker's intra-op threads, PyTorch's OpenMP
team and XLA's Eigen pool, keep spinning for a while after its step and would take cores from the
next worker), then runs --turn_steps steps back to back, as a training loop does. s/step is the
median of the steps after the first of each turn; the first steps are printed apart ("1st of turn"):
a step that follows the other side's turn can pay for memory the machine took back meanwhile. Ours
frees XLA:CPU's temporaries after every step, and on a 2-core VM its DDPM++ step took 1.2-1.4 s longer
first in a turn than after, while the reference's, which keeps its memory in malloc's heap, barely
differed. It prints s/step, images/s, the ours/reference speed ratio of both, the first (compiling)
step, parameter counts, the load average and, per step after a turn's first, the CPU seconds each
side spent in user and in system (kernel) mode and its page faults. Case NAME:NF overrides model.nf.
With --baseline_root, a third worker runs the training step of another checkout of this project
(e.g. `git archive <commit> | tar -x -C DIR`) in the same alternation: before/after ratios. Its presence
slowed both JAX workers by 10-15% on a 2-core CPU (DDPM++), so compare those two rows with each other, and
take ours / reference from a run without it.
With --phases, each side also times the loss alone (forward pass, training mode) and the loss with its
gradient (forward + backward), so the table splits a step into forward, backward and the optimizer / EMA
update.
"""
import argparse
import ast
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
import types

import train_step_case

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_CONFIGS = {  # our configs/cifar10/NAME.py -> the reference's configs/PATH
    "ve_ncsnpp_continuous": "ve/cifar10_ncsnpp_continuous.py",
    "vp_ddpmpp_continuous": "vp/cifar10_ddpmpp_continuous.py",
}


def _send(message: dict) -> None:
  print(json.dumps(message), flush=True)


PHASES = ("forward", "forward_backward", "step")


def _serve(calls: dict, first_step_seconds: float, num_params: int) -> None:
  """Worker loop: one timed call per line on stdin naming a PHASE; on stdout a JSON line with its seconds, the
  CPU seconds the process spent in user and in system (kernel) mode, and its page faults (minor: no disk)."""
  _send({"compile_s": first_step_seconds, "params": num_params})
  for line in sys.stdin:
    if line.strip() not in calls:
      return
    before, tic = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    calls[line.strip()]()
    seconds, after = time.perf_counter() - tic, resource.getrusage(resource.RUSAGE_SELF)
    _send({"seconds": seconds, "user_s": after.ru_utime - before.ru_utime,
           "system_s": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt})


def _ours(name: str, nf: int | None, batch: int, root: pathlib.Path) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(root))
  config, setup, train_step, state, batch_arrays = train_step_case.build(root, f"cifar10/{name}", nf, batch)
  from score_sde import losses, train  # pylint: disable=import-outside-toplevel
  if not pathlib.Path(train.__file__).resolve().is_relative_to(root.resolve()):
    raise RuntimeError(f"imported {train.__file__}, not the checkout {root}")
  holder = {"state": state, "k": 0}

  def step():
    holder["k"] += 1
    holder["state"], metrics = train_step(holder["state"], batch_arrays, jax.random.fold_in(setup.keys.train,
                                                                                             holder["k"]))
    jax.block_until_ready(metrics)

  t = config.training
  loss_fn = losses.get_loss_fn(setup.sde, setup.model, train=True, reduce_mean=t.reduce_mean,
                               continuous=t.continuous, likelihood_weighting=t.likelihood_weighting,
                               importance_weighting=t.importance_weighting, eps=t.eps,
                               cond_drop_prob=t.cond_drop_prob)
  options = getattr(train, "compiler_options", lambda mesh: {})(setup.mesh)  # baselines may predate it
  forward = jax.jit(loss_fn, compiler_options=options)
  forward_backward = jax.jit(jax.value_and_grad(loss_fn), compiler_options=options)

  def timed(fn):
    return lambda: jax.block_until_ready(fn(holder["state"].params, setup.keys.train, batch_arrays))

  tic = time.perf_counter()
  step()
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  _serve({"forward": timed(forward), "forward_backward": timed(forward_backward), "step": step},
         time.perf_counter() - tic, int(num_params))


def _reference_op_module(reference_dir: pathlib.Path) -> types.ModuleType:
  """`op` with the reference's own upfirdn2d / upfirdn2d_native, without compiling its CUDA extension."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch.nn import functional as F  # pylint: disable=import-outside-toplevel
  source = (reference_dir / "op/upfirdn2d.py").read_text()
  functions = [node for node in ast.parse(source).body
               if isinstance(node, ast.FunctionDef) and node.name in ("upfirdn2d", "upfirdn2d_native")]
  module = types.ModuleType("op")
  module.__dict__.update(torch=torch, F=F)
  exec(compile(ast.Module(body=functions, type_ignores=[]), str(reference_dir / "op/upfirdn2d.py"), "exec"),
       module.__dict__)  # pylint: disable=exec-used
  return module


def _reference(name: str, nf: int | None, batch: int, reference_dir: pathlib.Path) -> None:
  import importlib.util  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(reference_dir))
  sys.modules["op"] = _reference_op_module(reference_dir)
  import losses  # pylint: disable=import-outside-toplevel
  import sde_lib  # pylint: disable=import-outside-toplevel
  from models import ddpm, ncsnpp, utils as mutils  # noqa: F401  pylint: disable=import-outside-toplevel
  from models.ema import ExponentialMovingAverage  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("reference_config", reference_dir / "configs" /
                                                REFERENCE_CONFIGS[name])
  config_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_module)
  config = config_module.get_config()
  config.device = torch.device("cpu")
  config.training.batch_size = batch
  if nf:
    config.model.nf = nf
  model = mutils.create_model(config)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
  if config.training.sde.lower() == "vesde":
    sde = sde_lib.VESDE(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
  else:
    sde = sde_lib.VPSDE(config.model.beta_min, config.model.beta_max, config.model.num_scales)
  train_step = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                  reduce_mean=config.training.reduce_mean, continuous=config.training.continuous,
                                  likelihood_weighting=config.training.likelihood_weighting)
  generator = torch.Generator().manual_seed(0)
  images = torch.rand((batch, config.data.num_channels, config.data.image_size, config.data.image_size),
                      generator=generator) * 2.0 - 1.0

  loss_fn = losses.get_sde_loss_fn(sde, train=True, reduce_mean=config.training.reduce_mean, continuous=True,
                                   likelihood_weighting=config.training.likelihood_weighting)

  def step():
    train_step(state, images)

  def forward():
    with torch.no_grad():
      loss_fn(model, images)

  def forward_backward():
    model.zero_grad()
    loss_fn(model, images).backward()

  tic = time.perf_counter()
  step()
  _serve({"forward": forward, "forward_backward": forward_backward, "step": step}, time.perf_counter() - tic,
         sum(p.numel() for p in model.parameters()))


class Worker:
  """A worker process of one side, driven one step at a time."""

  def __init__(self, command: list[str], environ: dict[str, str] | None = None):
    """Starts `command` with `environ` (None: this process's environment)."""
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environ)
    self.info = self._read()

  def _read(self) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"worker {self.process.args} exited with code {self.process.wait()}")
    return json.loads(line)

  def time(self, phase: str = "step") -> dict:
    """One call of `phase` (one of PHASES) in the worker: its seconds, user_s, system_s and faults."""
    self.process.stdin.write(f"{phase}\n")
    self.process.stdin.flush()
    return self._read()

  def close(self) -> None:
    self.process.stdin.close()
    self.process.wait()


def _parse_case(case: str) -> tuple[str, int | None]:
  name, nf = train_step_case.parse_case(case)
  if name not in REFERENCE_CONFIGS:
    raise ValueError(f"unknown case {name!r}; choose from {sorted(REFERENCE_CONFIGS)}")
  return name, nf


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference_dir", type=pathlib.Path, help="a checkout of yang-song/score_sde_pytorch")
  parser.add_argument("--reference_python", default="python3", help="an interpreter with torch installed")
  parser.add_argument("--cases", default="ve_ncsnpp_continuous,vp_ddpmpp_continuous,ve_ncsnpp_continuous:32")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=3, help="turns per side, alternating")
  parser.add_argument("--turn_steps", type=int, default=3,
                      help="steps back to back per turn; s/step is the median of all but each turn's first")
  parser.add_argument("--pause", type=float, default=1.0,
                      help="seconds of idle machine before each turn (0: none)")
  parser.add_argument("--baseline_root", type=pathlib.Path, help="another checkout of this project to time too")
  parser.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
  parser.add_argument("--phases", action="store_true", help="also time forward and forward + backward")
  parser.add_argument("--root", type=pathlib.Path, default=ROOT, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.pause < 0:
    parser.error(f"--pause must be >= 0 seconds, got {args.pause}")
  if args.turn_steps < 2:
    parser.error(f"--turn_steps must be >= 2 (the first step of a turn is timed apart), got {args.turn_steps}")
  if args.worker:
    name, nf = _parse_case(args.cases)
    if args.worker == "ours":
      _ours(name, nf, args.batch, args.root)
    else:
      _reference(name, nf, args.batch, args.reference_dir.resolve())
    return
  if args.reference_dir is None or not (args.reference_dir / "losses.py").exists():
    sys.exit(f"--reference_dir {args.reference_dir} is not a score_sde_pytorch checkout (no losses.py)")
  cases = [case for case in args.cases.split(",") if case]
  for case in cases:
    _parse_case(case)
  sys.path.insert(0, str(ROOT))  # not in the workers: the reference's worker imports its own `configs`
  from score_sde.cli import huge_pages  # pylint: disable=import-outside-toplevel
  print(f"training step, batch {args.batch}, CPU: {args.rounds} turns of {args.turn_steps} steps per side, "
        f"alternating; s/step: median of the steps after each turn's first; load average before: "
        f"{os.getloadavg()[0]:.2f}")
  print(f"{'case':>26} {'side':>9} {'params':>10} {'compile s':>9} {'s/step':>7} {'images/s':>8} {'ours/ref':>8} "
        f"{'1st of turn s':>13} {'ours/ref':>8}")
  script = str(pathlib.Path(__file__).resolve())
  for case in cases:
    common = ["--cases", case, "--batch", str(args.batch)]
    ours = [sys.executable, script, "--worker", "ours"] + common
    workers = {"ours": Worker(ours, huge_pages.environment_with_huge_pages())}
    if args.baseline_root:
      workers["baseline"] = Worker(ours + ["--root", str(args.baseline_root.resolve())])
    workers["reference"] = Worker([args.reference_python, script, "--worker", "reference", "--reference_dir",
                                   str(args.reference_dir)] + common)
    phases = PHASES if args.phases else ("step",)
    for worker in workers.values():
      for phase in phases[:-1]:
        worker.time(phase)  # compiles
    times = {(side, phase): [] for side in workers for phase in phases}
    first_of_turn = {side: [] for side in workers}
    usage = {side: [] for side in workers}  # of the steps after each turn's first
    for _ in range(args.rounds):
      for phase in phases:
        for side, worker in workers.items():
          time.sleep(args.pause)  # the previous worker's threads stop spinning before this one starts
          turn = [worker.time(phase) for _ in range(args.turn_steps)]
          times[(side, phase)] += [call["seconds"] for call in turn[1:]]
          if phase == "step":
            first_of_turn[side].append(turn[0]["seconds"])
            usage[side] += turn[1:]
    for worker in workers.values():
      worker.close()
    medians = {key: statistics.median(seconds) for key, seconds in times.items()}
    firsts = {side: statistics.median(seconds) for side, seconds in first_of_turn.items()}
    for side, worker in workers.items():
      step_s = medians[(side, "step")]
      ratios = ("", "") if side == "reference" else (f"{medians[('reference', 'step')] / step_s:.2f}",
                                                     f"{firsts['reference'] / firsts[side]:.2f}")
      print(f"{case:>26} {side:>9} {worker.info['params']:>10,d} {worker.info['compile_s']:>9.1f} "
            f"{step_s:>7.3f} {args.batch / step_s:>8.2f} {ratios[0]:>8} {firsts[side]:>13.3f} {ratios[1]:>8}",
            flush=True)
    for side in workers:
      per_step = {key: statistics.median(call[key] for call in usage[side])
                  for key in ("user_s", "system_s", "faults")}
      print(f"{case:>26} {side:>9}   per step: CPU {per_step['user_s']:.2f} s user, {per_step['system_s']:.2f} s "
            f"system; {per_step['faults']:,.0f} page faults", flush=True)
    if args.phases:
      _print_phases(case, list(workers), medians)
  print(f"load average after: {os.getloadavg()[0]:.2f}")


def _print_phases(case: str, sides: list[str], medians: dict) -> None:
  """Seconds of forward, backward (forward + backward less forward) and update (step less both) per side."""
  split = {side: {"forward": medians[(side, "forward")],
                  "backward": medians[(side, "forward_backward")] - medians[(side, "forward")],
                  "update": medians[(side, "step")] - medians[(side, "forward_backward")]} for side in sides}
  for side in sides:
    parts = "  ".join(f"{part} {seconds:.3f} s" + (f" ({split['reference'][part] / seconds:.2f})"
                                                  if side != "reference" and seconds > 0 else "")
                      for part, seconds in split[side].items())
    print(f"{case:>26} {side:>9}   {parts}", flush=True)


if __name__ == "__main__":
  main()
