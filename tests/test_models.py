"""Model zoo: FIR resampling against a direct numpy upfirdn2d, parameter counts of the paper configs,
forward passes of every family at tiny width, and every NCSN++ knob acting.

Parameters of the tiny networks are drawn with numpy from the `jax.eval_shape` of `init` (no
per-shape PRNG compilation), so each forward test costs one op-by-op pass.
"""
from __future__ import annotations

import pathlib

import numpy as np
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import base
from score_sde import configs_util
from score_sde import sde as sde_lib
from score_sde.models import dropout, get_model, get_score_fn, layers, normalization, up_or_down_sampling
from score_sde.models import utils as models_utils


# ----------------------------------------------------------------------------- FIR resampling

def upfirdn2d_numpy(x: np.ndarray, kernel: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
  """Direct definition: zero-insert, pad (negative crops), true 2-D convolution, keep every down-th."""
  b, h, w, c = x.shape
  upsampled = np.zeros((b, h * up, w * up, c), np.float64)
  upsampled[:, ::up, ::up] = x
  p0, p1 = pad
  padded = np.pad(upsampled, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
  padded = padded[:, max(-p0, 0):padded.shape[1] - max(-p1, 0), max(-p0, 0):padded.shape[2] - max(-p1, 0)]
  kh, kw = kernel.shape
  out = np.zeros((b, padded.shape[1] - kh + 1, padded.shape[2] - kw + 1, c))
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      window = padded[:, i:i + kh, j:j + kw, :]
      out[:, i, j, :] = np.einsum("bhwc,hw->bc", window, kernel[::-1, ::-1])
  return out[:, ::down, ::down]


@pytest.mark.parametrize("up,down,pad,ksize", [(1, 1, (1, 2), 3), (2, 1, (2, 1), 4), (1, 2, (1, 1), 4),
                                               (2, 2, (-1, 2), 3), (3, 1, (0, 0), 2)])
def test_upfirdn2d_matches_numpy(up, down, pad, ksize):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  kernel = rng.normal(size=(ksize, ksize)).astype(np.float32)  # asymmetric: catches a missing flip
  got = up_or_down_sampling.upfirdn2d(jnp.asarray(x), kernel, up=up, down=down, pad=pad)
  np.testing.assert_allclose(np.asarray(got), upfirdn2d_numpy(x, kernel, up, down, pad), atol=1e-5)


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (-1, 2))])
def test_separable_upfirdn2d_matches_numpy(up, down, pad):
  """A rank-one asymmetric kernel a b^T takes the two-pass path: rows along H, columns along W."""
  x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
  kernel = np.outer([1.0, 2.0, -1.0, 0.5], [3.0, 1.0, 0.0, 2.0]).astype(np.float32)
  assert up_or_down_sampling._rank_one_factors(kernel) is not None  # pylint: disable=protected-access
  got = up_or_down_sampling.upfirdn2d(jnp.asarray(x), kernel, up=up, down=down, pad=pad)
  np.testing.assert_allclose(np.asarray(got), upfirdn2d_numpy(x, kernel, up, down, pad), atol=1e-4)


