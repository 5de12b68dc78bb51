"""A grid of `--config.*` overrides as training runs, and one table of their final metrics.

  python scripts/sweep.py --config configs/toy/vp_mlp.py --workdir runs/sweep \
      --grid training.sde=vpsde,subvpsde --grid optim.lr=1e-3,2e-3 --set training.n_iters=2000

runs the 4 runs one after the other (each `scripts/train.py` in its own process, resuming if its
workdir holds a checkpoint) in runs/sweep/<name>, then writes runs/sweep/results.csv and
results.md. `--mode=print` prints the commands instead, one per line, for a cluster scheduler
(each put into `--launcher`, e.g. 'srun {command}' or 'sbatch --gres=gpu:8 --wrap="{command}"');
`--mode=collect` only builds the tables once they are done. Every run's config is loaded and
validated before the first one starts.

A run's metrics are the last value of every scalar in its metrics.jsonl (loss, eval_loss,
test_bpd, ...) and the scalars of its eval/*.json files, named <file>/<key>.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root: `configs`

from absl import app, flags  # noqa: E402

from score_sde import configs_util  # noqa: E402

TRAIN_SCRIPT = pathlib.Path(__file__).resolve().parent / "train.py"

flags.DEFINE_string("config", None, "leaf config file, e.g. configs/toy/vp_mlp.py")
flags.DEFINE_string("workdir", None, "sweep directory: one sub-directory per run, results.csv, results.md")
flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: values of config.FIELD to sweep (a product over --grid)")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE: an override shared by every run")
flags.DEFINE_enum("mode", "run", ["run", "print", "collect"], "run sequentially, print the commands, or only collect")
flags.DEFINE_string("launcher", "{command}", "print mode: template of every line, e.g. 'srun {command}'")
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
  return [sys.executable, str(TRAIN_SCRIPT), f"--config={config}", f"--workdir={workdir}", *run_overrides]


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


def table(runs: Sequence[Run], metrics: Sequence[dict[str, float]]) -> tuple[list[str], list[list[str]]]:
  """Header and rows: run name, the swept fields, then every metric any run reported (blank if absent)."""
  fields = list(dict.fromkeys(field for run in runs for field in run))
  names = list(dict.fromkeys(name for m in metrics for name in m))
  names.sort(key=lambda n: (n != "step", n))
  rows = [[run_name(run)] + [run.get(f, "") for f in fields] + [_format(m.get(n)) for n in names]
          for run, m in zip(runs, metrics)]
  return ["run", *fields, *names], rows


def _format(value: float | None) -> str:
  if value is None:
    return ""
  return str(value) if isinstance(value, int) else f"{value:.6g}"


def write_tables(header: list[str], rows: list[list[str]], out_dir: pathlib.Path) -> None:
  """out_dir/results.csv and out_dir/results.md (a Markdown table)."""
  with open(out_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([header, *rows])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  (out_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  sweep_dir = pathlib.Path(FLAGS.workdir)
  try:
    runs = expand_grid(parse_grid(FLAGS.grid))
    run_overrides = [overrides(run, FLAGS.set) for run in runs]
    for args in run_overrides:  # fail on a misspelt field or a bad value before anything runs
      configs_util.load_config(FLAGS.config, args)
  except ValueError as e:  # ConfigError is a ValueError
    sys.exit(f"sweep error: {e}")
  commands = [train_command(FLAGS.config, sweep_dir / run_name(run), args) for run, args in zip(runs, run_overrides)]
  if FLAGS.mode == "print":
    if "{command}" not in FLAGS.launcher:
      sys.exit(f"sweep error: --launcher={FLAGS.launcher!r} must contain {{command}}")
    for command in commands:
      print(FLAGS.launcher.replace("{command}", shlex.join(command)))
    return
  if FLAGS.mode == "run":
    for k, command in enumerate(commands):
      print(f"[{k + 1}/{len(commands)}] {shlex.join(command)}", flush=True)
      subprocess.run(command, check=True)
  sweep_dir.mkdir(parents=True, exist_ok=True)
  header, rows = table(runs, [final_metrics(sweep_dir / run_name(run)) for run in runs])
  write_tables(header, rows, sweep_dir)
  print((sweep_dir / "results.md").read_text(), end="")


if __name__ == "__main__":
  app.run(main)
