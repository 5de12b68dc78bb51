"""Runs score_sde/cli/sample.py (console script `score-sde-sample`); see --help."""
from score_sde.cli.sample import run

if __name__ == "__main__":
  run()
