"""Bodies of the command-line scripts (scripts/NAME.py runs score_sde.cli.NAME.run)."""