@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 2, 1), (1, 1)])
def test_fir_resampling_matches_numpy(kernel):
  """upsample_2d / downsample_2d = upfirdn2d with StyleGAN2's gains and pads (numpy reference)."""
  x = np.random.default_rng(1).normal(size=(1, 8, 8, 2)).astype(np.float32)
  k = up_or_down_sampling.setup_kernel(kernel)
  p = k.shape[0] - 2
  up = upfirdn2d_numpy(x, 4 * k, 2, 1, ((p + 1) // 2 + 1, p // 2))
  down = upfirdn2d_numpy(x, k, 1, 2, ((p + 1) // 2, p // 2))
  np.testing.assert_allclose(np.asarray(up_or_down_sampling.upsample_2d(jnp.asarray(x), kernel)), up, atol=1e-5)
  np.testing.assert_allclose(np.asarray(up_or_down_sampling.downsample_2d(jnp.asarray(x), kernel)), down, atol=1e-5)
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)


def test_box_kernel_is_nearest_and_mean_pooling():
  """Closed forms: k = [1, 1] upsampling is nearest neighbour, downsampling is the 2x2 mean."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 6, 3)), jnp.float32)
  np.testing.assert_allclose(up_or_down_sampling.upsample_2d(x, (1, 1)),
                             up_or_down_sampling.naive_upsample_2d(x), atol=1e-6)
  np.testing.assert_allclose(up_or_down_sampling.downsample_2d(x, (1, 1)),
                             up_or_down_sampling.naive_downsample_2d(x), atol=1e-6)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
def test_nearest_upsample_conv_is_the_conv_of_the_upsampled_input(kernel_size):
  """The phase-by-phase form at the input resolution = SAME conv of the 2x nearest upsampling, values and
  gradients (the taps it sums change only the rounding)."""
  rng = np.random.default_rng(kernel_size)
  x = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 3, 4)), jnp.float32)
  direct = lambda x, kernel: jax.lax.conv_general_dilated(
      up_or_down_sampling.naive_upsample_2d(x), kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  probe = jnp.asarray(rng.normal(size=(2, 10, 12, 4)), jnp.float32)
  np.testing.assert_allclose(up_or_down_sampling.nearest_upsample_conv_2d(x, kernel), direct(x, kernel),
                             rtol=1e-5, atol=1e-5)
  loss = lambda conv_fn: lambda x, kernel: jnp.sum(conv_fn(x, kernel) * probe)
  ours = jax.grad(loss(up_or_down_sampling.nearest_upsample_conv_2d), argnums=(0, 1))(x, kernel)
  for got, want in zip(ours, jax.grad(loss(direct), argnums=(0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_nearest_upsampling_blocks_match_resample_then_conv():
  """Upsample(with_conv) and the BigGAN up block (no FIR) compute their convs at the low resolution:
  the same function as upsampling first, with the same parameters."""
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 4, 8)), jnp.float32)
  up = layers.Upsample(out_ch=6, with_conv=True)
  params = jax.tree.map(lambda leaf: leaf + 0.1, up.init(jax.random.key(0), x)["params"])
  direct = jax.lax.conv_general_dilated(up_or_down_sampling.naive_upsample_2d(x), params["Conv_0"]["kernel"],
                                        (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(up.apply({"params": params}, x), direct + params["Conv_0"]["bias"], atol=1e-5)

  block = layers.ResnetBlockBigGAN(act=jax.nn.swish, out_ch=6, up=True, normalization="GroupNorm")
  params = jax.tree.map(lambda leaf: leaf + 0.1, block.init(jax.random.key(1), x)["params"])
  conv = lambda h, p: jax.lax.conv_general_dilated(h, p["kernel"], (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
  norm = lambda h, p: normalization.get_normalization("GroupNorm")().apply({"params": p}, h)
  h = conv(up_or_down_sampling.naive_upsample_2d(jax.nn.swish(norm(x, params["Normalization_0"]))), params["Conv_0"])
  h = conv(jax.nn.swish(norm(h, params["Normalization_1"])), params["Conv_1"])
  skip = conv(up_or_down_sampling.naive_upsample_2d(x), params["Conv_2"])
  np.testing.assert_allclose(block.apply({"params": params}, x), (skip + h) / np.sqrt(2.0), atol=1e-4)


def test_fir_preserves_constants_away_from_borders():
  x = jnp.full((1, 8, 8, 1), 3.0)
  np.testing.assert_allclose(up_or_down_sampling.upsample_2d(x, (1, 3, 3, 1))[0, 2:-2, 2:-2], 3.0, rtol=1e-6)
  np.testing.assert_allclose(up_or_down_sampling.downsample_2d(x, (1, 3, 3, 1))[0, 1:-1, 1:-1], 3.0, rtol=1e-6)


@pytest.mark.parametrize("sampler,fir_op", [(layers.Upsample, up_or_down_sampling.upsample_2d),
                                            (layers.Downsample, up_or_down_sampling.downsample_2d)])
def test_fused_fir_conv_with_a_1x1_kernel_is_fir_then_conv(sampler, fir_op):
  """For conv_size 1 the fused (transposed / strided) conv + FIR equals the FIR resampling, then the 1x1 conv."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 6, 3)), jnp.float32)
  module = sampler(out_ch=4, with_conv=True, fir=True, fir_kernel=(1, 3, 3, 1), conv_size=1)
  params = numpy_params(jax.eval_shape(module.init, jax.random.key(0), x)["params"])
  bias = jnp.arange(4.0)
  params = jax.tree_util.tree_map_with_path(lambda path, leaf: bias if path[-1].key == "bias" else leaf, params)
  expected = fir_op(x, (1, 3, 3, 1)) @ params["Conv_0"]["kernel"][0, 0] + bias
  np.testing.assert_allclose(module.apply({"params": params}, x), expected, atol=1e-5)
  wide = sampler(out_ch=4, with_conv=True, fir=True, conv_size=3)
  assert jax.eval_shape(wide.init, jax.random.key(0), x)["params"]["Conv_0"]["kernel"].shape == (3, 3, 3, 4)


# ----------------------------------------------------------------------------- parameter counts

# Counted with jax.eval_shape of init; equal to the reference score_sde networks for the same configs
# (benchmarks/reference_param_counts.py), except DDPM: ours has Ho et al.'s published 35.7M, attending
# after every up-path block, where score_sde's port attends once per resolution (35,218,947).
CIFAR10_PARAMS = {
    "cifar10/vp_ddpm_continuous.py": 35_746_307,
    "cifar10/ve_ncsnpp_continuous.py": 62_758_915,
    "cifar10/ve_ncsnpp_deep_continuous.py": 107_587_075,
    "cifar10/vp_ddpmpp_continuous.py": 61_804_419,
    "cifar10/vp_ddpmpp_deep_continuous.py": 106_632_579,
    "cifar10/ve_ncsnv2.py": 33_970_563,
}
# Configs that differ from one above only outside the network (SDE, discrete training).
SAME_NETWORK = {"cifar10/vp_ddpm.py": "cifar10/vp_ddpm_continuous.py",
                "cifar10/subvp_ddpmpp_continuous.py": "cifar10/vp_ddpmpp_continuous.py",
                "cifar10/subvp_ddpmpp_deep_continuous.py": "cifar10/vp_ddpmpp_deep_continuous.py"}


def param_shapes(model, x, labels, **kwargs):
  return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, labels, **kwargs))["params"]


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("path,expected", sorted(CIFAR10_PARAMS.items()))
def test_cifar10_parameter_counts(path, expected):
  config = configs_util.load_config(f"configs/{path}")
  shapes = param_shapes(get_model(config), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,)))
  assert count(shapes) == expected
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize("path,same_as", sorted(SAME_NETWORK.items()))
def test_configs_sharing_a_network_build_equal_modules(path, same_as):
  model = get_model(configs_util.load_config(f"configs/{path}"))
  assert model == get_model(configs_util.load_config(f"configs/{same_as}"))


