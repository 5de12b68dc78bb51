"""Bodies of the command-line scripts: `score_sde.cli.NAME` defines its flags, `main(argv)` and `run()`."""
