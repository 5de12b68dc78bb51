"""Thin wrapper: the body is score_sde/cli/evaluate.py."""
from score_sde.cli.evaluate import run

if __name__ == "__main__":
  run()
