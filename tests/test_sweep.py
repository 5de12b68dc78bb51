"""scripts/sweep.py: grid expansion, names, printed commands, the metrics table, config errors up front,
failed runs recorded while the others run."""
import csv
import json
import pathlib
import re
import subprocess
import sys

import pytest

from score_sde.cli import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]

TOY = str(ROOT / "configs/toy/vp_mlp.py")


def _sweep(tmp_path, *args, check=True):
  return subprocess.run([sys.executable, str(ROOT / "scripts/sweep.py"), f"--config={TOY}",
                         f"--workdir={tmp_path}", *args], capture_output=True, text=True, check=check, timeout=120)


def test_grid_is_the_product_with_the_last_axis_fastest():
  axes = sweep.parse_grid(["training.sde=vpsde,subvpsde", "optim.lr=1e-3,2e-3,5e-3"])
  runs = sweep.expand_grid(axes)
  assert len(runs) == 6 and len({sweep.run_name(r) for r in runs}) == 6
  assert runs[:2] == [{"training.sde": "vpsde", "optim.lr": "1e-3"}, {"training.sde": "vpsde", "optim.lr": "2e-3"}]
  assert sweep.run_name(runs[0]) == "sde=vpsde,lr=1e-3"
  assert sweep.expand_grid({}) == [{}] and sweep.run_name({}) == "run"
  assert sweep.run_name({"model.nf": "8", "data.nf": "9"}) == "model.nf=8,data.nf=9"  # clashing last components
  with pytest.raises(ValueError, match="FIELD=VALUE"):
    sweep.parse_grid(["optim.lr"])
  with pytest.raises(ValueError, match="twice"):
    sweep.parse_grid(["optim.lr=1", "config.optim.lr=2"])


def test_print_mode_prints_one_train_command_per_run(tmp_path):
  out = _sweep(tmp_path, "--mode=print", "--launcher=sbatch --wrap=\"{command}\"", "--grid=training.sde=vpsde,vesde",
               "--set=training.n_iters=7").stdout.splitlines()
  assert len(out) == 2 and all(line.startswith('sbatch --wrap="') and "-m score_sde.cli.train" in line for line in out)
  assert f"--workdir={tmp_path}/sde=vesde" in out[1] and out[1].endswith("--config.training.n_iters=7 "
                                                                          '--config.training.sde=vesde"')
  assert _sweep(tmp_path, "--mode=print", "--launcher=srun", check=False).returncode != 0
  assert not list(tmp_path.iterdir())  # printing runs nothing


def test_a_misspelt_field_fails_before_any_run(tmp_path):
  result = _sweep(tmp_path, "--grid=training.sde=vpsde,vpsd", check=False)
  assert result.returncode != 0 and "config.training.sde='vpsd' is not one of" in result.stderr
  result = _sweep(tmp_path, "--grid=optim.lrr=1e-3", check=False)
  assert result.returncode != 0 and "lrr" in result.stderr
  assert not list(tmp_path.iterdir())


def test_collect_builds_csv_and_markdown_from_final_metrics(tmp_path):
  for run, (loss, bpd) in {"sde=vpsde": (0.5, 3.25), "sde=vesde": (0.75, None)}.items():
    (tmp_path / run / "eval").mkdir(parents=True)
    records = [{"step": 100, "loss": 9.0}, {"step": 200, "loss": loss, "eval_loss": loss + 0.1}]
    (tmp_path / run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if bpd is not None:
      (tmp_path / run / "eval" / "test.json").write_text(json.dumps({"bpd": bpd, "split": "test"}))
  out = _sweep(tmp_path, "--mode=collect", "--grid=training.sde=vpsde,vesde").stdout
  with open(tmp_path / "results.csv", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  assert rows == [["run", "status", "training.sde", "step", "eval_loss", "loss", "test/bpd", "reason"],
                  ["sde=vpsde", "incomplete", "vpsde", "200", "0.6", "0.5", "3.25", ""],
                  ["sde=vesde", "incomplete", "vesde", "200", "0.85", "0.75", "", ""]]
  assert out.splitlines()[2] == "| sde=vpsde | incomplete | vpsde | 200 | 0.6 | 0.5 | 3.25 |  |"
  assert (tmp_path / "results.md").read_text() == out


@pytest.mark.slow
def test_run_mode_trains_every_run_and_tabulates_them(tmp_path):
  _sweep(tmp_path, "--grid=training.sde=vpsde,subvpsde", "--set=training.n_iters=10", "--set=training.log_freq=5",
         "--set=training.snapshot_sampling=False", "--set=model.nf=16", "--set=training.batch_size=32",
         "--set=eval.enable_bpd=False")
  with open(tmp_path / "results.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == ["sde=vpsde", "sde=subvpsde"]
  assert all(r["status"] == "done" and r["step"] == "10" and float(r["loss"]) > 0 for r in rows)
  assert rows[0]["loss"] != rows[1]["loss"]


def test_collect_tells_done_failed_and_not_run_apart(tmp_path):
  (tmp_path / "sde=vpsde" / "checkpoints" / "4000").mkdir(parents=True)  # the toy config's n_iters
  (tmp_path / "sde=vesde").mkdir()
  (tmp_path / "sde=vesde" / sweep.STATUS_FILE).write_text(json.dumps({"reason": "error: training diverged"}))
  _sweep(tmp_path, "--mode=collect", "--grid=training.sde=vpsde,vesde,subvpsde")
  with open(tmp_path / "results.csv", encoding="utf-8") as f:
    rows = {r["run"]: (r["status"], r["reason"]) for r in csv.DictReader(f)}
  assert rows == {"sde=vpsde": ("done", ""), "sde=vesde": ("failed", "error: training diverged"),
                  "sde=subvpsde": ("not run", "")}


def test_a_failing_run_is_recorded_and_the_next_one_still_runs(tmp_path):
  """The first run names local files without a path: it fails in seconds, the second trains 2 steps."""
  result = _sweep(tmp_path, "--grid=data.dataset=files,checkerboard", "--set=training.n_iters=2",
                  "--set=training.batch_size=16", "--set=training.snapshot_sampling=False", "--set=model.nf=8",
                  check=False)
  assert result.returncode == 1 and "1 of 2 runs failed" in result.stderr and "Traceback" not in result.stderr
  assert not re.search(r"^I\d{4} ", result.stderr, re.M)  # no absl/orbax INFO lines without --verbose
  with open(tmp_path / "results.csv", encoding="utf-8") as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert rows["dataset=files"]["status"] == "failed" and "needs config.data.path" in rows["dataset=files"]["reason"]
  assert rows["dataset=checkerboard"]["status"] == "done"
