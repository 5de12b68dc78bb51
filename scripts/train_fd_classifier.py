"""Thin wrapper: the body is score_sde/cli/train_fd_classifier.py."""
from score_sde.cli.train_fd_classifier import run

if __name__ == "__main__":
  run()
