"""Forward+backward throughput (images/s) of each model family at a small width, float32 vs bfloat16.

Each row times jit(grad(mean squared output)) w.r.t. the parameters on one batch, after a warm-up
call (compilation excluded), over `--repeats` calls; both dtypes are measured side by side in one run.

  python benchmarks/model_throughput.py [--batch 16] [--repeats 10] [--image_size 16]

Most of the run time is XLA compiling the eight gradient functions (about a minute each on 2 cores).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from score_sde.models import get_model

# family -> (model.name, training.sde, model fields on top of the small width)
FAMILIES = {
    "NCSN++ (VE)": ("ncsnpp", "vesde", dict(fir=True, progressive_input="residual", scale_by_sigma=True)),
    "DDPM++ (VP)": ("ncsnpp", "vpsde", dict(embedding_type="positional")),
    "DDPM (VP)": ("ddpm", "vpsde", dict()),
    "NCSNv2 (VE)": ("ncsnv2_64", "vesde", dict(normalization="InstanceNorm++", nonlinearity="elu", scale_by_sigma=True)),
}


def small_config(name: str, sde: str, fields: dict, image_size: int, dtype: str):
  config = base.get_base_config()
  config.training.sde = sde
  config.data.image_size = image_size
  m = config.model
  m.name, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = name, 32, (1, 2), 1, (image_size // 2,)
  m.dropout, m.dtype = 0.1, dtype
  for field, value in fields.items():
    setattr(m, field, value)
  return config


def images_per_second(config, batch: int, repeats: int) -> tuple[float, int]:
  model = get_model(config)
  size = config.data.image_size
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(batch, size, size, 3)), jnp.float32)
  labels = jnp.linspace(1.0, 10.0, batch) if config.training.sde == "vesde" else jnp.linspace(10.0, 990.0, batch)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, labels))["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.normal(size=s.shape), jnp.float32), shapes)

  @jax.jit
  def grads(params, key):
    loss = lambda p: jnp.mean(model.apply({"params": p}, x, labels, train=True, rngs={"dropout": key}) ** 2)
    return jax.grad(loss)(params)

  key = jax.random.key(0)
  jax.block_until_ready(grads(params, key))
  start = time.perf_counter()
  for i in range(repeats):
    jax.block_until_ready(grads(params, jax.random.fold_in(key, i)))
  elapsed = time.perf_counter() - start
  return batch * repeats / elapsed, sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--image_size", type=int, default=16)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}, "
        f"{args.image_size}x{args.image_size}x3, nf=32, ch_mult=(1, 2), 1 block per resolution")
  print("| family | params | float32 img/s | bfloat16 img/s | bf16 / f32 |")
  print("|---|---|---|---|---|")
  for family, (name, sde, fields) in FAMILIES.items():
    f32, count = images_per_second(small_config(name, sde, fields, args.image_size, "float32"), args.batch, args.repeats)
    bf16, _ = images_per_second(small_config(name, sde, fields, args.image_size, "bfloat16"), args.batch, args.repeats)
    print(f"| {family} | {count / 1e6:.2f}M | {f32:.1f} | {bf16:.1f} | {bf16 / f32:.2f} |", flush=True)


if __name__ == "__main__":
  main()
