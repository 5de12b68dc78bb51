"""Progress bars for people: redrawn live on a terminal, about once a minute in a log file or pipe."""
from __future__ import annotations

import sys
from typing import Iterable

import tqdm

LOG_REDRAW_INTERVAL_S = 60.0


def progress_bar(iterable: Iterable | None = None, **kwargs) -> tqdm.tqdm:
  """tqdm.tqdm(iterable, **kwargs), fitted to where it writes (`file`, default stderr).

  On a terminal a redraw overwrites the bar in place (tqdm's default 0.1 s interval, width following the
  window); anywhere else every redraw is appended, so a long training run would write one per 0.1 s to its
  log. There the bar is redrawn at most every LOG_REDRAW_INTERVAL_S seconds (and when it closes).
  """
  stream = kwargs.get("file") or sys.stderr
  if getattr(stream, "isatty", lambda: False)():
    kwargs.setdefault("dynamic_ncols", True)
  else:
    kwargs.setdefault("mininterval", LOG_REDRAW_INTERVAL_S)
    kwargs.setdefault("maxinterval", LOG_REDRAW_INTERVAL_S)  # tqdm's monitor would otherwise redraw every 10 s
  return tqdm.tqdm(iterable, **kwargs)
