"""Score networks, their registry and the network -> score-function conversion."""
from score_sde.models import classifier  # noqa: F401  (registers "noise_classifier")
from score_sde.models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register "ddpm", "ncsnpp", "ncsnv2_*")
from score_sde.models import mlp  # noqa: F401  (registers "mlp")
from score_sde.models import unet  # noqa: F401  (registers "unet")
from score_sde.models.registry import available_models, get_model, register_model
from score_sde.models.utils import get_model_fn, get_score_fn, init_params, score_from_model_fn

__all__ = ["available_models", "get_model", "get_model_fn", "get_score_fn", "init_params", "register_model",
           "score_from_model_fn"]
