"""Runs score_sde/cli/train.py (console script `score-sde-train`); see --help."""
from score_sde.cli.train import run

if __name__ == "__main__":
  run()
