"""Layers shared by the score networks."""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import sde as sde_lib
from score_sde.models import dropout, normalization, up_or_down_sampling

Array = jax.Array


def get_timestep_embedding(timesteps: Array, embedding_dim: int, max_positions: int = 10000) -> Array:
  """Transformer sinusoidal embedding of (possibly fractional) timesteps [B] -> [B, embedding_dim]."""
  half_dim = embedding_dim // 2
  frequencies = jnp.exp(-math.log(max_positions) * jnp.arange(half_dim, dtype=jnp.float32) / (half_dim - 1))
  args = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


class GaussianFourierProjection(nn.Module):
  """Random Fourier features [sin(2 pi w x), cos(2 pi w x)] with fixed w ~ N(0, scale^2)."""

  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    w = self.param("W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    w = jax.lax.stop_gradient(w)
    proj = x[:, None] * w[None, :] * 2 * np.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def noise_embedding(embedding_type: str, noise_labels: Array, dim: int, fourier_scale: float) -> Array:
  """[B, dim] embedding of the noise labels of the small networks (mlp, unet): Gaussian Fourier features
  of log(label) ("fourier", the labels are noise scales) or the sinusoidal embedding ("positional").
  Call it inside a compact module: "fourier" adds its GaussianFourierProjection there."""
  if embedding_type == "fourier":
    return GaussianFourierProjection(dim // 2, fourier_scale)(jnp.log(noise_labels))
  if embedding_type == "positional":
    return get_timestep_embedding(noise_labels, dim)
  raise ValueError(f"unknown model.embedding_type {embedding_type!r}; use 'positional' or 'fourier'")


# Building blocks of the U-Nets (DDPM, NCSN++/DDPM++). Images are NHWC; `temb` is [B, D].

def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """DDPM initializer: variance scaling (fan_avg, uniform); scale 0 becomes 1e-10 (a near-zero layer)."""
  return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
    "swish": nn.swish,
    "gelu": nn.gelu,
}


def get_act(name: str) -> Callable[[Array], Array]:
  """The nonlinearity named by model.nonlinearity."""
  if name.lower() not in ACTIVATIONS:
    raise ValueError(f"unknown model.nonlinearity {name!r}; choose from {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name.lower()]


def _upsampled_input_conv(lhs: Array, rhs: Array, window_strides, padding, *, dimension_numbers,
                          lhs_dilation=None, rhs_dilation=None, feature_group_count: int = 1,
                          precision: jax.lax.PrecisionLike = None) -> Array:
  """nn.Conv's convolution for `conv(..., upsample_input=True)`: the SAME conv of the 2x nearest upsampling."""
  del dimension_numbers  # NHWC / HWIO, as nn.Conv lays them out for 2-d inputs
  if (tuple(window_strides) != (1, 1) or padding != "SAME" or feature_group_count != 1
      or any(d not in (None, (1, 1)) for d in (lhs_dilation, rhs_dilation))):
    raise ValueError("upsample_input needs a plain SAME stride-1 convolution")
  return up_or_down_sampling.nearest_upsample_conv_2d(lhs, rhs, precision=precision)


def conv(features: int, kernel_size: int = 3, *, stride: int = 1, init_scale: float = 1.0,
         dtype: jnp.dtype = jnp.float32, upsample_input: bool = False) -> nn.Conv:
  """'SAME' convolution with DDPM initialization, zero bias and float32 parameters.

  `upsample_input`: the conv of the input's 2x nearest-neighbour upsampling, with the same parameters,
  computed at the input's resolution (up_or_down_sampling.nearest_upsample_conv_2d).
  """
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride), padding="SAME",
                 kernel_init=default_init(init_scale), dtype=dtype, param_dtype=jnp.float32,
                 conv_general_dilated=_upsampled_input_conv if upsample_input else None)


def dense(features: int, *, init_scale: float = 1.0, dtype: jnp.dtype = jnp.float32) -> nn.Dense:
  """Dense layer (also the 1x1 'network-in-network' map over channels) with DDPM initialization."""
  return nn.Dense(features, kernel_init=default_init(init_scale), dtype=dtype, param_dtype=jnp.float32)


def rescale_skip(x: Array, h: Array, skip_rescale: bool) -> Array:
  """Residual sum x + h, divided by sqrt(2) when `skip_rescale` (keeps unit variance)."""
  return (x + h) / np.sqrt(2.0) if skip_rescale else x + h


