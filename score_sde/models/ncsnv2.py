"""NCSNv2 (Song & Ermon 2020): a RefineNet of dilated residual blocks and multi-path refinement blocks.

The network is noise-unconditional; its output is divided by sigma (`scale_by_sigma`), so it
estimates the score s(x, sigma) ~ -z / sigma of data perturbed by N(0, sigma^2 I).
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models import layers, normalization
from score_sde.models.registry import register_model

Array = jax.Array

# (channel multiplier, downsample, dilation) of each two-block residual stage. A "downsampling"
# stage with dilation > 1 keeps the resolution and dilates its convolutions instead.
STAGES_64 = ((1, False, 1), (2, True, 1), (2, True, 2), (2, True, 4))
STAGES_128 = ((1, False, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4))
STAGES_256 = ((1, False, 1), (2, True, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4))
# Width multipliers of the refinement blocks, from the deepest stage up. The 32/64 px network
# keeps 2 nf through the third block as score_sde (JAX) does; score_sde_pytorch narrows it to nf.
REFINE_64 = (2, 2, 2, 1)
REFINE_128 = (4, 2, 2, 1, 1)
REFINE_256 = (4, 2, 2, 2, 1, 1)


def ncsn_conv(features: int, kernel_size: int = 3, *, dilation: int = 1, use_bias: bool = True,
              dtype: jnp.dtype = jnp.float32) -> nn.Conv:
  """'SAME' convolution with PyTorch's default initialization (as NCSN/NCSNv2)."""
  return nn.Conv(features, (kernel_size, kernel_size), padding="SAME", kernel_dilation=(dilation, dilation),
                 use_bias=use_bias, kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                 dtype=dtype, param_dtype=jnp.float32)


def mean_pool(x: Array) -> Array:
  """Mean over 2x2 blocks: [B, H, W, C] -> [B, H/2, W/2, C]."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def resize_bilinear(x: Array, shape: Sequence[int]) -> Array:
  """Bilinear resize of [B, H, W, C] to `shape` = (H', W') (RefineNet's multi-resolution fusion).

  Half-pixel sample positions (`jax.image.resize`), as score_sde's NCSNv2, whose released weights
  this must reproduce (tests/test_convert.py); the PyTorch NCSNv2 code uses align_corners=True.
  """
  return jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), "bilinear")


class ResidualBlock(nn.Module):
  """norm-act-conv-norm-act-conv + shortcut; `down` halves the resolution (mean pooling) or dilates."""

  out_ch: int
  act: Callable[[Array], Array]
  down: bool = False
  dilation: int = 1
  normalization: str = "InstanceNorm++"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_ch = x.shape[-1]
    norm = normalization.get_normalization(self.normalization, self.dtype)
    conv = lambda features, kernel_size=3: ncsn_conv(features, kernel_size, dilation=self.dilation, dtype=self.dtype)
    h = self.act(norm()(x))
    if self.down and self.dilation == 1:
      h = self.act(norm()(conv(in_ch)(h)))
      return mean_pool(conv(self.out_ch, 1)(x)) + mean_pool(conv(self.out_ch)(h))
    mid_ch = in_ch if self.down else self.out_ch
    h = conv(self.out_ch)(self.act(norm()(conv(mid_ch)(h))))
    shortcut = x if (in_ch == self.out_ch and not self.down) else conv(self.out_ch)(x)
    return shortcut + h


class RCUBlock(nn.Module):
  """Residual conv units: `n_blocks` times x <- x + (act-conv)^n_stages (x), convolutions without bias."""

  act: Callable[[Array], Array]
  n_blocks: int
  n_stages: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for _ in range(self.n_blocks):
      residual = x
      for _ in range(self.n_stages):
        x = ncsn_conv(x.shape[-1], use_bias=False, dtype=self.dtype)(self.act(x))
      x = x + residual
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: x <- act(x); path <- conv(maxpool5(path)); x <- x + path, n_stages times."""

  act: Callable[[Array], Array]
  n_stages: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = path = self.act(x)
    for _ in range(self.n_stages):
      path = nn.max_pool(path, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)))
      path = ncsn_conv(x.shape[-1], use_bias=False, dtype=self.dtype)(path)
      x = x + path
    return x


