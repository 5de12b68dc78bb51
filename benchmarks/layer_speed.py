"""Layers of the score networks as XLA:CPU runs them: ours against the plain Flax / lax form.

python benchmarks/layer_speed.py [--repeats 15] [--step cifar10/vp_ddpmpp_continuous[:NF] --steps 6 [--flip_cost]]

Per layer and shape (batch 8, the shapes of DDPM++ / NCSN++ on CIFAR-10), the median wall time of the jitted
forward pass and of forward + backward (gradients with respect to the input and the parameters), alternating
the two forms in one run, and their ratio (ours / plain; below 1 is faster): GroupNorm + swish,
`normalization.GroupNorm` against `flax.linen.GroupNorm`; 2x nearest upsampling + 3x3 conv (DDPM++'s up
blocks), `layers.Upsample` (the conv phase by phase at the input's resolution) against the conv of the
upsampled input; dropout (rate 0.1), `dropout.Dropout` against `flax.linen.Dropout`. Each pair computes the
same function (the same masks for dropout); the largest difference of their outputs is printed too.

--step CASE: the jitted training step of configs/CASE.py (batch 8, model.nf overridden by ':NF') compiled
twice in one process, with XLA:CPU's convolutions as the training step has them (`train.CPU_COMPILER_OPTIONS`:
XLA's own) and with XLA's default (YNNPACK), alternating single steps: median s/step and the ratio.
--flip_cost adds a third step, timing only: its 3x3 convolutions with as many input as output channels take
their input gradient from a convolution with the kernel as stored, without the spatial flip and the in/out
transpose that the true gradient needs (a wrong gradient), so the difference is what those kernel copies cost.
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from score_sde import train  # noqa: E402
from score_sde.models import dropout, layers, normalization, up_or_down_sampling  # noqa: E402

import train_step_case  # noqa: E402

# XLA:CPU's default YNNPACK fusions (jaxlib 0.10): `train.CPU_COMPILER_OPTIONS` plus convolutions.
XLA_DEFAULT_OPTIONS = {key: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION," + fusion_types
                       for key, fusion_types in train.CPU_COMPILER_OPTIONS.items()}


def _group_norm_case(module_cls, shape):
  channels = shape[-1]
  module = module_cls(num_groups=normalization.group_count(channels))
  x = jax.random.normal(jax.random.key(0), shape) * 2.0 + 0.5
  params = module.init(jax.random.key(1), x)
  return lambda p, x: nn.swish(module.apply(p, x)), params, x


def _upsample_conv_case(phase_form: bool, shape):
  module = layers.Upsample(with_conv=True)
  x = jax.random.normal(jax.random.key(0), shape)
  params = module.init(jax.random.key(1), x)
  if phase_form:
    return module.apply, params, x
  conv = nn.Conv(shape[-1], (3, 3), padding="SAME")
  return (lambda p, x: conv.apply({"params": p["params"]["Conv_0"]}, up_or_down_sampling.naive_upsample_2d(x)),
          params, x)


def _dropout_case(module_cls, shape):
  module = module_cls(0.1, deterministic=False)
  rngs = {"dropout": jax.random.key(2)}
  return lambda p, x: module.apply(p, x, rngs=rngs), {}, jax.random.normal(jax.random.key(0), shape)


def _timed(fn, args, repeats: int, out: list[float]) -> None:
  jax.block_until_ready(fn(*args))
  for _ in range(repeats):
    tic = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - tic)


def compare(name: str, ours, plain, repeats: int) -> None:
  """Prints forward and forward + backward medians of (apply, params, x) cases `ours` and `plain`."""
  rows = {}
  for label, (apply, params, x) in (("ours", ours), ("plain", plain)):
    loss = lambda p, x, apply=apply: jnp.sum(apply(p, x) ** 2)
    rows[label] = (jax.jit(apply), jax.jit(jax.grad(loss, argnums=(0, 1))), params, x)
  difference = float(jnp.max(jnp.abs(rows["ours"][0](*rows["ours"][2:]) - rows["plain"][0](*rows["plain"][2:]))))
  times = {(label, kind): [] for label in rows for kind in ("fwd", "fwd+bwd")}
  for _ in range(3):  # alternate the two forms
    for label, (forward, gradient, params, x) in rows.items():
      _timed(forward, (params, x), repeats, times[(label, "fwd")])
      _timed(gradient, (params, x), repeats, times[(label, "fwd+bwd")])
  median = {key: statistics.median(value) * 1e3 for key, value in times.items()}
  print(f"| {name} | {median[('plain', 'fwd')]:.2f} | {median[('ours', 'fwd')]:.2f} | "
        f"{median[('ours', 'fwd')] / median[('plain', 'fwd')]:.2f} | {median[('plain', 'fwd+bwd')]:.2f} | "
        f"{median[('ours', 'fwd+bwd')]:.2f} | {median[('ours', 'fwd+bwd')] / median[('plain', 'fwd+bwd')]:.2f} | "
        f"{difference:.1e} |", flush=True)


def _same_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _conv_with_unflipped_gradient(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _same_conv(x, kernel)


def _unflipped_forward(x, kernel):
  return _same_conv(x, kernel), (x, kernel)


def _unflipped_backward(residuals, cotangent):
  """Input 'gradient' conv(cotangent, kernel): the true one convolves with the flipped, transposed kernel."""
  x, kernel = residuals
  return _same_conv(cotangent, kernel), jax.vjp(lambda k: _same_conv(x, k), kernel)[1](cotangent)[0]


_conv_with_unflipped_gradient.defvjp(_unflipped_forward, _unflipped_backward)


def _conv_general_without_flips(lhs, rhs, window_strides, padding, **kwargs):
  """nn.Conv's conv_general_dilated; its square 3x3 stride-1 SAME calls (NHWC, as layers.conv has them) unflipped."""
  if (tuple(window_strides) == (1, 1) and padding == "SAME" and rhs.shape[:2] == (3, 3)
      and rhs.shape[2] == rhs.shape[3]):
    return _conv_with_unflipped_gradient(lhs, rhs)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


