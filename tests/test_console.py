"""Progress bars: live on a terminal, rarely redrawn where every redraw is appended (log files, pipes)."""
import io
import time

from score_sde import console


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def _redraws(stream: io.StringIO, updates: int = 12, pause_s: float = 0.11) -> int:
  with console.progress_bar(total=updates, file=stream) as bar:
    for _ in range(updates):
      time.sleep(pause_s)
      bar.update()
  return stream.getvalue().count("\r")


def test_bar_is_redrawn_live_on_a_terminal_and_rarely_in_a_log():
  assert _redraws(_Terminal()) >= 10  # every update, 0.11 s apart
  assert _redraws(io.StringIO()) <= 3  # opening, closing (and at most one in between)
