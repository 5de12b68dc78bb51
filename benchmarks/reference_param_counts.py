"""Parameter counts of our CIFAR-10 networks next to those of the reference implementation.

Builds the networks of the paper configs twice, here and from a checkout of yang-song/score_sde
(JAX/Flax), counts parameters with `jax.eval_shape` of `init` (nothing is allocated) and prints
a markdown table: config, ours, reference, equal?, and whether the multisets of per-tensor sizes
agree (a stricter check than the totals).

  git clone https://github.com/yang-song/score_sde /tmp/score_sde
  python benchmarks/reference_param_counts.py --reference_dir /tmp/score_sde

The reference's `models/utils.py` imports its training stack (tensorflow, `flax.optim`, gone from
current flax); the networks need only its `register_model` and `get_sigmas`, so a stand-in
`models.utils` with those two is installed before the network modules are imported. Its NCSN
convolutions pass `bias_init(key, shape)` functions, which current flax calls with a dtype too;
`models.layers` sees a flax namespace whose `Conv` accepts those. Nothing else is changed.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import pathlib
import sys
import types
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# (our config under configs/, the reference config under the checkout's configs/)
PAPER_CONFIGS = (
    ("cifar10/ve_ncsnpp_continuous.py", "ve/cifar10_ncsnpp_continuous.py"),
    ("cifar10/ve_ncsnpp_deep_continuous.py", "ve/cifar10_ncsnpp_deep_continuous.py"),
    ("cifar10/vp_ddpmpp_continuous.py", "vp/cifar10_ddpmpp_continuous.py"),
    ("cifar10/vp_ddpmpp_deep_continuous.py", "vp/cifar10_ddpmpp_deep_continuous.py"),
    ("cifar10/vp_ddpm_continuous.py", "vp/ddpm/cifar10_continuous.py"),
    ("cifar10/ve_ncsnv2.py", "ve/ncsnv2/cifar10.py"),
)
# Differences kept on purpose: config -> why.
BY_DESIGN = {
    "cifar10/vp_ddpm_continuous.py": "ours is Ho et al.'s DDPM (published 35.7M): attention after every up-path "
                                     "block; the reference attends once per resolution, 2 x 263,680 fewer",
}
IMAGES = jnp.zeros((1, 32, 32, 3))
LABELS = jnp.ones((1,), jnp.int32)


def leaf_sizes(init: Callable[[], dict]) -> list[int]:
  """Sorted element counts of the parameter tensors `init()` creates, found by abstract evaluation."""
  params = jax.eval_shape(init)["params"]
  return sorted(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def ours(config_path: str) -> list[int]:
  from score_sde import configs_util  # pylint: disable=import-outside-toplevel
  from score_sde.models import get_model  # pylint: disable=import-outside-toplevel
  model = get_model(configs_util.load_config(REPO_ROOT / "configs" / config_path))
  return leaf_sizes(lambda: model.init({"params": jax.random.PRNGKey(0)}, IMAGES, LABELS))


def _forget(package: str) -> None:
  """Drops `package` and its submodules from the import cache (both repositories have `configs`)."""
  for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
    del sys.modules[name]


def _stand_in_utils() -> types.ModuleType:
  """`models.utils` reduced to what the networks use: the model registry and the SMLD sigmas."""
  utils = types.ModuleType("models.utils")
  utils.registry = {}

  def register_model(cls: type | None = None, *, name: str | None = None):
    def add(cls: type) -> type:
      utils.registry[name or cls.__name__] = cls
      return cls
    return add if cls is None else add(cls)

  def get_sigmas(config) -> jax.Array:
    m = config.model
    return jnp.geomspace(m.sigma_max, m.sigma_min, m.num_scales)

  utils.register_model, utils.get_sigmas = register_model, get_sigmas
  return utils


def _flax_accepting_legacy_inits() -> types.ModuleType:
  """flax.linen whose Conv also takes the two-argument `init(key, shape)` of flax < 0.4."""
  namespace = types.ModuleType("flax.linen")
  namespace.__dict__.update(vars(nn))

  def conv(*args, bias_init=nn.initializers.zeros, **kwargs) -> nn.Conv:
    return nn.Conv(*args, bias_init=lambda key, shape, dtype=None: bias_init(key, shape), **kwargs)

  namespace.Conv = conv
  return namespace


def import_reference(reference_dir: pathlib.Path) -> dict:
  """Imports the reference networks from `reference_dir`; returns its name -> module class registry."""
  _forget("configs")
  _forget("models")
  sys.path[:] = [str(reference_dir)] + [p for p in sys.path if pathlib.Path(p or ".").resolve() != REPO_ROOT]
  utils = sys.modules["models.utils"] = _stand_in_utils()  # in place before models/__init__.py runs
  importlib.import_module("models").utils = utils
  layers = importlib.import_module("models.layers")
  layers.nn = _flax_accepting_legacy_inits()
  for network in ("ncsnpp", "ncsnv2", "ddpm"):
    importlib.import_module(f"models.{network}")
  return utils.registry


def reference(registry: dict, reference_dir: pathlib.Path, config_path: str) -> list[int]:
  spec = importlib.util.spec_from_file_location("reference_config", reference_dir / "configs" / config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  model = registry[config.model.name](config=config)
  keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  return leaf_sizes(lambda: model.init(keys, IMAGES, LABELS, train=False))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference_dir", type=pathlib.Path, required=True,
                      help="checkout of github.com/yang-song/score_sde (the directory holding models/ and configs/)")
  args = parser.parse_args()
  reference_dir = args.reference_dir.resolve()
  sys.path.insert(0, str(REPO_ROOT))
  our_sizes = {path: ours(path) for path, _ in PAPER_CONFIGS}
  registry = import_reference(reference_dir)
  print("| config | ours | reference | equal | same tensor sizes |")
  print("|---|---:|---:|:---:|:---:|")
  for path, reference_path in PAPER_CONFIGS:
    mine, theirs = our_sizes[path], reference(registry, reference_dir, reference_path)
    equal = "yes" if sum(mine) == sum(theirs) else ("no, by design" if path in BY_DESIGN else "NO")
    print(f"| `{path}` | {sum(mine):,} | {sum(theirs):,} | {equal} | {'yes' if mine == theirs else 'no'} |")
  for path, why in BY_DESIGN.items():
    print(f"\n`{path}`: {why}.")


if __name__ == "__main__":
  main()
