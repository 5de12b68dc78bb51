"""Sample-quality metrics: FID / IS / KID statistics (`stats`, `quality`), the FID Inception-v3
(`inception`), the FD-MNIST classifier (`mnist`) and feature networks by name (`features`)."""
from score_sde.metrics.stats import (ClassifierScoreStats, FeatureBank, FeatureStats, frechet_distance,
                                     frechet_distance_of, inception_score, kernel_distance)

__all__ = ["ClassifierScoreStats", "FeatureBank", "FeatureStats", "frechet_distance", "frechet_distance_of",
           "inception_score", "kernel_distance"]
