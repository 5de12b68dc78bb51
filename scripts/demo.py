"""Runs score_sde/cli/demo.py (console script `score-sde-demo`); see --help."""
from score_sde.cli.demo import run

if __name__ == "__main__":
  run()
