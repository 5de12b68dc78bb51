"""NCSN++ / DDPM++ (Song et al. 2021, App. H): a configurable U-Net; DDPM's U-Net is one setting of it."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models import layers, normalization
from score_sde.models.registry import register_model

Array = jax.Array

RESBLOCKS = {"ddpm": layers.ResnetBlockDDPM, "biggan": layers.ResnetBlockBigGAN}
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDINGS = ("fourier", "positional")
# Heads of the self-attention blocks; "none" drops every attention block (attn_resolutions and the middle one).
ATTENTION_HEADS = {"ddpm": 1, "multihead": 4, "none": 0}


class NCSNpp(nn.Module):
  """x [B, H, W, C], noise labels [B] (and optional class labels y [B]) -> [B, H, W, C].

  Down path: `num_res_blocks` residual blocks per resolution (attention at `attn_resolutions` after
  each), then a downsampling block; middle: res-attn-res; up path: `num_res_blocks + 1` blocks on
  the concatenated skips, then one attention block per resolution (after every block with
  `attend_every_up_block`, as Ho et al.'s DDPM). `progressive_input` feeds a
  downsampled image pyramid into the down path, `progressive` builds the output through an
  upsampled pyramid. With `scale_by_sigma` the output is divided by the noise level sigma (a score
  whose norm grows like 1 / sigma).
  """

  nf: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: tuple[int, ...] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  fir: bool = False
  fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "none"
  progressive_combine: str = "sum"
  attention_type: str = "ddpm"
  embedding_type: str = "fourier"
  fourier_scale: float = 16.0
  init_scale: float = 0.0
  scale_by_sigma: bool = False
  normalization: str = "GroupNorm"
  nonlinearity: str = "swish"
  conv_size: int = 3
  num_classes: int = 0
  centered: bool = False
  noise_labels: layers.NoiseLabels = layers.NoiseLabels()
  attend_every_up_block: bool = False
  dtype: jnp.dtype = jnp.float32

  def _embed(self, noise_labels: Array, y: Array | None) -> Array | None:
    """Noise-level (and class) embedding [B, 4 nf], or None for a noise-unconditional network."""
    act = layers.get_act(self.nonlinearity)
    temb = None
    if self.conditional:
      if self.embedding_type == "fourier":
        temb = layers.GaussianFourierProjection(self.nf, self.fourier_scale)(
            jnp.log(self.noise_labels.sigma(noise_labels)))
      else:
        temb = layers.get_timestep_embedding(noise_labels, self.nf)
      temb = layers.dense(4 * self.nf, dtype=self.dtype)(temb.astype(self.dtype))
      temb = layers.dense(4 * self.nf, dtype=self.dtype)(act(temb))
    if self.num_classes > 0:
      # Index num_classes is the "no label" class (y=None), as used by classifier-free guidance.
      labels = jnp.full(noise_labels.shape, self.num_classes, jnp.int32) if y is None else y
      class_emb = nn.Embed(self.num_classes + 1, 4 * self.nf, dtype=self.dtype, param_dtype=jnp.float32)(labels)
      temb = class_emb if temb is None else temb + class_emb
    elif y is not None:
      raise ValueError("class labels y were given but model.num_classes is 0")
    return temb

  @nn.compact
  def __call__(self, x: Array, noise_labels: Array, train: bool = False, y: Array | None = None) -> Array:
    act = layers.get_act(self.nonlinearity)
    norm = normalization.get_normalization(self.normalization, self.dtype)
    channels = x.shape[-1]
    num_resolutions = len(self.ch_mult)
    num_heads = ATTENTION_HEADS[self.attention_type]
    resblock = functools.partial(
        RESBLOCKS[self.resblock_type], act=act, dropout=self.dropout, skip_rescale=self.skip_rescale,
        init_scale=self.init_scale, conv_size=self.conv_size, normalization=self.normalization, dtype=self.dtype)
    if self.resblock_type == "biggan":
      resblock = functools.partial(resblock, fir=self.fir, fir_kernel=self.fir_kernel)
    attention = functools.partial(layers.AttnBlock, num_heads=num_heads, normalization=self.normalization,
                                  skip_rescale=self.skip_rescale, init_scale=self.init_scale, dtype=self.dtype)
    resample = dict(fir=self.fir, fir_kernel=self.fir_kernel, conv_size=self.conv_size, dtype=self.dtype)
    conv = functools.partial(layers.conv, kernel_size=self.conv_size, dtype=self.dtype)

    def maybe_attend(h: Array) -> Array:
      return attention()(h) if num_heads and h.shape[1] in self.attn_resolutions else h

    temb = self._embed(noise_labels, y)
    x = (x if self.centered else 2 * x - 1.0).astype(self.dtype)

    # Down path.
    input_pyramid = x
    hs = [conv(self.nf)(x)]
    for i_level in range(num_resolutions):
      for _ in range(self.num_res_blocks):
        h = resblock(out_ch=self.nf * self.ch_mult[i_level])(hs[-1], temb, train)
        hs.append(maybe_attend(h))
      if i_level == num_resolutions - 1:
        continue
      if self.resblock_type == "ddpm":
        h = layers.Downsample(with_conv=self.resamp_with_conv, **resample)(hs[-1])
      else:
        h = resblock(down=True)(hs[-1], temb, train)
      if self.progressive_input == "input_skip":
        input_pyramid = layers.Downsample(with_conv=False, **resample)(input_pyramid)
        h = layers.Combine(self.progressive_combine, dtype=self.dtype)(input_pyramid, h)
      elif self.progressive_input == "residual":
        input_pyramid = layers.Downsample(out_ch=h.shape[-1], with_conv=True, **resample)(input_pyramid)
        h = input_pyramid = layers.rescale_skip(input_pyramid, h, self.skip_rescale)
      hs.append(h)

    # Middle.
    h = resblock()(hs[-1], temb, train)
    if num_heads:
      h = attention()(h)
    h = resblock()(h, temb, train)

    # Up path.
    pyramid = None
    for i_level in reversed(range(num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = resblock(out_ch=self.nf * self.ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
        if self.attend_every_up_block:
          h = maybe_attend(h)
      if not self.attend_every_up_block:
        h = maybe_attend(h)
      if self.progressive == "output_skip":
        if pyramid is not None:
          pyramid = layers.Upsample(with_conv=False, **resample)(pyramid)
        to_image = conv(channels, init_scale=self.init_scale)(act(norm()(h)))
        pyramid = to_image if pyramid is None else pyramid + to_image
      elif self.progressive == "residual":
        if pyramid is None:
          pyramid = conv(h.shape[-1])(act(norm()(h)))
        else:
          pyramid = layers.Upsample(out_ch=h.shape[-1], with_conv=True, **resample)(pyramid)
          h = pyramid = layers.rescale_skip(pyramid, h, self.skip_rescale)
      if i_level != 0:
        if self.resblock_type == "ddpm":
          h = layers.Upsample(with_conv=self.resamp_with_conv, **resample)(h)
        else:
          h = resblock(up=True)(h, temb, train)
    if hs:
      raise AssertionError(f"{len(hs)} skip connections left unused")

    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = conv(channels, init_scale=self.init_scale)(act(norm()(h)))
    h = h.astype(jnp.float32)
    if self.scale_by_sigma:
      h = h / self.noise_labels.sigma(noise_labels)[:, None, None, None]
    return h


def check_unet_config(config) -> None:
  """Validates the U-Net fields of config.model (and the image size) with errors naming the field."""
  m = config.model
  layers.check_choice("resblock_type", m.resblock_type, RESBLOCKS)
  layers.check_choice("progressive", m.progressive, PROGRESSIVE)
  layers.check_choice("progressive_input", m.progressive_input, PROGRESSIVE_INPUT)
  layers.check_choice("progressive_combine", m.progressive_combine, layers.COMBINE_METHODS)
  layers.check_choice("attention_type", m.attention_type, ATTENTION_HEADS)
  layers.check_choice("embedding_type", m.embedding_type, EMBEDDINGS)
  layers.check_choice("normalization", m.normalization, normalization.NORMALIZATIONS)
  layers.check_choice("nonlinearity", m.nonlinearity.lower(), layers.ACTIVATIONS)
  if m.conv_size < 1 or m.conv_size % 2 == 0:
    raise ValueError(f"model.conv_size must be a positive odd integer, got {m.conv_size}")
  if m.num_classes < 0:
    raise ValueError(f"model.num_classes must be >= 0, got {m.num_classes}")
  levels = len(m.ch_mult)
  if config.data.image_size % 2 ** (levels - 1):
    raise ValueError(f"data.image_size {config.data.image_size} is not divisible by 2^{levels - 1} "
                     f"(len(model.ch_mult) = {levels} resolutions)")
  if m.scale_by_sigma and config.training.sde != "vesde":
    raise ValueError(f"model.scale_by_sigma divides a VE score by sigma; training.sde={config.training.sde!r} "
                     "networks predict noise")


def unet_kwargs(config) -> dict:
  """NCSNpp constructor arguments read from config.model and config.data."""
  m = config.model
  return dict(
      nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
      dropout=m.dropout, resamp_with_conv=m.resamp_with_conv, conditional=m.conditional, fir=m.fir,
      fir_kernel=tuple(m.fir_kernel), skip_rescale=m.skip_rescale, resblock_type=m.resblock_type,
      progressive=m.progressive, progressive_input=m.progressive_input, progressive_combine=m.progressive_combine,
      attention_type=m.attention_type, embedding_type=m.embedding_type, fourier_scale=m.fourier_scale,
      init_scale=m.init_scale, scale_by_sigma=m.scale_by_sigma, normalization=m.normalization,
      nonlinearity=m.nonlinearity.lower(), conv_size=m.conv_size, num_classes=m.num_classes,
      centered=config.data.centered, noise_labels=layers.noise_labels_from_config(config),
      dtype=layers.model_dtype(config))


@register_model("ncsnpp")
def build_ncsnpp(config) -> NCSNpp:
  check_unet_config(config)
  return NCSNpp(**unet_kwargs(config))
