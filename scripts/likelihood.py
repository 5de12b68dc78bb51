"""Runs score_sde/cli/likelihood.py (console script `score-sde-likelihood`); see --help."""
from score_sde.cli.likelihood import run

if __name__ == "__main__":
  run()
