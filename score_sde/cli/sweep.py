"""A grid of `--config.*` overrides as training runs, and one table of their final metrics.

  score-sde-sweep --config configs/toy/vp_mlp.py --workdir runs/sweep \
      --grid training.sde=vpsde,subvpsde --grid optim.lr=1e-3,2e-3 --set training.n_iters=2000

(or `python scripts/sweep.py ...`) runs the 4 runs one after the other (each `python -m
score_sde.cli.train` in its own process, resuming if its workdir holds a checkpoint) in
runs/sweep/<name>, then writes runs/sweep/results.csv and results.md. A run that fails does not
stop the others: its one-line reason is kept in <name>/sweep_status.json and shown in the tables,
and the sweep exits 1 at the end. `--mode=print` prints the commands instead, one per line, for a
cluster scheduler (each put into `--launcher`, e.g. 'srun {command}' or 'sbatch --gres=gpu:8
--wrap="{command}"'); `--mode=collect` only builds the tables. Every run's config is loaded and
validated before the first one starts.

A run's status is `done` (it reached training.n_iters), `failed` (with its reason), `not run` (no
workdir) or `incomplete` (stopped or still running). Its metrics are the last value of every scalar
in its metrics.jsonl (loss, eval_loss, test_bpd, ...) and the scalars of its eval/*.json files,
named <file>/<key>.
"""
from __future__ import annotations

import csv
import itertools
import json
import pathlib
import shlex
import subprocess
import sys
from typing import Sequence

from absl import app, flags

from score_sde import configs_util
from score_sde.cli import common

STATUS_FILE = "sweep_failed.json"  # in the workdir of a run that failed: {"reason": its last line on stderr}

flags.DEFINE_string("config", None, "leaf config file, e.g. configs/toy/vp_mlp.py")
flags.DEFINE_string("workdir", None, "sweep directory: one sub-directory per run, results.csv, results.md")
flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: values of config.FIELD to sweep (a product over --grid)")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE: an override shared by every run")
flags.DEFINE_enum("mode", "run", ["run", "print", "collect"], "run sequentially, print the commands, or only collect")
flags.DEFINE_string("launcher", "{command}", "print mode: template of every line, e.g. 'srun {command}'")
common.define_verbose_flag()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

Run = dict[str, str]  # config field -> value, in the order of the grid


def _split(assignment: str, flag: str) -> tuple[str, str]:
  field, sep, value = assignment.partition("=")
  if not sep or not field or not value:
    raise ValueError(f"--{flag}={assignment!r} must look like FIELD=VALUE (e.g. optim.lr=1e-3)")
  return field.removeprefix("config."), value


def parse_grid(grid: Sequence[str]) -> dict[str, list[str]]:
  """['optim.lr=1e-3,2e-3', ...] -> {'optim.lr': ['1e-3', '2e-3'], ...}; a field may appear once."""
  axes: dict[str, list[str]] = {}
  for assignment in grid:
    field, values = _split(assignment, "grid")
    if field in axes:
      raise ValueError(f"--grid names config.{field} twice")
    axes[field] = values.split(",")
  return axes


def expand_grid(axes: dict[str, list[str]]) -> list[Run]:
  """The product of the axes, the last axis varying fastest; one empty run for no axes."""
  return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def run_name(run: Run) -> str:
  """'lr=1e-3,sde=vpsde': each field's last component, or the full field where two would clash."""
  last = [field.rsplit(".", 1)[-1] for field in run]
  names = [short if last.count(short) == 1 else field for short, field in zip(last, run)]
  return ",".join(f"{name}={value}".replace("/", "-") for name, value in zip(names, run.values())) or "run"


def overrides(run: Run, shared: Sequence[str]) -> list[str]:
  """Command-line overrides of one run: the shared ones, then the run's own."""
  fixed = [f"--config.{field}={value}" for field, value in (_split(a, "set") for a in shared)]
  return fixed + [f"--config.{field}={value}" for field, value in run.items()]


def train_command(config: str, workdir: pathlib.Path, run_overrides: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "score_sde.cli.train", f"--config={config}", f"--workdir={workdir}", *run_overrides]


