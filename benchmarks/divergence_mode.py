"""Cost of one likelihood field evaluation inside a solver loop: reverse-mode (VJP) against forward-mode (JVP) J v.

python benchmarks/divergence_mode.py [--config configs/mnist/vp_unet.py] [--batch 100] [--iterations 3]

The Hutchinson divergence v^T (d drift / dx) v needs J v (forward mode) or v^T J (reverse mode);
`likelihood._drift_and_divergence` runs inside diffrax's while loop. This times, for the config's
network (random weights) at one noise level, a jitted forward pass and forward + VJP at top level,
then `iterations` rounds of a `lax.fori_loop` whose body evaluates the score and J v by each mode,
and prints the seconds per evaluation and their ratio, with the load average.
"""
import argparse
import os
import pathlib
import time

import jax
import jax.numpy as jnp

from score_sde import configs_util, datasets, models
from score_sde import sde as sde_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def seconds(fn, *args, repeats: int = 1) -> float:
  """Mean seconds of `repeats` calls after a compiling one."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(ROOT / "configs/mnist/vp_unet.py"))
  parser.add_argument("--batch", type=int, default=100)
  parser.add_argument("--iterations", type=int, default=3)
  args = parser.parse_args()
  config = configs_util.load_config(args.config)
  sde, model = sde_lib.get_sde(config), models.get_model(config)
  shape = (args.batch,) + datasets.data_shape(config)
  params = models.init_params(jax.random.key(0), model, datasets.data_shape(config))
  x = jax.random.normal(jax.random.key(1), shape)
  probe = jax.random.rademacher(jax.random.key(2), (1,) + shape, jnp.float32)
  t = jnp.full(shape[:1], 0.5)

  def score(params, y):
    return models.get_score_fn(sde, model, params, train=False, continuous=config.training.continuous)(y, t)

  def jac_v(params, y, mode):
    if mode == "reverse (VJP)":
      out, vjp_fn = jax.vjp(lambda z: score(params, z), y)
      return out, jax.vmap(vjp_fn)(probe)[0]
    out, jvp_fn = jax.linearize(lambda z: score(params, z), y)
    return out, jax.vmap(jvp_fn)(probe)

  def looped(params, y, mode):
    def body(_, carry):
      y, total = carry
      out, product = jac_v(params, y, mode)
      return y + 1e-3 * out, total + jnp.sum(product * probe)
    return jax.lax.fori_loop(0, args.iterations, body, (y, jnp.zeros(())))

  print(f"{args.config}, batch {args.batch}, {jax.device_count()} device(s), load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
  forward = seconds(jax.jit(score), params, x, repeats=3)
  top_vjp = seconds(jax.jit(lambda p, y: jac_v(p, y, "reverse (VJP)")), params, x, repeats=3)
  print(f"top level: forward {forward:.3f} s, forward + VJP {top_vjp:.3f} s")
  per_mode = {}
  for mode in ("reverse (VJP)", "forward (JVP)"):
    per_mode[mode] = seconds(jax.jit(lambda p, y, m=mode: looped(p, y, m)), params, x) / args.iterations
    print(f"in a loop, score + J v by {mode}: {per_mode[mode]:.3f} s per evaluation")
  print(f"reverse / forward mode in the loop: {per_mode['reverse (VJP)'] / per_mode['forward (JVP)']:.2f}x")


if __name__ == "__main__":
  main()
