"""Training images/s on 1 and 2 CPU devices in one process, and on 2 processes (jax.distributed).

python benchmarks/train_scaling.py [--config configs/digits/vp_unet.py] [--batch 64] [--steps 8]

Every row times the whole data-parallel step at the same global batch: reading this process's rows
of the next batch, assembling the global array (`parallel.global_batch`) and the jitted train step,
median over `--steps` steps after two warm-up steps. The two-process row starts two copies of this
script joined through `jax.distributed.initialize` on localhost (one CPU device each, gloo
collectives). On a machine with a GPU a last row times all its GPUs. The ratio column divides by
the one-CPU-device row.
"""
import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time

WORKER = "--worker" in sys.argv
if not WORKER:  # two host devices for the in-process rows, forced before jax loads
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2"])

import jax  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

from score_sde import configs_util, datasets, parallel, train  # noqa: E402


def seconds_per_step(config, devices, steps: int) -> float:
  """Median wall time of data read + global batch + sharded train step, after two warm-up steps."""
  setup = train.build(config, parallel.get_mesh(devices).devices.ravel())
  state = train.init_state(config, setup)
  train_step, _ = train.get_step_fns(config, setup)
  rows = parallel.process_rows(config.training.batch_size, setup.mesh)
  batches = datasets.get_dataset(config, "train", rows=rows)
  times = []
  for step in range(steps + 2):
    tic = time.perf_counter()
    state, metrics = train_step(state, parallel.global_batch(next(batches), setup.mesh),
                                jax.random.fold_in(setup.keys.train, step))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - tic)
  return statistics.median(times[2:])


def two_processes(args) -> float:
  """Seconds per step of process 0 of two jax.distributed CPU processes with one device each."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  command = [sys.executable, __file__, "--config", args.config, "--batch", str(args.batch), "--steps", str(args.steps),
             "--worker", str(port)]
  workers = [subprocess.Popen(command + [str(p)], env=env, stdout=subprocess.PIPE, text=True) for p in range(2)]
  try:
    outputs = [w.communicate(timeout=600)[0] for w in workers]
  finally:
    for w in workers:
      w.kill()
  if any(w.returncode for w in workers):
    raise RuntimeError(f"a benchmark worker failed (exit codes {[w.returncode for w in workers]})")
  return json.loads(outputs[0].splitlines()[-1])["seconds"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(ROOT / "configs/digits/vp_unet.py"))
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--worker", nargs=2, type=int, metavar=("PORT", "PROCESS_ID"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    parallel.initialize(f"localhost:{args.worker[0]}", 2, args.worker[1])
  config = configs_util.load_config(args.config, [f"--config.training.batch_size={args.batch}"])
  if args.worker:
    print(json.dumps({"seconds": seconds_per_step(config, None, args.steps)}))
    return
  cpus = jax.devices("cpu")
  rows = [("1 CPU device", seconds_per_step(config, cpus[:1], args.steps)),
          ("2 CPU devices, 1 process", seconds_per_step(config, cpus[:2], args.steps)),
          ("2 processes x 1 CPU device", two_processes(args))]
  if jax.default_backend() == "gpu":
    rows.append((f"{jax.device_count()} GPU", seconds_per_step(config, jax.devices(), args.steps)))
  print(f"{config.data.dataset} {config.model.name} (nf={config.model.nf}), global batch {args.batch}, "
        f"median of {args.steps} steps (data read + global batch + train step)")
  print(f"| {'mesh':<28} | {'s/step':>7} | {'images/s':>9} | {'ratio':>5} |")
  print(f"|{'-' * 30}|{'-' * 9}|{'-' * 11}|{'-' * 7}|")
  for name, seconds in rows:
    print(f"| {name:<28} | {seconds:>7.3f} | {args.batch / seconds:>9.1f} | {rows[0][1] / seconds:>5.2f} |")


if __name__ == "__main__":
  main()
