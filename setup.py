"""score_sde: continuous-time score-based generative models (Song et al. 2021) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="score_sde",
    version="0.1.0",
    description="Score-based generative modeling through SDEs in JAX/Flax",
    # configs/ ships too: leaf configs import `configs.default_*`, and `--config configs/toy/vp_mlp.py`
    # resolves against the installed package when the path does not exist where the command runs.
    packages=find_packages(include=["score_sde", "score_sde.*", "configs"]),
    package_data={"configs": ["*/*.py"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.8,<0.11",  # 0.8: XLA:CPU's YNNPACK fusion options (train.CPU_COMPILER_OPTIONS)
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml_collections>=1.0,<2",
        "diffrax>=0.7,<0.8",
        "lineax>=0.0.8,<0.2",
        "optimistix>=0.0.10,<0.2",
        "numpy>=1.26,<3",
        "pillow>=10,<14",
        "tqdm>=4.60,<5",
        "absl-py>=2.0,<3",
        "scikit-learn>=1.3,<2",
        "tensorboardX>=2.6,<3",
        "ml_dtypes>=0.4,<1",
    ],
    entry_points={"console_scripts": [
        f"score-sde-{name.replace('_', '-')}=score_sde.cli.{name}:run"
        for name in ("train", "sample", "likelihood", "sweep", "train_classifier", "demo",
                     "convert_checkpoint", "evaluate", "fid_stats", "train_fd_classifier")]},
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"],
        "tfds": ["tensorflow-datasets>=4.9,<5", "importlib_resources>=6", "grain>=0.2,<0.3"],
    },
)
