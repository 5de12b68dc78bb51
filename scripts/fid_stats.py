"""Thin wrapper: the body is score_sde/cli/fid_stats.py."""
from score_sde.cli.fid_stats import run

if __name__ == "__main__":
  run()
