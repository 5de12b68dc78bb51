"""The DDPM U-Net (Ho et al. 2020, App. B) as score_sde builds it: NCSN++ with DDPM residual blocks."""
from __future__ import annotations

from score_sde.models import ncsnpp
from score_sde.models.registry import register_model

# The settings that make NCSN++ the DDPM architecture; the remaining fields come from config.model.
DDPM_SETTINGS = dict(resblock_type="ddpm", skip_rescale=False, fir=False, progressive="none",
                     progressive_input="none", embedding_type="positional", init_scale=0.0)


@register_model("ddpm")
def build_ddpm(config) -> ncsnpp.NCSNpp:
  """DDPM U-Net: sinusoidal noise embedding, x + h residuals, stride-2 conv / nearest+conv resampling.

  As in score_sde (JAX and PyTorch), the up path attends once per resolution in `attn_resolutions`,
  not after every block as Ho et al.'s TF code: 35,218,947 parameters on CIFAR-10, not 35.7M.

  Width (nf, ch_mult, num_res_blocks, attn_resolutions), dropout, resamp_with_conv, conditional,
  normalization, nonlinearity, conv_size, attention_type, num_classes, dtype and scale_by_sigma
  are read from config.model; the fields in DDPM_SETTINGS are fixed.
  """
  ncsnpp.check_unet_config(config)
  return ncsnpp.NCSNpp(**{**ncsnpp.unet_kwargs(config), **DDPM_SETTINGS})
