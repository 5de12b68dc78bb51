"""score_sde: continuous-time score-based generative models (Song et al. 2021) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="score_sde",
    version="0.1.0",
    description="Score-based generative modeling through SDEs in JAX/Flax",
    packages=find_packages(include=["score_sde", "score_sde.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml_collections>=1.0,<2",
        "diffrax>=0.7,<0.8",
        "lineax>=0.0.8,<0.2",
        "numpy>=1.26,<3",
        "pillow>=10,<14",
        "tqdm>=4.60,<5",
        "absl-py>=2.0,<3",
        "scikit-learn>=1.3,<2",
        "tensorboardX>=2.6,<3",
    ],
    entry_points={
        "console_scripts": [
            "score-sde-evaluate=score_sde.cli.evaluate:run",
            "score-sde-fid-stats=score_sde.cli.fid_stats:run",
            "score-sde-train-fd-classifier=score_sde.cli.train_fd_classifier:run",
        ],
    },
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"],
        "tfds": ["tensorflow-datasets>=4.9,<5", "importlib_resources>=6", "grain>=0.2,<0.3"],
    },
)
