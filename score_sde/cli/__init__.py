"""Command-line programs: `score_sde/cli/<name>.py` defines the absl flags, `main(argv)` and `run()` of
`scripts/<name>.py` and of the console entry point `score-sde-<name>` (see setup.py)."""
