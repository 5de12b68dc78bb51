"""Running a script's `main` under absl, with expected errors as one line on stderr and exit code 1."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import app

from score_sde import checkpoint

EXPECTED_ERRORS = (ValueError, FileNotFoundError, checkpoint.CheckpointError)


def run(main: Callable[[Sequence[str]], None], flags_parser: Callable | None = None) -> None:
  try:
    if flags_parser is None:
      app.run(main)
    else:
      app.run(main, flags_parser=flags_parser)
  except EXPECTED_ERRORS as e:
    sys.exit(f"error: {e}")