def run_training(command: Sequence[str]) -> str | None:
  """Runs `command`, passing its output through; None if it succeeds, else the last line it wrote to stderr."""
  with subprocess.Popen(command, stderr=subprocess.PIPE) as process:
    tail = b""
    for chunk in iter(lambda: process.stderr.read1(4096), b""):
      sys.stderr.buffer.write(chunk)
      sys.stderr.flush()
      tail = (tail + chunk)[-8192:]
  if process.returncode == 0:
    return None
  lines = [line.strip() for line in tail.decode(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
  return lines[-1] if lines else f"exit code {process.returncode}"


def run_status(workdir: pathlib.Path, n_iters: int) -> tuple[str, str]:
  """(status, reason): failed (with the reason its last run gave), not run, done (a checkpoint at n_iters) or
  incomplete."""
  if (workdir / STATUS_FILE).exists():
    return "failed", json.loads((workdir / STATUS_FILE).read_text())["reason"]
  if not workdir.exists():
    return "not run", ""
  return ("done", "") if (workdir / "checkpoints" / str(n_iters)).is_dir() else ("incomplete", "")


def final_metrics(workdir: pathlib.Path) -> dict[str, float]:
  """The last value of every scalar in workdir/metrics.jsonl and the scalars of workdir/eval/*.json."""
  metrics: dict[str, float] = {}
  jsonl = workdir / "metrics.jsonl"
  if jsonl.exists():
    for line in jsonl.read_text().splitlines():
      metrics.update({k: v for k, v in json.loads(line).items() if isinstance(v, (int, float))})
  for path in sorted((workdir / "eval").glob("*.json")):
    record = json.loads(path.read_text())
    metrics.update({f"{path.stem}/{k}": v for k, v in record.items() if isinstance(v, (int, float))})
  return metrics


def table(runs: Sequence[Run], metrics: Sequence[dict[str, float]], statuses: Sequence[tuple[str, str]]
          ) -> tuple[list[str], list[list[str]]]:
  """Header and rows: run name, status, the swept fields, every metric any run reported (blank if absent), reason."""
  fields = list(dict.fromkeys(field for run in runs for field in run))
  names = list(dict.fromkeys(name for m in metrics for name in m))
  names.sort(key=lambda n: (n != "step", n))
  rows = [[run_name(run), status] + [run.get(f, "") for f in fields] + [_format(m.get(n)) for n in names] + [reason]
          for run, m, (status, reason) in zip(runs, metrics, statuses)]
  return ["run", "status", *fields, *names, "reason"], rows


def _format(value: float | None) -> str:
  if value is None:
    return ""
  return str(value) if isinstance(value, int) else f"{value:.6g}"


def write_tables(header: list[str], rows: list[list[str]], out_dir: pathlib.Path) -> None:
  """out_dir/results.csv and out_dir/results.md (a Markdown table)."""
  with open(out_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([header, *rows])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
  (out_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  sweep_dir = pathlib.Path(FLAGS.workdir)
  config_file = configs_util.resolve_config_path(FLAGS.config)
  runs = expand_grid(parse_grid(FLAGS.grid))
  run_overrides = [overrides(run, FLAGS.set) for run in runs]
  # a misspelt field or a bad value fails here, before anything runs (ConfigError is a ValueError)
  n_iters = [configs_util.load_config(config_file, args).training.n_iters for args in run_overrides]
  workdirs = [sweep_dir / run_name(run) for run in runs]
  commands = [train_command(config_file, workdir, args) for workdir, args in zip(workdirs, run_overrides)]
  if FLAGS.mode == "print":
    if "{command}" not in FLAGS.launcher:
      raise ValueError(f"--launcher={FLAGS.launcher!r} must contain {{command}}")
    for command in commands:
      print(FLAGS.launcher.replace("{command}", shlex.join(command)))
    return
  if FLAGS.mode == "run":
    for k, (workdir, command) in enumerate(zip(workdirs, commands)):
      print(f"[{k + 1}/{len(commands)}] {shlex.join(command)}", flush=True)
      reason = run_training(command)
      if reason is None:
        (workdir / STATUS_FILE).unlink(missing_ok=True)
      else:  # also for a run that failed before creating its workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / STATUS_FILE).write_text(json.dumps({"reason": reason}))
  sweep_dir.mkdir(parents=True, exist_ok=True)
  metrics = [final_metrics(workdir) for workdir in workdirs]
  statuses = [run_status(workdir, n) for workdir, n in zip(workdirs, n_iters)]
  write_tables(*table(runs, metrics, statuses), sweep_dir)
  print((sweep_dir / "results.md").read_text(), end="")
  failed = [run_name(run) for run, (status, _) in zip(runs, statuses) if status == "failed"]
  if FLAGS.mode == "run" and failed:
    raise ValueError(f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed)}); see {sweep_dir}/results.md")


def run() -> None:
  common.run(main)


if __name__ == "__main__":
  run()
