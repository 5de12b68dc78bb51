"""Checkpoints that survive damage: kill -9 mid-save, damaged newest checkpoints, config changes, divergence."""
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from score_sde import checkpoint, configs_util, evaluate, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = ROOT / "configs/toy/vp_mlp.py"
# A small MLP on the oracle mixture (each run compiles in seconds): preemption checkpoint every 10
# steps, a snapshot at the last step.
TINY = ["--config.data.dataset=mixture", "--config.model.nf=32", "--config.model.num_res_blocks=1",
        "--config.training.batch_size=64", "--config.training.snapshot_sampling=False",
        "--config.training.log_freq=5", "--config.training.eval_freq=1000", "--config.training.snapshot_freq=1000",
        "--config.training.snapshot_freq_for_preemption=10", "--config.optim.warmup=5"]


def _config(*overrides: str):
  return configs_util.load_config(TOY, TINY + list(overrides))


def _logged_steps(workdir: pathlib.Path) -> list[int]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [record["step"] for record in map(json.loads, lines) if "loss" in record]


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The array data files of a checkpoint, largest first."""
  files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
  return sorted(files, key=lambda f: -f.stat().st_size)


def _truncate_array_file(step_dir):
  largest = _data_files(step_dir)[0]
  os.truncate(largest, largest.stat().st_size // 2)


def _delete_array_file(step_dir):
  _data_files(step_dir)[0].unlink()


def _corrupt_meta(step_dir):
  (step_dir / "meta" / "metadata").write_text('{"config": ')


def _corrupt_array_metadata(step_dir):
  (step_dir / "state" / "_METADATA").write_text("not json")


DAMAGES = [_truncate_array_file, _delete_array_file, _corrupt_meta, _corrupt_array_metadata]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """(workdir, final state) of 15 steps: a preemption checkpoint at step 10 and a snapshot at step 15."""
  workdir = tmp_path_factory.mktemp("finished")
  state = train.train_and_evaluate(_config("--config.training.n_iters=15"), workdir, progress=False)
  return workdir, state


def _damaged_copy(finished_run, tmp_path, damage) -> pathlib.Path:
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir)
  damage(workdir / "checkpoints" / "15")
  return workdir


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("damage", DAMAGES[:3], ids=lambda damage: damage.__name__.strip("_"))
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_and_training_resumes_from_the_previous(
    damage, finished_run, tmp_path, caplog):
  workdir = _damaged_copy(finished_run, tmp_path, damage)
  damaged_files = sorted(p.relative_to(workdir / "checkpoints/15") for p in (workdir / "checkpoints/15").rglob("*"))
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(_config("--config.training.n_iters=15"), workdir, progress=False)
  warnings = _warnings(caplog)
  assert len(warnings) == 2 and all("\n" not in w for w in warnings)
  assert f"cannot restore the checkpoint {workdir / 'checkpoints' / '15'}:" in warnings[0]
  assert "moved" in warnings[1] and "15.unrestorable" in warnings[1]
  assert "pybind" not in warnings[0] and "tensorstore_spec" not in warnings[0]
  _assert_trees_equal(state, finished_run[1])  # steps 11..15 retrained from step 10
  aside = workdir / "checkpoints" / "15.unrestorable"  # kept as it was, not deleted
  assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == damaged_files
  _, restored, step = evaluate.restore_run(workdir)  # the new step 15 restores
  assert step == 15
  _assert_trees_equal(restored.params, finished_run[1].params)
  assert _logged_steps(workdir) == [5, 10, 15]


@pytest.mark.parametrize("damage, reason", zip(DAMAGES, ["OUT_OF_RANGE: Requested byte range", "the array file holding",
                                                          "cannot read meta/metadata", "cannot read state/_METADATA"]))
def test_reading_a_damaged_run_falls_back_with_one_line_naming_the_damage(damage, reason, finished_run, tmp_path,
                                                                         caplog):
  workdir = _damaged_copy(finished_run, tmp_path, damage)
  with caplog.at_level(logging.WARNING):
    _, state, step = evaluate.restore_run(workdir)
  assert step == 10 and int(state.step) == 10
  [warning] = _warnings(caplog)
  assert f"checkpoints/15: {reason}" in warning and "\n" not in warning and "pybind" not in warning


def test_reading_a_damaged_step_names_the_newest_step_that_restores(finished_run, tmp_path):
  workdir = _damaged_copy(finished_run, tmp_path, _truncate_array_file)
  with pytest.raises(checkpoint.CheckpointError, match="checkpoints/15: .*; the newest step that restores is 10$") as e:
    evaluate.restore_run(workdir, 15)
  assert "\n" not in str(e.value) and "pybind" not in str(e.value) and "<bound method" not in str(e.value)
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint at step 12 .*\[10, 15\]"):
    evaluate.restore_run(workdir, 12)
  for damage in DAMAGES[1:]:
    damage(workdir / "checkpoints-meta" / "10")
  with pytest.raises(checkpoint.CheckpointError, match="none of the 2 checkpoints .* can be restored"):
    evaluate.restore_run(workdir)


def test_a_run_is_read_through_a_relative_workdir(finished_run, monkeypatch):
  """Scripts get --workdir runs/x as typed; orbax restores absolute paths only."""
  workdir, state = finished_run
  monkeypatch.chdir(workdir.parent)
  _, restored, step = evaluate.restore_run(pathlib.Path(workdir.name), None)
  assert step == 15
  _assert_trees_equal(restored.params, state.params)


def test_reading_creates_nothing(tmp_path):
  absent, empty = tmp_path / "absent", tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(checkpoint.CheckpointError, match="is not a directory"):
    evaluate.restore_run(absent)
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
    evaluate.restore_run(empty)
  assert not absent.exists() and not any(empty.iterdir())


def test_metrics_of_a_resumed_run_keep_earlier_steps_once_and_replace_a_rewritten_record(tmp_path):
  records = [{"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.5}, {"step": 10, "test_bpd": 3.0},
             {"step": 15, "loss": 0.4}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 20, "lo')
  writer = train.MetricWriter(tmp_path, resume_step=10)  # steps 11.. are trained again; a kill tore the last line
  assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records[:3]
  writer.write(10, test_bpd=2.5)  # e.g. the final bits/dim of a finished run, evaluated again
  writer.write(15, loss=0.3)
  writer.close()
  assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
      records[0], records[1], {"step": 10, "test_bpd": 2.5}, {"step": 15, "loss": 0.3}]


def test_resuming_with_another_model_is_refused_and_a_longer_run_needs_allow_config_change(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir)
  with pytest.raises(train.ConfigChangedError, match=r"model\.nf \(32 -> 16\).*use a new workdir"):
    train.train_and_evaluate(_config("--config.model.nf=16", "--config.training.n_iters=20"), workdir,
                             progress=False, allow_config_change=True)
  longer = _config("--config.training.n_iters=20")
  with pytest.raises(train.ConfigChangedError, match=r"training\.n_iters \(15 -> 20\); pass --allow_config_change"):
    train.train_and_evaluate(longer, workdir, progress=False)
  assert checkpoint.step_dirs(workdir) == [workdir / "checkpoints/15", workdir / "checkpoints-meta/10"]
  state = train.train_and_evaluate(longer, workdir, progress=False, allow_config_change=True)
  assert int(state.step) == 20 and _logged_steps(workdir) == [5, 10, 15, 20]


def test_a_diverging_run_stops_before_saving_past_the_last_finite_state(tmp_path):
  """lr 1e12: the loss stays finite (~1e24) while the gradient norm overflows at step 3."""
  config = _config("--config.optim.lr=1e12", "--config.training.snapshot_freq_for_preemption=1",
                   "--config.training.n_iters=30")
  with pytest.raises(train.NonFiniteLossError, match=r"gradient norm inf at step 3; the last good checkpoint "
                                                     r"\(step 2\) is kept"):
    train.train_and_evaluate(config, tmp_path, progress=False)
  assert [int(d.name) for d in checkpoint.step_dirs(tmp_path)] == [2, 1]
  _, state, _ = evaluate.restore_run(tmp_path)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))


def _train_command(workdir: pathlib.Path, *overrides: str) -> list[str]:
  return [sys.executable, str(ROOT / "scripts/train.py"), f"--config={TOY}", f"--workdir={workdir}", *TINY, *overrides]


def _saving(workdir: pathlib.Path) -> bool:
  """Whether a checkpoint is half written (orbax's temporary directory) while an earlier one is complete."""
  names = [p.name for p in workdir.glob("checkpoints*/*")]
  return any("orbax-checkpoint-tmp" in name for name in names) and any(name.isdigit() for name in names)


def _kill_during_a_save(command: list[str], workdir: pathlib.Path) -> bool:
  """Starts `command` and kills it (SIGKILL) as soon as `_saving`; True if it died with a save half written."""
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    while process.poll() is None and not _saving(workdir):
      time.sleep(0.001)
  finally:
    process.kill()
    process.wait()
  return process.returncode == -9 and _saving(workdir)


def test_kill_9_during_a_checkpoint_save_then_rerun_ends_like_an_uninterrupted_run(tmp_path):
  """A checkpoint every step, so most of the run is spent saving; a run killed with a save half written resumes.

  Each attempt resumes the previous one, so the kills may also land on a restarted run.
  """
  overrides = ("--config.training.n_iters=16", "--config.training.snapshot_freq_for_preemption=1")
  workdir = tmp_path / "killed"
  command = _train_command(workdir, *overrides)
  assert any(_kill_during_a_save(command, workdir) for _ in range(3)), "no kill landed in a save"
  assert 0 < checkpoint.restore_newest(workdir, lambda meta: evaluate.state_template(_config(*overrides)))[2] < 16
  finished = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
  assert finished.returncode == 0, finished.stderr[-2000:]
  _, resumed, step = evaluate.restore_run(workdir)
  uninterrupted = train.train_and_evaluate(_config(*overrides), tmp_path / "straight", progress=False)
  assert step == 16
  _assert_trees_equal(resumed, uninterrupted)
  assert _logged_steps(workdir) == [5, 10, 15]


@pytest.mark.slow
def test_train_script_refuses_a_changed_config_in_one_line_and_accepts_allow_config_change(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir)
  refused = subprocess.run(_train_command(workdir, "--config.training.n_iters=20"), capture_output=True, text=True,
                           timeout=300, check=False)
  assert refused.returncode != 0 and "Traceback" not in refused.stderr
  assert "training.n_iters (15 -> 20); pass --allow_config_change" in refused.stderr.strip().splitlines()[-1]
  accepted = subprocess.run(_train_command(workdir, "--config.training.n_iters=20", "--allow_config_change"),
                            capture_output=True, text=True, timeout=300, check=False)
  assert accepted.returncode == 0, accepted.stderr[-2000:]
  assert _logged_steps(workdir) == [5, 10, 15, 20]


@pytest.mark.parametrize("script, flags", [
    ("sample.py", ["--num=4", "--batch_size=4", "--method=ode"]),
    pytest.param("likelihood.py", ["--num_examples=4", "--batch_size=4"], marks=pytest.mark.slow)])
def test_scripts_read_a_damaged_run_from_the_newest_checkpoint_that_restores(script, flags, finished_run, tmp_path):
  workdir = _damaged_copy(finished_run, tmp_path, _delete_array_file)
  result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), f"--workdir={workdir}", *flags],
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "step 10" in result.stdout or '"step": 10' in result.stdout
  warnings = [line for line in result.stderr.splitlines() if "cannot restore the checkpoint" in line]
  assert len(warnings) == 1 and "checkpoints/15: the array file holding" in warnings[0]
  assert "Traceback" not in result.stderr and "never retrieved" not in result.stderr


def test_sample_script_names_the_newest_step_that_restores(finished_run, tmp_path):
  workdir = _damaged_copy(finished_run, tmp_path, _truncate_array_file)
  result = subprocess.run([sys.executable, str(ROOT / "scripts/sample.py"), f"--workdir={workdir}", "--step=15"],
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].endswith("the newest step that restores is 10")