class RefineBlock(nn.Module):
  """RefineNet block: RCU per input, multi-resolution fusion (conv + bilinear resize + sum), CRP, RCU."""

  features: int
  act: Callable[[Array], Array]
  end: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[Array], output_shape: Sequence[int]) -> Array:
    hs = [RCUBlock(self.act, n_blocks=2, dtype=self.dtype)(x) for x in xs]
    if len(hs) > 1:
      h = sum(resize_bilinear(ncsn_conv(self.features, dtype=self.dtype)(h), output_shape) for h in hs)
    else:
      h = hs[0]
    h = CRPBlock(self.act, dtype=self.dtype)(h)
    return RCUBlock(self.act, n_blocks=3 if self.end else 1, dtype=self.dtype)(h)


class NCSNv2(nn.Module):
  """x [B, H, W, C], noise labels [B] -> score estimate [B, H, W, C] (output / sigma when scale_by_sigma)."""

  nf: int = 128
  stages: tuple[tuple[int, bool, int], ...] = STAGES_64
  refine_mults: tuple[int, ...] = REFINE_64
  normalization: str = "InstanceNorm++"
  nonlinearity: str = "elu"
  scale_by_sigma: bool = True
  centered: bool = False
  noise_labels: layers.NoiseLabels = layers.NoiseLabels()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, noise_labels: Array, train: bool = False, y: Array | None = None) -> Array:
    if y is not None:
      raise ValueError("NCSNv2 has no class conditioning; model.num_classes must be 0 and y None")
    act = layers.get_act(self.nonlinearity)
    h = (x if self.centered else 2 * x - 1.0).astype(self.dtype)
    h = ncsn_conv(self.nf, dtype=self.dtype)(h)
    features = []
    for mult, down, dilation in self.stages:
      h = ResidualBlock(self.nf * mult, act, down, dilation, self.normalization, self.dtype)(h)
      h = ResidualBlock(self.nf * mult, act, False, dilation, self.normalization, self.dtype)(h)
      features.append(h)
    refined = None
    for i, (feature, mult) in enumerate(zip(reversed(features), self.refine_mults, strict=True)):
      inputs = [feature] if refined is None else [feature, refined]
      refined = RefineBlock(self.nf * mult, act, end=i == len(features) - 1, dtype=self.dtype)(
          inputs, feature.shape[1:3])
    h = act(normalization.get_normalization(self.normalization, self.dtype)()(refined))
    h = ncsn_conv(x.shape[-1], dtype=self.dtype)(h).astype(jnp.float32)
    if self.scale_by_sigma:
      h = h / self.noise_labels.sigma(noise_labels)[:, None, None, None]
    return h


def _builder(stages: tuple[tuple[int, bool, int], ...], refine_mults: tuple[int, ...]):
  downsamplings = sum(1 for _, down, dilation in stages if down and dilation == 1)

  def build(config) -> NCSNv2:
    m = config.model
    layers.check_choice("normalization", m.normalization, normalization.NORMALIZATIONS)
    layers.check_choice("nonlinearity", m.nonlinearity.lower(), layers.ACTIVATIONS)
    if m.num_classes:
      raise ValueError(f"model.num_classes={m.num_classes}: NCSNv2 has no class conditioning")
    if m.scale_by_sigma and config.training.sde != "vesde":
      raise ValueError(f"NCSNv2 with model.scale_by_sigma estimates a VE score; training.sde={config.training.sde!r}")
    if config.data.image_size % 2**downsamplings:
      raise ValueError(f"data.image_size {config.data.image_size} is not divisible by 2^{downsamplings}")
    return NCSNv2(nf=m.nf, stages=stages, refine_mults=refine_mults, normalization=m.normalization,
                  nonlinearity=m.nonlinearity.lower(), scale_by_sigma=m.scale_by_sigma, centered=config.data.centered,
                  noise_labels=layers.noise_labels_from_config(config), dtype=layers.model_dtype(config))

  return build


register_model("ncsnv2_64")(_builder(STAGES_64, REFINE_64))
register_model("ncsnv2_128")(_builder(STAGES_128, REFINE_128))
register_model("ncsnv2_256")(_builder(STAGES_256, REFINE_256))
