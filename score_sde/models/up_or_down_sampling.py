"""FIR up/down-sampling (StyleGAN2's upfirdn2d, Karras et al. 2020) on NHWC arrays with XLA convolutions."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def setup_kernel(kernel: Sequence[float] | np.ndarray) -> np.ndarray:
  """Separable 1-D taps k -> normalized 2-D kernel k k^T / sum(k k^T); 2-D kernels are only normalized."""
  k = np.asarray(kernel, dtype=np.float64)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
  return (k / k.sum()).astype(np.float32)


def _rank_one_factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """(a, b) with kernel = outer(a, b) when the 2-D kernel is separable, else None."""
  u, s, vt = np.linalg.svd(np.asarray(kernel, np.float64))
  if s[0] == 0 or np.max(s[1:], initial=0.0) > 1e-7 * s[0]:
    return None
  return u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])


def _upfirdn1d(x: Array, taps: np.ndarray, axis: int, up: int, down: int, pad: tuple[int, int]) -> Array:
  """upfirdn along one axis: zero insertion, pad, true convolution with `taps`, keep every down-th.

  y[o] = sum_i taps[K - 1 - i] x_padded[o down + i]: K strided slices and multiply-adds over all
  channels at once, which XLA fuses into one loop (no depthwise convolution, no transposes).
  """
  config = [(0, 0, 0)] * x.ndim
  config[axis] = (pad[0], pad[1] + up - 1, up - 1)
  padded = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
  size = (padded.shape[axis] - len(taps)) // down + 1
  out = None
  for i, tap in enumerate(taps[::-1]):
    term = jnp.asarray(tap, x.dtype) * jax.lax.slice_in_dim(padded, i, i + (size - 1) * down + 1, down, axis)
    out = term if out is None else out + term
  return out


def upfirdn2d(x: Array, kernel: np.ndarray, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> Array:
  """Upsample (zero insertion), pad, convolve with the 2-D FIR `kernel`, downsample.

  y = down_d( (pad_p(up_u x)) * k ), with `*` a true convolution (the kernel is flipped), applied to
  every channel separately. Output side: (H u + p0 + p1 - kh) // d + 1. Negative pads crop.
  A separable kernel k = a b^T (every kernel `setup_kernel` makes from 1-D taps) runs as two 1-D
  passes (`_upfirdn1d`), the same function up to float rounding and several times faster on CPU.
  """
  factors = _rank_one_factors(kernel)
  if factors is not None:
    rows, cols = factors
    return _upfirdn1d(_upfirdn1d(x, rows, 1, up, down, pad), cols, 2, up, down, pad)
  return upfirdn2d_depthwise(x, kernel, up=up, down=down, pad=pad)


def upfirdn2d_depthwise(x: Array, kernel: np.ndarray, *, up: int = 1, down: int = 1,
                        pad: tuple[int, int] = (0, 0)) -> Array:
  """`upfirdn2d` for any 2-D kernel as one single-channel convolution of the B*C planes."""
  batch, height, width, channels = x.shape
  kh, kw = kernel.shape
  p0, p1 = pad
  # lax.pad's interior padding inserts up - 1 zeros between samples; StyleGAN's upsampling also
  # appends them after the last sample, hence the extra (up - 1) on the high side.
  config = [(0, 0, 0), (p0, p1 + up - 1, up - 1), (p0, p1 + up - 1, up - 1), (0, 0, 0)]
  planes = jnp.transpose(x, (0, 3, 1, 2)).reshape(batch * channels, height, width, 1)
  planes = jax.lax.pad(planes, jnp.zeros((), x.dtype), config)
  flipped = jnp.asarray(kernel[::-1, ::-1], x.dtype)[:, :, None, None]
  out = jax.lax.conv_general_dilated(planes, flipped, window_strides=(down, down), padding="VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out_h, out_w = out.shape[1], out.shape[2]
  return jnp.transpose(out.reshape(batch, channels, out_h, out_w), (0, 2, 3, 1))


def upsample_2d(x: Array, kernel: Sequence[float], factor: int = 2, gain: float = 1.0) -> Array:
  """[B, H, W, C] -> [B, H f, W f, C]: zero insertion then FIR low-pass (kernel scaled by gain f^2)."""
  k = setup_kernel(kernel) * (gain * factor**2)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Array, kernel: Sequence[float], factor: int = 2, gain: float = 1.0) -> Array:
  """[B, H, W, C] -> [B, H / f, W / f, C]: FIR low-pass then keep every f-th sample."""
  k = setup_kernel(kernel) * gain
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def fir_upsample_padding(kernel_size: int, conv_size: int, factor: int = 2) -> tuple[int, int]:
  """Pads of the FIR filter that follows a stride-`factor` transposed conv (StyleGAN2's upsample_conv_2d)."""
  p = (kernel_size - factor) - (conv_size - 1)
  return (p + 1) // 2 + factor - 1, p // 2 + 1


def fir_downsample_padding(kernel_size: int, conv_size: int, factor: int = 2) -> tuple[int, int]:
  """Pads of the FIR filter that precedes a stride-`factor` VALID conv (StyleGAN2's conv_downsample_2d)."""
  p = (kernel_size - factor) + (conv_size - 1)
  return (p + 1) // 2, p // 2


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _nearest_upsample_phases(kernel_size: int) -> tuple[tuple[int, int], list[tuple[int, list[list[int]]]]]:
  """Along one axis, the SAME k-tap conv of a 2x nearest-neighbour upsampling, phase by phase.

  Output 2i + p reads upsampled positions 2i + p + d for d in [-lo, hi] (lo = (k - 1) // 2, hi = k // 2,
  XLA's SAME pads), i.e. input i + floor((p + d) / 2). Returns the input's zero pads and, per phase p,
  (first input offset, kernel indices summed into each of its taps).
  """
  lo, hi = (kernel_size - 1) // 2, kernel_size // 2
  pads = (-((-lo) // 2), (1 + hi) // 2)
  phases = []
  for p in range(2):
    offsets = [(p + d) // 2 for d in range(-lo, hi + 1)]
    first = offsets[0]
    taps = [[] for _ in range(offsets[-1] - first + 1)]
    for index, offset in enumerate(offsets):
      taps[offset - first].append(index)
    phases.append((first + pads[0], taps))
  return pads, phases


def nearest_upsample_conv_2d(x: Array, kernel: Array, precision: jax.lax.PrecisionLike = None) -> Array:
  """conv_SAME(U x, kernel) for U the 2x nearest-neighbour upsampling, computed at the resolution of x.

  Output pixel (2i + p, 2j + q) sees input pixels (i + floor((p + d) / 2), j + floor((q + e) / 2)) for
  the kernel taps (d, e): summing the taps that land on the same input pixel turns each of the four
  output phases (p, q) into a VALID conv of the zero-padded x with at most ceil((k + 1) / 2) taps per
  axis. Four such convs at H x W instead of one k x k conv at 2H x 2W: 4/9 of the multiply-adds for
  k = 3, and U x (4x the input) is never materialised, nor its gradient summed back. Equal to the direct
  form up to the rounding of the summed taps. x: [B, H, W, C], kernel: [k, k, C, D] -> [B, 2H, 2W, D].
  """
  if kernel.shape[0] != kernel.shape[1]:
    raise ValueError(f"nearest_upsample_conv_2d needs a square kernel, got {kernel.shape[:2]}")
  pads, phases = _nearest_upsample_phases(kernel.shape[0])
  padded = jnp.pad(x, ((0, 0), pads, pads, (0, 0)))
  _, height, width, _ = x.shape
  row_kernels = [jnp.stack([sum(kernel[i] for i in group) for group in taps]) for _, taps in phases]

  def phase(p: int, q: int) -> Array:
    (row, taps_p), (col, taps_q) = phases[p], phases[q]
    phase_kernel = jnp.stack([sum(row_kernels[p][:, j] for j in group) for group in taps_q], axis=1)
    window = padded[:, row:row + height + len(taps_p) - 1, col:col + width + len(taps_q) - 1]
    return jax.lax.conv_general_dilated(window, phase_kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)

  out = jnp.stack([jnp.stack([phase(p, q) for q in range(2)], axis=3) for p in range(2)], axis=2)
  return out.reshape(out.shape[0], 2 * height, 2 * width, out.shape[-1])  # [B, H, 2, W, 2, D] -> [B, 2H, 2W, D]


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
  """Mean over non-overlapping factor x factor blocks."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
