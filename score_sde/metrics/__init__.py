"""Sample-quality metrics: FID / IS / KID statistics (`stats`), the FID Inception-v3 network (`inception`)."""
from score_sde.metrics.stats import (ClassifierScoreStats, FeatureBank, FeatureStats, frechet_distance,
                                     frechet_distance_of, inception_score, kernel_distance)

__all__ = ["ClassifierScoreStats", "FeatureBank", "FeatureStats", "frechet_distance", "frechet_distance_of",
           "inception_score", "kernel_distance"]
