"""The DDPM U-Net (Ho et al. 2020, App. B): NCSN++ with DDPM residual blocks and no pyramids or FIR."""
from __future__ import annotations

from score_sde.models import ncsnpp
from score_sde.models.registry import register_model

# The settings that make NCSN++ the DDPM architecture; the remaining fields come from config.model.
DDPM_SETTINGS = dict(resblock_type="ddpm", skip_rescale=False, fir=False, progressive="none",
                     progressive_input="none", embedding_type="positional", init_scale=0.0,
                     attend_every_up_block=True)


@register_model("ddpm")
def build_ddpm(config) -> ncsnpp.NCSNpp:
  """DDPM U-Net: sinusoidal noise embedding, x + h residuals, stride-2 conv / nearest+conv resampling.

  As in Ho et al.'s code, the up path attends after every block at `attn_resolutions`: 35,746,307
  parameters on CIFAR-10, the published 35.7M. (score_sde's port attends once per up-path resolution,
  two attention blocks fewer: 35,218,947.)

  Width (nf, ch_mult, num_res_blocks, attn_resolutions), dropout, resamp_with_conv, conditional,
  normalization, nonlinearity, conv_size, attention_type, num_classes, dtype and scale_by_sigma
  are read from config.model; the fields in DDPM_SETTINGS are fixed.
  """
  ncsnpp.check_unet_config(config)
  return ncsnpp.NCSNpp(**{**ncsnpp.unet_kwargs(config), **DDPM_SETTINGS})


# score_sde's port of DDPM, the layout of its released DDPM checkpoints (vp/cifar10_ddpm,
# vp/cifar10_ddpm_continuous, subvp/cifar10_ddpm_continuous): one attention block per up-path
# resolution and GroupNorm with 32 groups everywhere.
SCORE_SDE_DDPM_SETTINGS = {**DDPM_SETTINGS, "attend_every_up_block": False, "normalization": "GroupNorm32"}


@register_model("ddpm_score_sde")
def build_ddpm_score_sde(config) -> ncsnpp.NCSNpp:
  """score_sde's DDPM (models/ddpm.py of score_sde / score_sde_pytorch): 35,218,947 parameters on CIFAR-10.

  Computes what the reference computes (tests/test_convert.py); convert a released DDPM checkpoint
  with `--config.model.name=ddpm_score_sde`. Its normalization is fixed (GroupNorm, 32 groups).
  """
  if config.model.normalization != "GroupNorm":
    raise ValueError(f"model.normalization={config.model.normalization!r}: score_sde's DDPM has GroupNorm "
                     "(32 groups) only")
  ncsnpp.check_unet_config(config)
  return ncsnpp.NCSNpp(**{**ncsnpp.unet_kwargs(config), **SCORE_SDE_DDPM_SETTINGS})