# ----------------------------------------------------------------------------- tiny forward passes

def tiny(name: str = "ncsnpp", sde: str = "vesde", **model_fields):
  """A few-thousand-parameter network on 8x8x3 images (16x16 for the deeper NCSNv2s)."""
  config = base.get_base_config()
  config.training.sde = sde
  config.model.name = name
  config.model.nf = 8
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.init_scale = 1.0
  config.model.scale_by_sigma = sde == "vesde"
  config.data.image_size = 16 if name in ("ncsnv2_128", "ncsnv2_256") else 8
  for field, value in model_fields.items():
    setattr(config.model, field, value)
  return config


def numpy_params(shapes, seed: int = 0):
  """Deterministic parameters: kernels ~ N(0, 1/fan_in), norms' scales 1, biases 0, the rest N(0, 1)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(path[-1].key)
    if name in ("scale", "gamma", "alpha"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "beta"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else 1
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def images(config, batch: int = 2, seed: int = 1):
  size, channels = config.data.image_size, config.data.num_channels
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, size, size, channels)), jnp.float32)


def labels_for(config):
  return jnp.array([0.7, 20.0]) if config.training.sde == "vesde" else jnp.array([100.0, 900.0])


def forward(config, params=None, labels=None, x=None, **kwargs):
  model = get_model(config)
  x = images(config) if x is None else x
  labels = labels_for(config) if labels is None else labels
  if params is None:
    params = numpy_params(param_shapes(model, x, labels, y=kwargs.get("y")))
  return model.apply({"params": params}, x, labels, **kwargs), params


NCSNV2 = {"normalization": "InstanceNorm++", "nonlinearity": "elu"}
FAMILIES = [("ncsnpp", "vesde", {"fir": True, "progressive_input": "residual"}),
            ("ncsnpp", "vpsde", {"embedding_type": "positional"}),
            ("ncsnpp", "subvpsde", {"embedding_type": "positional", "resblock_type": "ddpm"}),
            ("ddpm", "vpsde", {}),
            ("ncsnv2_64", "vesde", NCSNV2),
            pytest.param("ncsnv2_128", "vesde", NCSNV2, marks=pytest.mark.slow),
            pytest.param("ncsnv2_256", "vesde", NCSNV2, marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,sde,fields", FAMILIES, ids=["ncsnpp-vesde", "ncsnpp-vpsde", "ncsnpp-subvpsde", "ddpm-vpsde",
                                                          "ncsnv2_64", "ncsnv2_128", "ncsnv2_256"])
def test_forward_shape_finite_and_noise_dependent(name, sde, fields):
  config = tiny(name, sde, **fields)
  out, params = forward(config)
  x = images(config)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  other, _ = forward(config, params, labels=labels_for(config)[::-1])
  # Swapping the two examples' noise labels changes each example's output.
  assert float(jnp.min(jnp.abs(out - other).reshape(2, -1).max(axis=1))) > 1e-4


@pytest.mark.parametrize("name,downsamplings", [("ncsnv2_128", 3), ("ncsnv2_256", 4)])
def test_deeper_ncsnv2_shapes(name, downsamplings):
  """Abstract evaluation (no compute): output shape, and the deepest RefineNet input resolution."""
  config = tiny(name, **NCSNV2)
  model, x = get_model(config), images(config)
  shapes = param_shapes(model, x, labels_for(config))
  out = jax.eval_shape(lambda: model.apply({"params": numpy_params(shapes)}, x, labels_for(config)))
  assert out.shape == x.shape
  with pytest.raises(ValueError, match="image_size"):
    config.data.image_size = 2 ** downsamplings + 2
    get_model(config)


@pytest.mark.parametrize("name", ["ncsnpp", "ncsnv2_64"])
def test_scale_by_sigma_divides_by_sigma(name):
  """s(x, sigma) with scale_by_sigma = (network output) / sigma, for continuous (sigma) labels."""
  scaled, params = forward(tiny(name, scale_by_sigma=True))
  raw, _ = forward(tiny(name, scale_by_sigma=False), params)
  sigma = labels_for(tiny(name))[:, None, None, None]
  np.testing.assert_allclose(scaled, raw / sigma, rtol=1e-5, atol=1e-7)


def test_discrete_ve_labels_index_descending_sigmas():
  """Discrete VE labels are NCSN indices: label i stands for the (N - 1 - i)-th ascending VESDE sigma."""
  config = tiny(num_scales=10)
  config.training.continuous = False
  noise = layers.noise_labels_from_config(config)
  sde = sde_lib.VESDE(config.model.sigma_min, config.model.sigma_max, N=10)
  np.testing.assert_allclose(noise.sigma(jnp.arange(10.0)), sde.discrete_sigmas[::-1], rtol=1e-5)
  scaled, params = forward(config, labels=jnp.array([0.0, 9.0]))
  config.model.scale_by_sigma = False
  raw, _ = forward(config, params, labels=jnp.array([0.0, 9.0]))
  np.testing.assert_allclose(scaled, raw / jnp.array([50.0, 0.01])[:, None, None, None], rtol=1e-5)


def test_score_fn_of_a_network_runs_for_every_sde():
  for sde, name in ((sde_lib.VESDE(), "vesde"), (sde_lib.VPSDE(), "vpsde"), (sde_lib.subVPSDE(), "subvpsde")):
    config = tiny("ncsnpp", name, embedding_type="fourier" if name == "vesde" else "positional")
    model = get_model(config)
    x = images(config)
    params = numpy_params(param_shapes(model, x, jnp.ones((2,))))
    score = get_score_fn(sde, model, params)(x, jnp.array([0.1, 0.9]))
    assert score.shape == x.shape and bool(jnp.all(jnp.isfinite(score)))


# ----------------------------------------------------------------------------- class conditioning

def test_class_labels_change_the_output():
  config = tiny(num_classes=3)
  without, params = forward(config, y=jnp.array([0, 1]))
  other, _ = forward(config, params, y=jnp.array([2, 2]))
  unconditional, _ = forward(config, params)  # y=None: the extra "no label" class
  assert float(jnp.abs(without - other).max()) > 1e-4
  assert float(jnp.abs(without - unconditional).max()) > 1e-4
  assert count(params["Embed_0"]) == 4 * 8 * (3 + 1)


def test_class_labels_rejected_without_classes():
  with pytest.raises(ValueError, match="num_classes"):
    forward(tiny(), y=jnp.array([0, 1]))
  with pytest.raises(ValueError, match="num_classes"):
    get_model(tiny("ncsnv2_64", num_classes=10))


# ----------------------------------------------------------------------------- every knob acts

BASE_KNOBS = dict(fir=True, progressive_input="residual")  # the NCSN++ setting the variants start from
SHAPE_KNOBS = [("nf", 16, {}), ("ch_mult", (1, 1), {}), ("num_res_blocks", 2, {}), ("attn_resolutions", (8,), {}),
               ("resamp_with_conv", False, {"resblock_type": "ddpm"}), ("conditional", False, {}),
               ("resblock_type", "ddpm", {}), ("progressive", "output_skip", {}), ("progressive", "residual", {}),
               ("progressive_input", "input_skip", {}), ("progressive_input", "none", {}),
               ("progressive_combine", "cat", {"progressive_input": "input_skip"}), ("attention_type", "none", {}),
               ("embedding_type", "positional", {}), ("normalization", "InstanceNorm++", {}), ("conv_size", 5, {}),
               ("num_classes", 4, {})]
OUTPUT_KNOBS = [("fir", False, {}), ("fir_kernel", (1, 2, 1), {}), ("skip_rescale", False, {}),
                ("attention_type", "multihead", {}), ("scale_by_sigma", False, {}),
                ("normalization", "InstanceNorm", {}), ("nonlinearity", "elu", {})]


def shapes_of(config):
  model = get_model(config)
  return jax.tree.map(lambda leaf: leaf.shape, param_shapes(model, images(config), labels_for(config)))


@pytest.mark.parametrize("field,value,context", SHAPE_KNOBS, ids=[f"{f}={v}" for f, v, _ in SHAPE_KNOBS])
def test_knob_changes_parameter_shapes(field, value, context):
  reference = shapes_of(tiny(**{**BASE_KNOBS, **context}))
  assert shapes_of(tiny(**{**BASE_KNOBS, **context, field: value})) != reference


@pytest.mark.parametrize("field,value,context", OUTPUT_KNOBS, ids=[f"{f}={v}" for f, v, _ in OUTPUT_KNOBS])
def test_knob_changes_output_with_the_same_parameters(field, value, context):
  config = tiny(**{**BASE_KNOBS, **context})
  varied = tiny(**{**BASE_KNOBS, **context, field: value})
  assert shapes_of(varied) == shapes_of(config)
  out, params = forward(config)
  out_varied, _ = forward(varied, params)
  assert bool(jnp.all(jnp.isfinite(out_varied)))
  assert float(jnp.abs(out - out_varied).max()) > 1e-3 * float(jnp.abs(out).max())


def test_dropout_acts_only_in_training():
  config = tiny(dropout=0.5)
  rng = {"dropout": jax.random.key(0, impl="rbg")}  # rbg: far less compilation than threefry on CPU
  evaluated, params = forward(config)
  trained, _ = forward(config, params, train=True, rngs=rng)
  no_dropout, _ = forward(tiny(dropout=0.0), params, train=True, rngs=rng)
  np.testing.assert_allclose(no_dropout, evaluated, rtol=1e-6)
  assert float(jnp.abs(trained - evaluated).max()) > 1e-4


def test_init_knobs_scale_their_initializers():
  """fourier_scale: W ~ N(0, scale^2); init_scale: output-layer variance x init_scale (0 -> 1e-10).

  With one key, W is proportional to fourier_scale and the last conv kernel to sqrt(init_scale).
  """
  x, labels = jnp.zeros((1, 8, 8, 3)), jnp.ones((1,))
  key = {"params": jax.random.key(3, impl="rbg")}
  params = []
  for fourier_scale, init_scale in ((1.0, 1.0), (16.0, 0.0)):
    config = tiny(fourier_scale=fourier_scale, init_scale=init_scale, nf=4, ch_mult=(1,), num_res_blocks=0,
                  attention_type="none", fir=False)
    params.append(get_model(config).init(key, x, labels)["params"])
  np.testing.assert_allclose(params[1]["GaussianFourierProjection_0"]["W"],
                             16.0 * params[0]["GaussianFourierProjection_0"]["W"], rtol=1e-5)
  last_conv = max((name for name in params[0] if name.startswith("Conv_")), key=lambda n: int(n.split("_")[1]))
  np.testing.assert_allclose(params[1][last_conv]["kernel"], 1e-5 * params[0][last_conv]["kernel"], rtol=1e-4)


def test_bfloat16_activations_keep_float32_parameters():
  """Abstract evaluation: float32 parameters, bfloat16 activations inside, a float32 output."""
  config = tiny(dtype="bfloat16")
  model, x, labels = get_model(config), images(config), labels_for(config)
  shapes = param_shapes(model, x, labels)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, x, labels))(numpy_params(shapes))
  assert jaxpr.out_avals[0].dtype == jnp.float32
  assert any(var.aval.dtype == jnp.bfloat16 for eqn in jaxpr.eqns if eqn.primitive.name == "conv_general_dilated"
             for var in eqn.outvars)


@pytest.mark.slow
def test_bfloat16_output_close_to_float32():
  low, params = forward(tiny(dtype="bfloat16"))
  full, _ = forward(tiny(), params)
  relative_error = float(jnp.linalg.norm(low - full) / jnp.linalg.norm(full))
  assert 0.0 < relative_error < 0.05


@pytest.mark.parametrize("field,value", [("resblock_type", "resnet"), ("progressive", "input_skip"),
                                         ("progressive_input", "output_skip"), ("progressive_combine", "mean"),
                                         ("attention_type", "linear"), ("embedding_type", "learned"),
                                         ("normalization", "BatchNorm"), ("nonlinearity", "tanh"),
                                         ("conv_size", 4), ("dtype", "float64")])
def test_unknown_values_are_rejected_naming_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    get_model(tiny(**{field: value}))


def test_scale_by_sigma_rejected_for_noise_prediction_networks():
  with pytest.raises(ValueError, match="scale_by_sigma"):
    get_model(tiny(sde="vpsde", scale_by_sigma=True))


# ----------------------------------------------------------------------------- training on MNIST

MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.slow
@pytest.mark.parametrize("leaf", ["mnist/vp_ddpmpp.py", "mnist/ve_ncsnpp.py"])
def test_small_ncsnpp_learns_mnist(leaf):
  """150 Adam steps (batch 32, nf 16) bring the DSM loss (reduce_mean) from ~1.0 to below 0.6.

  With lambda(t) = sigma_t^2 the loss is E ||sigma_t s + z||^2 / D: a network outputting zero scores
  exactly 1, so a loss under 0.6 means the network predicts a good part of the noise.
  """
  if not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
    pytest.skip(f"MNIST IDX files not found in {MNIST} (the shared test data are not part of the repository)")
  from score_sde import datasets, losses  # pylint: disable=import-outside-toplevel
  from score_sde.train_state import TrainState  # pylint: disable=import-outside-toplevel
  config = configs_util.load_config(f"configs/{leaf}", [f"--config.data.path={MNIST}", "--config.model.nf=16",
                                                        "--config.training.batch_size=32"])
  sde, model, optimizer = sde_lib.get_sde(config), get_model(config), losses.get_optimizer(config)
  params = models_utils.init_params(jax.random.key(0, impl="rbg"), model, (28, 28, 1))
  state = TrainState.create(params, optimizer)
  step = jax.jit(losses.get_step_fn(sde, model, optimizer, train=True, reduce_mean=True, continuous=True))
  scaler, batches = datasets.get_data_scaler(config), datasets.get_dataset(config, "train")
  key, history = jax.random.key(1), []
  for i in range(150):
    batch = next(batches)
    state, metrics = step(state, {**batch, "image": scaler(jnp.asarray(batch["image"]))}, jax.random.fold_in(key, i))
    history.append(float(metrics["loss"]))
  assert np.mean(history[:5]) > 0.8
  assert np.mean(history[-25:]) < 0.6


@pytest.mark.parametrize("channels,groups,epsilon", [(64, 16, 1e-6), (12, 3, 1e-6), (8, 8, 1e-5), (6, 1, 1e-6)])
def test_group_norm_is_flax_group_norm(channels, groups, epsilon):
  """normalization.GroupNorm (per-channel sums folded into groups) computes flax's GroupNorm with its parameters."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from score_sde.models import normalization  # pylint: disable=import-outside-toplevel
  x = 3.0 * jax.random.normal(jax.random.key(0), (3, 5, 7, channels)) + 1.5
  params = {"scale": jax.random.normal(jax.random.key(1), (channels,)),
            "bias": jax.random.normal(jax.random.key(2), (channels,))}
  ours = normalization.GroupNorm(num_groups=groups, epsilon=epsilon).apply({"params": params}, x)
  theirs = nn.GroupNorm(num_groups=groups, epsilon=epsilon).apply({"params": params}, x)
  np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5)
  assert jax.tree.map(jnp.shape, normalization.GroupNorm(num_groups=groups).init(jax.random.key(3), x)) == \
      jax.tree.map(jnp.shape, nn.GroupNorm(num_groups=groups).init(jax.random.key(3), x))
  with pytest.raises(ValueError, match="do not split into"):
    normalization.GroupNorm(num_groups=5).init(jax.random.key(3), x)


# ----------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("rate", [0.1, 0.5, 0.999, 1e-9])
def test_dropout_masks_equal_flax(rate):
  """dropout.Dropout draws the same masks as flax.linen.Dropout from the same "dropout" rng (its own
  Threefry gives jax.random.bits' bits), for new-style and raw keys, and falls back for rbg keys."""
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 16))
  for key in (jax.random.key(0), jax.random.key(7), jax.random.PRNGKey(3), jax.random.key(3, impl="rbg")):
    ours = dropout.Dropout(rate).apply({}, x, rngs={"dropout": key})
    theirs = nn.Dropout(rate, deterministic=False).apply({}, x, rngs={"dropout": key})
    np.testing.assert_array_equal(ours, theirs)
    assert abs(float(jnp.mean(ours == 0)) - rate) < 0.05  # 1024 elements
  shape = (3, 5, 7)
  key = jax.random.fold_in(jax.random.key(2), 5)
  np.testing.assert_array_equal(dropout.random_bits(key, shape), jax.random.bits(key, shape, jnp.uint32))
