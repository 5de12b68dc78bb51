"""FIR up/down-sampling (NCSN++'s fir=True): separable 1-D passes against the per-plane 2-D convolution.

python benchmarks/fir_resampling.py [--shape 8,32,32,128] [--rounds 5]

Times value_and_grad of sum(upfirdn2d(x)^2) (forward and backward, as in a training step) for
StyleGAN2's (1, 3, 3, 1) kernel, x2 up (gain 4) and /2 down, both implementations alternating in
one process; prints the best seconds, the ratio, the largest output difference and the load average.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import up_or_down_sampling as fir


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="8,32,32,128")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  shape = tuple(int(n) for n in args.shape.split(","))
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  k = fir.setup_kernel((1, 3, 3, 1))
  modes = {"x2 up": dict(kernel=4 * k, up=2, pad=(2, 1)), "/2 down": dict(kernel=k, down=2, pad=(1, 1))}
  print(f"FIR resampling fwd+bwd of {shape}, best of {args.rounds}; load average {os.getloadavg()[0]:.2f}")
  print(f"{'mode':>8} {'depthwise s':>11} {'separable s':>11} {'ratio':>6} {'max |diff|':>10}")
  for mode, options in modes.items():
    options = dict(options)
    kernel = options.pop("kernel")
    fns = [jax.jit(jax.value_and_grad(lambda x, f=f: jnp.sum(f(x, kernel, **options) ** 2)))
           for f in (fir.upfirdn2d_depthwise, fir.upfirdn2d)]
    best = [np.inf, np.inf]
    for fn in fns:
      jax.block_until_ready(fn(x))
    for _ in range(args.rounds):
      for i, fn in enumerate(fns):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        best[i] = min(best[i], time.perf_counter() - start)
    diff = jnp.max(jnp.abs(fir.upfirdn2d_depthwise(x, kernel, **options) - fir.upfirdn2d(x, kernel, **options)))
    print(f"{mode:>8} {best[0]:>11.4f} {best[1]:>11.4f} {best[0] / best[1]:>6.1f} {float(diff):>10.2e}")


if __name__ == "__main__":
  main()
