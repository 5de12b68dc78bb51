"""A small U-Net score network (DDPM-style): time embedding, residual blocks, self-attention.

Knobs read from `config.model`: nf, ch_mult, num_res_blocks, attn_resolutions, dropout,
embedding_type, fourier_scale, conditional, resamp_with_conv, skip_rescale, scale_by_sigma.
The NCSN++-only knobs (fir, progressive*, resblock_type, ...) belong to the `ncsnpp` model.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import dropout, layers, normalization
from score_sde.models.registry import register_model

Array = jax.Array


def _group_norm(channels: int) -> normalization.GroupNorm:
  """GroupNorm with up to 32 groups of at least 4 channels."""
  return normalization.GroupNorm(num_groups=normalization.group_count(channels))


class ResBlock(nn.Module):
  """h = conv(drop(act(GN(conv(act(GN(x))) + Dense(temb))))); out = skip(x) + h (/ sqrt 2)."""

  out_channels: int
  dropout: float
  skip_rescale: bool

  @nn.compact
  def __call__(self, x: Array, temb: Array | None, train: bool) -> Array:
    h = nn.Conv(self.out_channels, (3, 3))(nn.silu(_group_norm(x.shape[-1])(x)))
    if temb is not None:
      h = h + nn.Dense(self.out_channels)(nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(self.out_channels)(h))
    h = dropout.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
    skip = x if x.shape[-1] == self.out_channels else nn.Conv(self.out_channels, (1, 1))(x)
    return (skip + h) / np.sqrt(2.0) if self.skip_rescale else skip + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the H x W positions, added residually."""

  skip_rescale: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    batch, height, width, channels = x.shape
    h = _group_norm(channels)(x).reshape(batch, height * width, channels)
    q, k, v = (nn.Dense(channels)(h) for _ in range(3))
    weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / np.sqrt(channels), axis=-1)
    h = nn.Dense(channels, kernel_init=nn.initializers.zeros)(jnp.einsum("bij,bjc->bic", weights, v))
    out = x + h.reshape(x.shape)
    return out / np.sqrt(2.0) if self.skip_rescale else out


class Downsample(nn.Module):
  with_conv: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.with_conv:
      return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2))(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
  with_conv: bool

  @nn.compact
  def __call__(self, x: Array, shape: tuple[int, int]) -> Array:
    x = jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), "nearest")
    return nn.Conv(x.shape[-1], (3, 3))(x) if self.with_conv else x


class UNet(nn.Module):
  """x [B, H, W, C], noise labels [B] -> [B, H, W, C].

  Each level i has nf * ch_mult[i] channels and num_res_blocks residual blocks (plus attention at
  the resolutions in attn_resolutions); levels are joined by 2x down/upsampling (odd sizes round up
  on the way back), with skip connections from every down block to the up path.
  """

  nf: int = 32
  ch_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  embedding_type: str = "positional"
  fourier_scale: float = 16.0
  conditional: bool = True
  resamp_with_conv: bool = True
  skip_rescale: bool = False
  scale_by_sigma: bool = False

  def _time_embedding(self, noise_labels: Array) -> Array | None:
    if not self.conditional:
      return None
    temb = layers.noise_embedding(self.embedding_type, noise_labels, self.nf, self.fourier_scale)
    return nn.Dense(4 * self.nf)(nn.silu(nn.Dense(4 * self.nf)(temb)))

  @nn.compact
  def __call__(self, x: Array, noise_labels: Array, train: bool = False) -> Array:
    temb = self._time_embedding(noise_labels)
    block = lambda ch: ResBlock(ch, self.dropout, self.skip_rescale)  # noqa: E731
    h = nn.Conv(self.nf, (3, 3))(x)
    skips, sizes = [h], []
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = block(self.nf * mult)(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.skip_rescale)(h)
        skips.append(h)
      if level < len(self.ch_mult) - 1:
        sizes.append(h.shape[1:3])
        h = Downsample(self.resamp_with_conv)(h)
        skips.append(h)

    h = block(h.shape[-1])(h, temb, train)
    h = AttnBlock(self.skip_rescale)(h)
    h = block(h.shape[-1])(h, temb, train)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = block(self.nf * mult)(jnp.concatenate([h, skips.pop()], axis=-1), temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.skip_rescale)(h)
      if level > 0:
        h = Upsample(self.resamp_with_conv)(h, sizes.pop())

    h = nn.silu(_group_norm(h.shape[-1])(h))
    out = nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)
    if self.scale_by_sigma:
      out = out / noise_labels[:, None, None, None]
    return out


@register_model("unet")
def build_unet(config) -> UNet:
  m = config.model
  return UNet(nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, embedding_type=m.embedding_type,
              fourier_scale=m.fourier_scale, conditional=m.conditional, resamp_with_conv=m.resamp_with_conv,
              skip_rescale=m.skip_rescale, scale_by_sigma=m.scale_by_sigma)
