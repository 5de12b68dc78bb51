"""Convert a released score_sde / score_sde_pytorch checkpoint into a workdir: see score_sde/cli/convert_checkpoint.py."""
from score_sde.cli.convert_checkpoint import run

if __name__ == "__main__":
  run()
