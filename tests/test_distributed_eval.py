"""Multi-process evaluation: scripts/likelihood.py and scripts/sample.py on two jax.distributed CPU
processes (gloo on localhost, one device each) give the results of one process, and only process 0
writes them.

Each process gets its own copy of the trained run (or its own --out), so the files a process writes
show up in its own directory.

The bits/dim reference is one process with two devices, the same mesh: the adaptive likelihood solve
controls one step-size sequence on the error of the whole batch, and in float32 its error estimate
is dominated by rounding, so any change in reduction order or per-device batch shape (one device
instead of two) moves the steps, and the bits/dim by up to ~1e-3 here even at rtol = atol = 1e-5
(the float32 floor of the solve). Fixed-step samplers have no such floor, so sampling is compared
with one device.
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from score_sde import configs_util, launch, train  # noqa: E402

STEPS = 3
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
  """A run of a small MLP on the oracle mixture, trained for a few steps, with its final checkpoint."""
  config = configs_util.load_config(ROOT / "configs/toy/vp_mlp.py", [
      "--config.data.dataset=mixture", "--config.model.nf=32", "--config.model.num_res_blocks=1",
      "--config.training.batch_size=64", "--config.optim.warmup=2", "--config.model.ema_rate=0.5"])
  config.training.update(n_iters=STEPS, eval_freq=1000, snapshot_freq=1000, snapshot_sampling=False)
  config.eval.update(rtol=1e-3, atol=1e-3)
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(config, workdir, progress=False, devices=jax.devices()[:1])
  return workdir


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _copy(run: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
  shutil.copytree(run, destination)
  return destination


def _distributed_flags(port: int, num_processes: int, process_id: int) -> list[str]:
  """The score_sde/launch.py flags of process `process_id` (none for a single process)."""
  if num_processes == 1:
    return []
  return [f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
          f"--process_id={process_id}"]


def _launch(script: str, args_per_process: list[list[str]], devices_per_process: int = 1) -> list[subprocess.Popen]:
  """Starts scripts/<script> once per entry of `args_per_process`; several entries join one jax.distributed run."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
  port = _free_port()
  return [subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *args,
                            *_distributed_flags(port, len(args_per_process), p)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for p, args in enumerate(args_per_process)]


def _outputs(processes: list[subprocess.Popen]) -> list[str]:
  """The output of each process once all have exited successfully (killed on a timeout)."""
  try:
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def test_likelihood_on_two_processes_equals_one_process(run_dir, tmp_path):
  """Bits/dim (ODE and DDPM ELBO) of 20 held-out points in batches of 8, twice (the last batch padded,
  process 1 holding only padding): two processes give one process's per-example values and summary."""
  options = ["--num_examples=20", "--batch_size=8", "--num_repeats=2", "--elbo", "--elbo_steps=50",
             "--elbo_timesteps=4", "--seed=3"]
  workdirs = [_copy(run_dir, tmp_path / name) for name in ("one", "p0", "p1")]
  one = _launch("likelihood.py", [[f"--workdir={workdirs[0]}", *options]], devices_per_process=2)
  two = _launch("likelihood.py", [[f"--workdir={w}", *options] for w in workdirs[1:]])
  outputs = _outputs(one + two)
  name = f"bpd_test_{STEPS}_first20"
  results = [json.loads((w / "eval" / f"{name}.json").read_text()) for w in workdirs[:2]]
  per_example = [np.load(w / "eval" / f"{name}.npz") for w in workdirs[:2]]
  for bound in ("ode", "elbo"):
    assert per_example[0][f"{bound}_bpd"].shape == (2, 20) and per_example[0][f"{bound}_bpd"].std() > 0
    np.testing.assert_allclose(per_example[1][f"{bound}_bpd"], per_example[0][f"{bound}_bpd"], rtol=1e-6)
  assert not np.array_equal(*per_example[0]["ode_bpd"])  # each repeat draws new probes
  for bound in ("ode_bpd", "ddpm_elbo_bpd"):
    assert results[0][bound]["num_examples"] == results[1][bound]["num_examples"] == 20
    np.testing.assert_allclose([results[1][bound]["mean"], results[1][bound]["stderr"]],
                               [results[0][bound]["mean"], results[0][bound]["stderr"]], rtol=1e-6)
  assert sorted(p.name for p in (workdirs[1] / "eval").iterdir()) == [f"{name}.json", f"{name}.npz"]
  assert not (workdirs[2] / "eval").exists() and "written to" not in outputs[2]
  assert "written to" in outputs[1]


@pytest.mark.slow  # ~30 s: three more processes
def test_sampling_on_two_processes_equals_one_process(run_dir, tmp_path):
  """10 PC samples in batches of 4 (the last batch cut to 2): two processes draw the same samples."""
  options = [f"--workdir={run_dir}", "--method=pc", "--num_steps=10", "--num=10", "--batch_size=4", "--seed=5"]
  outs = [tmp_path / name for name in ("one", "p0", "p1")]
  one = _launch("sample.py", [[*options, f"--out={outs[0]}"]])
  two = _launch("sample.py", [[*options, f"--out={out}"] for out in outs[1:]])
  outputs = _outputs(one + two)
  name = f"samples_step{STEPS}_pc_nfe21_seed5"  # 10 predictor + 10 corrector steps + the denoising step
  samples = [np.load(out / f"{name}.npz")["samples"] for out in outs[:2]]
  assert samples[0].shape == (10, 2) and samples[0].std() > 0.1
  np.testing.assert_allclose(samples[1], samples[0], rtol=1e-5, atol=1e-5)
  assert sorted(p.name for p in outs[1].iterdir()) == [f"{name}.npz", f"{name}.png"]
  assert not outs[2].exists() and "written to" not in outputs[2]


def test_a_batch_that_does_not_divide_over_the_devices_is_refused(run_dir):
  [process] = _launch("likelihood.py", [[f"--workdir={run_dir}", "--batch_size=3"]], devices_per_process=2)
  output = process.communicate(timeout=TIMEOUT_S)[0]
  assert process.returncode == 1
  assert "--batch_size=3 is not divisible by the 2 devices" in output


def test_incomplete_distributed_flags_are_refused():
  flag_values = flags.FlagValues()
  launch.define_flags(flag_values)
  flag_values(["script", "--coordinator_address=localhost:1234", "--num_processes=2"])
  with pytest.raises(SystemExit, match=r"distributed setup error: .*missing \['process_id'\]"):
    launch.initialize(flag_values)


def test_the_elbo_alone_skips_the_ode_and_nothing_to_compute_is_refused(run_dir, tmp_path):
  workdir = _copy(run_dir, tmp_path / "run")
  [elbo_only, nothing] = _launch("likelihood.py", [[f"--workdir={workdir}", "--noode", "--elbo", "--elbo_steps=50",
                                                    "--elbo_timesteps=4", "--batch_size=8"]]) + \
      _launch("likelihood.py", [[f"--workdir={workdir}", "--noode"]])
  _outputs([elbo_only])
  result = json.loads((workdir / "eval" / f"bpd_test_{STEPS}.json").read_text())
  assert "ode_bpd" not in result and np.isfinite(result["ddpm_elbo_bpd"]["mean"])
  output = nothing.communicate(timeout=TIMEOUT_S)[0]
  assert nothing.returncode == 1 and "--noode without --elbo leaves nothing to compute" in output
