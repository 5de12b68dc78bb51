"""Runs score_sde/cli/sweep.py (console script `score-sde-sweep`); see --help."""
from score_sde.cli.sweep import run

if __name__ == "__main__":
  run()
