"""A residual MLP score network for low-dimensional (e.g. 2-D toy) data."""
from __future__ import annotations

import flax.linen as nn
import jax

from score_sde.models import layers
from score_sde.models.registry import register_model

Array = jax.Array


class MLP(nn.Module):
  """x [B, D], noise labels [B] -> [B, D]; noise embedding added to every residual block.

  `embedding_type="positional"` embeds the labels directly (VP: 999 t); `"fourier"` embeds
  log(labels) (VE: log sigma), as NCSN++ does. `scale_by_sigma` divides the output by the labels.
  """

  hidden: int = 128
  num_blocks: int = 3
  embedding_type: str = "positional"
  fourier_scale: float = 16.0
  scale_by_sigma: bool = False

  @nn.compact
  def __call__(self, x: Array, noise_labels: Array, train: bool = False) -> Array:
    temb = layers.noise_embedding(self.embedding_type, noise_labels, self.hidden, self.fourier_scale)
    temb = nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(temb)))
    h = nn.Dense(self.hidden)(x)
    for _ in range(self.num_blocks):
      residual = nn.Dense(self.hidden)(nn.silu(h + temb))
      h = h + nn.Dense(self.hidden)(nn.silu(residual))
    out = nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(nn.silu(h))
    if self.scale_by_sigma:
      out = out / noise_labels[:, None]
    return out


@register_model("mlp")
def build_mlp(config) -> MLP:
  m = config.model
  return MLP(hidden=m.nf, num_blocks=m.num_res_blocks, embedding_type=m.embedding_type,
             fourier_scale=m.fourier_scale, scale_by_sigma=m.scale_by_sigma)
