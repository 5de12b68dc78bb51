"""A time-dependent (noise-conditional) image classifier p_t(y | x_t) for classifier guidance (THEORY.md §6)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models import layers, normalization
from score_sde.models.registry import register_model

Array = jax.Array


class NoiseConditionalClassifier(nn.Module):
  """x_t [B, H, W, C], times t [B] in [0, T] -> class logits [B, num_classes].

  Unlike the score networks it is conditioned on the time t itself (embedded as 999 t), whatever
  the SDE, and returns logits rather than an array shaped like x. Residual blocks with the time
  embedding at each of len(ch_mult) resolutions, 2x2 average pooling between them, then global
  average pooling and a linear head.
  """

  num_classes: int
  nf: int = 32
  ch_mult: tuple[int, ...] = (1, 2)
  num_res_blocks: int = 1
  dropout: float = 0.0
  nonlinearity: str = "swish"
  normalization: str = "GroupNorm"
  conv_size: int = 3

  @nn.compact
  def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
    if x.ndim != 4:
      raise ValueError(f"NoiseConditionalClassifier takes images [B, H, W, C], got shape {x.shape}")
    act = layers.get_act(self.nonlinearity)
    temb = layers.get_timestep_embedding(999.0 * t, self.nf)
    temb = layers.dense(4 * self.nf)(act(layers.dense(4 * self.nf)(temb)))
    h = layers.conv(self.nf, self.conv_size)(x)
    for level, mult in enumerate(self.ch_mult):
      if level > 0:
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
      for _ in range(self.num_res_blocks):
        h = layers.ResnetBlockDDPM(act=act, out_ch=self.nf * mult, dropout=self.dropout, init_scale=1.0,
                                   conv_size=self.conv_size, normalization=self.normalization)(h, temb, train)
    h = act(normalization.get_normalization(self.normalization, jnp.float32)()(h))
    return layers.dense(self.num_classes)(jnp.mean(h, axis=(1, 2)))


@register_model("noise_classifier")
def build_noise_classifier(config) -> NoiseConditionalClassifier:
  """From config.model: num_classes (> 0), nf, ch_mult, num_res_blocks, dropout, nonlinearity, normalization."""
  m = config.model
  if m.num_classes < 1:
    raise ValueError(f"model.num_classes must be > 0 for noise_classifier, got {m.num_classes}")
  if config.data.image_size % 2 ** (len(m.ch_mult) - 1):
    raise ValueError(f"data.image_size {config.data.image_size} is not divisible by 2^{len(m.ch_mult) - 1}")
  layers.check_choice("normalization", m.normalization, normalization.NORMALIZATIONS)
  return NoiseConditionalClassifier(num_classes=m.num_classes, nf=m.nf, ch_mult=tuple(m.ch_mult),
                                    num_res_blocks=m.num_res_blocks, dropout=m.dropout,
                                    nonlinearity=m.nonlinearity.lower(), normalization=m.normalization,
                                    conv_size=m.conv_size)