def _step_without_kernel_flips(name: str, nf: int | None):
  """(compiled step, state) of `name`, traced with square 3x3 convs taking `_conv_with_unflipped_gradient`."""
  conv = layers.conv

  def conv_without_flips(features: int, kernel_size: int = 3, *, stride: int = 1, init_scale: float = 1.0,
                         dtype=jnp.float32, upsample_input: bool = False) -> nn.Conv:
    if upsample_input:
      return conv(features, kernel_size, stride=stride, init_scale=init_scale, dtype=dtype, upsample_input=True)
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride), padding="SAME",
                   kernel_init=layers.default_init(init_scale), dtype=dtype, param_dtype=jnp.float32,
                   conv_general_dilated=_conv_general_without_flips)

  layers.conv = conv_without_flips
  try:  # the network calls layers.conv while the step is traced
    _, setup, step, state, batch = train_step_case.build(ROOT, name, nf, 8)
    return step.lower(state, batch, setup.keys.train).compile(), state
  finally:
    layers.conv = conv


def compare_steps(case: str, steps: int, flip_cost: bool = False) -> None:
  """Median s/step of the training step of `case` compiled with the step's XLA options and XLA's defaults
  (and, with `flip_cost`, without the kernel flips of its input gradients)."""
  name, nf = train_step_case.parse_case(case)
  _, setup, step, state, batch = train_step_case.build(ROOT, name, nf, 8)
  lowered = step.lower(state, batch, setup.keys.train)
  sides = {"ours (Eigen convolutions)": [lowered.compile(), jax.tree.map(jnp.copy, state)],
           "XLA default (YNNPACK)": [lowered.compile(compiler_options=XLA_DEFAULT_OPTIONS), state]}
  if flip_cost:
    sides["ours without kernel flips"] = list(_step_without_kernel_flips(name, nf))
  times = {label: [] for label in sides}
  for k in range(steps + 1):
    for label, side in sides.items():
      tic = time.perf_counter()
      side[1], metrics = side[0](side[1], batch, jax.random.fold_in(setup.keys.train, k))
      jax.block_until_ready(metrics)
      if k:  # the first call of each warms up
        times[label].append(time.perf_counter() - tic)
  base = statistics.median(times["XLA default (YNNPACK)"])
  print(f"{case}, batch 8, {steps} steps each, alternating; load average {os.getloadavg()[0]:.2f}")
  for label, values in times.items():
    print(f"  {label:28s} {statistics.median(values):.3f} s/step, ratio {statistics.median(values) / base:.3f}")
  if flip_cost:
    ours, unflipped = (statistics.median(times[label]) for label in ("ours (Eigen convolutions)",
                                                                    "ours without kernel flips"))
    print(f"  kernel flips of the square 3x3 input gradients: {ours - unflipped:.3f} s/step "
          f"({(ours - unflipped) / ours:.1%} of ours)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--step", default="", help="also compare the training step of this case's compilations")
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--flip_cost", action="store_true", help="with --step: also time the step without the "
                      "kernel flips of its input gradients (a wrong gradient, timing only)")
  args = parser.parse_args()
  if args.flip_cost and not args.step:
    parser.error("--flip_cost needs --step CASE")
  if args.step:
    try:
      compare_steps(args.step, args.steps, args.flip_cost)
    except (FileNotFoundError, ValueError) as error:  # an unknown config or a malformed NAME:NF
      sys.exit(f"layer_speed.py: --step {args.step}: {error}")
  print(f"load average {os.getloadavg()[0]:.2f}; milliseconds (median), ratio ours / plain")
  print("| layer, input | plain fwd | ours fwd | ratio | plain fwd+bwd | ours fwd+bwd | ratio | max diff |")
  print("|---|---|---|---|---|---|---|---|")
  for shape in [(8, 32, 32, 128), (8, 16, 16, 256), (8, 32, 32, 256)]:
    compare(f"GroupNorm + swish {shape}", _group_norm_case(normalization.GroupNorm, shape),
            _group_norm_case(nn.GroupNorm, shape), args.repeats)
  for shape in [(8, 16, 16, 256), (8, 8, 8, 256), (8, 4, 4, 256)]:
    compare(f"nearest x2 + 3x3 conv {shape}", _upsample_conv_case(True, shape), _upsample_conv_case(False, shape),
            args.repeats)
  for shape in [(8, 32, 32, 128), (8, 16, 16, 256)]:
    compare(f"dropout 0.1 {shape}", _dropout_case(dropout.Dropout, shape), _dropout_case(nn.Dropout, shape),
            args.repeats)
  print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