class AttnBlock(nn.Module):
  """Self-attention over the H*W positions (DDPM); `num_heads` > 1 splits the channels into heads."""

  num_heads: int = 1
  normalization: str = "GroupNorm"
  skip_rescale: bool = False
  init_scale: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    batch, height, width, channels = x.shape
    if channels % self.num_heads:
      raise ValueError(f"attention over {channels} channels cannot be split into {self.num_heads} heads")
    head_dim = channels // self.num_heads
    h = normalization.get_normalization(self.normalization, self.dtype)()(x)
    q, k, v = (dense(channels, dtype=self.dtype)(h).reshape(batch, height * width, self.num_heads, head_dim)
               for _ in range(3))
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k).astype(jnp.float32) / np.sqrt(head_dim)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    h = jnp.einsum("bnqk,bknd->bqnd", weights, v).reshape(batch, height, width, channels)
    h = dense(channels, init_scale=self.init_scale, dtype=self.dtype)(h)
    return rescale_skip(x, h, self.skip_rescale)


class _Resample(nn.Module):
  """The fields of Upsample and Downsample: output channels (default: the input's), a conv, FIR filtering."""

  out_ch: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
  conv_size: int = 3
  dtype: jnp.dtype = jnp.float32


class Upsample(_Resample):
  """x2 upsampling: nearest (+ conv), or FIR (Karras et al.): FIR alone, or fused with a conv.

  The fused FIR conv is StyleGAN2's upsample_conv_2d: a stride-2 transposed conv (VALID), then the
  FIR low-pass (gain 4) trimmed back to 2H x 2W.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      if self.with_conv:
        return conv(out_ch, self.conv_size, dtype=self.dtype, upsample_input=True)(x)
      return up_or_down_sampling.naive_upsample_2d(x, factor=2)
    if not self.with_conv:
      return up_or_down_sampling.upsample_2d(x, self.fir_kernel, factor=2)
    edge = self.conv_size - 1
    h = nn.Conv(out_ch, (self.conv_size, self.conv_size), padding=((edge, edge), (edge, edge)), input_dilation=(2, 2),
                use_bias=False, kernel_init=default_init(), dtype=self.dtype, param_dtype=jnp.float32)(x)
    k = up_or_down_sampling.setup_kernel(self.fir_kernel) * 4
    h = up_or_down_sampling.upfirdn2d(h, k, pad=up_or_down_sampling.fir_upsample_padding(k.shape[0], self.conv_size))
    return h + self.param("bias", nn.initializers.zeros, (out_ch,)).astype(self.dtype)  # after the filter


class Downsample(_Resample):
  """/2 downsampling: strided conv or 2x2 mean, or FIR (Karras et al.): FIR alone, or fused with a conv.

  The fused FIR conv is StyleGAN2's conv_downsample_2d: the FIR low-pass, then a stride-2 VALID conv.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      if self.with_conv:
        return conv(out_ch, self.conv_size, stride=2, dtype=self.dtype)(x)
      return up_or_down_sampling.naive_downsample_2d(x, factor=2)
    if not self.with_conv:
      return up_or_down_sampling.downsample_2d(x, self.fir_kernel, factor=2)
    k = up_or_down_sampling.setup_kernel(self.fir_kernel)
    h = up_or_down_sampling.upfirdn2d(x, k, pad=up_or_down_sampling.fir_downsample_padding(k.shape[0], self.conv_size))
    return nn.Conv(out_ch, (self.conv_size, self.conv_size), strides=(2, 2), padding="VALID",
                   kernel_init=default_init(), dtype=self.dtype, param_dtype=jnp.float32)(h)


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block: norm-act-conv, + Dense(act(temb)), norm-act-dropout-conv, 1x1 skip if widths differ."""

  act: Callable[[Array], Array]
  out_ch: int | None = None
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0
  conv_size: int = 3
  normalization: str = "GroupNorm"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    norm = normalization.get_normalization(self.normalization, self.dtype)
    h = conv(out_ch, self.conv_size, dtype=self.dtype)(self.act(norm()(x)))
    if temb is not None:
      h = h + dense(out_ch, dtype=self.dtype)(self.act(temb))[:, None, None, :]
    h = dropout.Dropout(self.dropout, deterministic=not train)(self.act(norm()(h)))
    h = conv(out_ch, self.conv_size, init_scale=self.init_scale, dtype=self.dtype)(h)
    if x.shape[-1] != out_ch:
      x = dense(out_ch, dtype=self.dtype)(x)
    return rescale_skip(x, h, self.skip_rescale)


class ResnetBlockBigGAN(nn.Module):
  """BigGAN residual block (NCSN++): resampling inside the block, on both the residual and the skip path."""

  act: Callable[[Array], Array]
  out_ch: int | None = None
  up: bool = False
  down: bool = False
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  conv_size: int = 3
  normalization: str = "GroupNorm"
  dtype: jnp.dtype = jnp.float32

  def _resample(self, x: Array) -> Array:
    if self.up:
      return (up_or_down_sampling.upsample_2d(x, self.fir_kernel) if self.fir
              else up_or_down_sampling.naive_upsample_2d(x))
    if self.down:
      return (up_or_down_sampling.downsample_2d(x, self.fir_kernel) if self.fir
              else up_or_down_sampling.naive_downsample_2d(x))
    return x

  @nn.compact
  def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
    out_ch = self.out_ch or x.shape[-1]
    norm = normalization.get_normalization(self.normalization, self.dtype)
    # Nearest-neighbour upsampling commutes with the convs that follow it: both run at the input's
    # resolution (the 3x3 one phase by phase, see conv's upsample_input), the same function.
    nearest_up = self.up and not self.fir
    h = self.act(norm()(x))
    h = h if nearest_up else self._resample(h)
    h = conv(out_ch, self.conv_size, dtype=self.dtype, upsample_input=nearest_up)(h)
    if temb is not None:
      h = h + dense(out_ch, dtype=self.dtype)(self.act(temb))[:, None, None, :]
    h = dropout.Dropout(self.dropout, deterministic=not train)(self.act(norm()(h)))
    h = conv(out_ch, self.conv_size, init_scale=self.init_scale, dtype=self.dtype)(h)
    if nearest_up:
      x = up_or_down_sampling.naive_upsample_2d(conv(out_ch, 1, dtype=self.dtype)(x))
    else:
      x = self._resample(x)
      if x.shape[-1] != out_ch or self.up or self.down:
        x = conv(out_ch, 1, dtype=self.dtype)(x)
    return rescale_skip(x, h, self.skip_rescale)


class Combine(nn.Module):
  """Merge a pyramid image into features: 1x1 conv of the image, then sum or channel concat."""

  method: str = "cat"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pyramid: Array, h: Array) -> Array:
    p = conv(h.shape[-1], 1, dtype=self.dtype)(pyramid)
    return COMBINE_METHODS[self.method](p, h)


COMBINE_METHODS: dict[str, Callable[[Array, Array], Array]] = {
    "sum": lambda p, h: p + h,
    "cat": lambda p, h: jnp.concatenate([p, h], axis=-1),
}


# Reading the config: noise labels, dtypes and choice validation shared by the builders.

@dataclasses.dataclass(frozen=True)
class NoiseLabels:
  """How a network reads the noise labels of `score_sde.models.utils`.

  Labels are sigma(t) (continuous VE), 999 t (VP, sub-VP) or, with `ncsn_index`, NCSN's label
  j = N - 1 - i of the SMLD noise level sigma_i = `sde.smld_sigmas(...)[i]` (sigma_max first).
  """

  ncsn_index: bool = False
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000

  def sigma(self, labels: Array) -> Array:
    """The noise level sigma a label stands for (only meaningful for VE labels)."""
    if not self.ncsn_index:
      return labels.astype(jnp.float32)
    sigmas = jnp.asarray(sde_lib.smld_sigmas(self.sigma_min, self.sigma_max, self.num_scales), jnp.float32)
    return sigmas[self.num_scales - 1 - jnp.round(labels).astype(jnp.int32)]


def noise_labels_from_config(config) -> NoiseLabels:
  """Discrete VE training feeds NCSN indices; everything else feeds the label as is."""
  m = config.model
  return NoiseLabels(ncsn_index=config.training.sde == "vesde" and not config.training.continuous,
                     sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max), num_scales=int(m.num_scales))


DTYPES: dict[str, jnp.dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_dtype(config) -> jnp.dtype:
  """Activation dtype of model.dtype (parameters always stay float32)."""
  check_choice("dtype", config.model.dtype, DTYPES)
  return DTYPES[config.model.dtype]


def check_choice(field: str, value, choices) -> None:
  """Raises a ValueError naming `model.<field>` when `value` is not one of `choices`."""
  if value not in choices:
    raise ValueError(f"unknown model.{field} {value!r}; choose from {sorted(choices)}")
