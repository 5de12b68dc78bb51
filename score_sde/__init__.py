"""score_sde: continuous-time score-based generative models in JAX/Flax (Song et al. 2021)."""

__version__ = "0.1.0"
