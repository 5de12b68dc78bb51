"""Dropout with flax.linen.Dropout's masks, drawn by a Threefry-2x32 that XLA:CPU fuses into one loop.

`jax.random.bits` compiles on CPU into several loops with 32-bit intermediates written to memory; the
same Threefry-2x32 (Salmon et al. 2011, 20 rounds) written as one chain of elementwise ops over the
element counters fuses into a single loop and gives the same bits: dropout forward + backward in half
the time of flax's or less (`benchmarks/layer_speed.py`). DDPM++ on CIFAR-10 draws 18.9M of them a step.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: Array, bits: int) -> Array:
  return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry_2x32(key: tuple[Array, Array], x0: Array, x1: Array) -> tuple[Array, Array]:
  """Threefry-2x32 with 20 rounds: key injection every 4 rounds, the key schedule (k0, k1, k0^k1^C)."""
  schedule = (key[0], key[1], key[0] ^ key[1] ^ _KEY_PARITY)
  x0, x1 = x0 + schedule[0], x1 + schedule[1]
  for block in range(5):
    for rotation in _ROTATIONS[block % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, rotation)
    x0 = x0 + schedule[(block + 1) % 3]
    x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
  return x0, x1


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
  """uint32 bits equal to `jax.random.bits(key, shape)` for a threefry key (partitionable bits, JAX's
  default): element i is the xor of the two Threefry words of the counter (0, i). Other keys, or 2^32
  elements or more, take jax.random.bits."""
  size = int(np.prod(shape))
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32[2] key (jax.random.PRNGKey)
    key = jax.random.wrap_key_data(key)
  if (str(jax.random.key_impl(key)) != "threefry2x32" or not jax.config.jax_threefry_partitionable
      or size >= 2 ** 32):
    return jax.random.bits(key, shape, jnp.uint32)
  key_words = jax.random.key_data(key)
  counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
  high, low = threefry_2x32((key_words[0], key_words[1]), jnp.zeros_like(counter), counter)
  return high ^ low


def keep_threshold(keep_prob: float) -> int:
  """The integer t with (bits < t) == (uniform(bits) < keep_prob) for JAX's float32 uniforms.

  jax.random.uniform maps bits to (bits >> 9) * 2^-23, compared with float32(keep_prob); so an element
  is kept iff (bits >> 9) < ceil(keep * 2^23), iff bits < ceil(keep * 2^23) * 2^9 (exact in float64).
  """
  return int(np.ceil(np.float64(np.float32(keep_prob)) * 2.0 ** 23)) << 9


class Dropout(nn.Module):
  """flax.linen.Dropout (same "dropout" rng stream, same masks and scaling), with faster random bits."""

  rate: float
  deterministic: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.rate == 0.0 or self.deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    key, threshold = self.make_rng("dropout"), keep_threshold(keep_prob)
    if threshold >= 2 ** 32:  # keep_prob is 1 in float32: every element kept
      return x / keep_prob
    mask = random_bits(key, x.shape) < np.uint32(threshold)
    return jax.lax.select(mask, x / keep_prob, jnp.zeros_like(x))
