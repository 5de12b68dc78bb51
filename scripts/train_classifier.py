"""Runs score_sde/cli/train_classifier.py (console script `score-sde-train-classifier`); see --help."""
from score_sde.cli.train_classifier import run

if __name__ == "__main__":
  run()
