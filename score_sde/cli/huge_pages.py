"""Transparent huge pages for the temporaries of XLA:CPU, through glibc's malloc.

XLA:CPU allocates the temporaries of one run of a compiled program as one block (1.1 GB for the
DDPM++ training step at batch 8) and frees it when the run ends. glibc serves a block that large
with mmap and gives it back with munmap, so every training step touches about 286k fresh 4 KiB
pages, one page fault each: 0.6 CPU-seconds of kernel time per DDPM++ step on a 2-core CPU. The
glibc tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35) asks for transparent huge pages on such
blocks (madvise): about a thousand faults per step, and 0.12 CPU-seconds
(benchmarks/reference_throughput.py prints both).

glibc reads its tunables once, when a process starts, so `restart_with_huge_pages()` executes the
running program again with the tunable added to GLIBC_TUNABLES. It does nothing where the tunable
would not help: another C library, glibc < 2.35, transparent huge pages `never` (or `always`, which
needs no advice), or a GLIBC_TUNABLES that already sets glibc.malloc.hugetlb (`=0` opts out).
"""
from __future__ import annotations

import os
import pathlib
import platform
import re
import sys
from typing import Mapping

HUGETLB = "glibc.malloc.hugetlb"
THP_MODE_FILE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_page_mode(path: pathlib.Path = THP_MODE_FILE) -> str | None:
  """The kernel's mode, the bracketed word of `path` ('always', 'madvise' or 'never'); None if unreadable."""
  try:
    match = re.search(r"\[(\w+)\]", path.read_text())
  except OSError:
    return None
  return match.group(1) if match else None


def huge_page_tunables(environ: Mapping[str, str], libc: tuple[str, str], thp_mode: str | None) -> str | None:
  """GLIBC_TUNABLES of `environ` with glibc.malloc.hugetlb=1 added; None where adding it would not help.

  libc: (name, version) as platform.libc_ver() gives it; thp_mode: as transparent_huge_page_mode().
  """
  name, version = libc
  if name != "glibc" or thp_mode != "madvise":
    return None
  if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) < (2, 35):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if any(entry.partition("=")[0] == HUGETLB for entry in tunables.split(":")):
    return None
  return f"{tunables}:{HUGETLB}=1" if tunables else f"{HUGETLB}=1"


def _tunables_here(environ: Mapping[str, str]) -> str | None:
  """huge_page_tunables of `environ` on this machine's C library and kernel."""
  return huge_page_tunables(environ, platform.libc_ver(), transparent_huge_page_mode())


def environment_with_huge_pages(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
  """A copy of `environ` for a subprocess that runs XLA:CPU: with glibc.malloc.hugetlb=1 where it helps."""
  tunables = _tunables_here(environ)
  return {**environ, "GLIBC_TUNABLES": tunables} if tunables else dict(environ)


def restart_with_huge_pages() -> None:
  """Executes this program again (same interpreter, sys.orig_argv) with glibc.malloc.hugetlb=1 where it
  helps; returns where it would not, and in the restarted program, whose GLIBC_TUNABLES sets it."""
  tunables = _tunables_here(os.environ)
  if tunables is None or not sys.executable:
    return
  os.environ["GLIBC_TUNABLES"] = tunables
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
