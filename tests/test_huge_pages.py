"""huge_pages: where glibc.malloc.hugetlb=1 is added, and the restart that hands it to a program's malloc."""
import os
import subprocess
import sys

import pytest

from score_sde.cli import huge_pages

# Prints "start" each time it starts, then whether a fresh 64 MiB malloc block lies in a mapping advised
# for transparent huge pages ("hg" among the VmFlags of /proc/self/smaps), then the tunables and arguments.
PROGRAM = """
import ctypes, os, sys
from score_sde.cli import huge_pages
print("start", flush=True)
if sys.argv[1] == "restart":
  huge_pages.restart_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
address = libc.malloc(64 << 20)
advised = None
for line in open("/proc/self/smaps"):
  fields = line.split()
  if "-" in fields[0] and len(fields) >= 5:
    low, high = (int(end, 16) for end in fields[0].split("-"))
    inside = low <= address < high
  elif fields[0] == "VmFlags:" and inside:
    advised = "hg" in fields[1:]
print(f"advised={advised}", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""


@pytest.mark.parametrize("environ, libc, mode, expected", [
    ({}, ("glibc", "2.36"), "madvise", "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, ("glibc", "2.35"), "madvise",
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, ("glibc", "2.36"), "madvise", None),  # the user opted out
    ({}, ("glibc", "2.34"), "madvise", None),  # no such tunable yet
    ({}, ("", ""), "madvise", None),  # another C library (musl, macOS)
    ({}, ("glibc", "2.36"), "always", None),  # huge pages without advice
    ({}, ("glibc", "2.36"), "never", None),
    ({}, ("glibc", "2.36"), None, None),  # no /sys/kernel/mm/transparent_hugepage
])
def test_tunable_is_added_only_where_it_helps(environ, libc, mode, expected):
  assert huge_pages.huge_page_tunables(environ, libc, mode) == expected


def test_mode_is_the_bracketed_word(tmp_path):
  (tmp_path / "enabled").write_text("always [madvise] never\n")
  assert huge_pages.transparent_huge_page_mode(tmp_path / "enabled") == "madvise"
  assert huge_pages.transparent_huge_page_mode(tmp_path / "missing") is None


def test_restart_hands_the_tunable_to_malloc(tmp_path):
  environ = {name: value for name, value in os.environ.items() if name != "GLIBC_TUNABLES"}
  if huge_pages.environment_with_huge_pages(environ) == environ:
    pytest.skip("glibc.malloc.hugetlb=1 would not help on this machine")
  program = tmp_path / "program.py"
  program.write_text(PROGRAM)

  def run(*args: str) -> list[str]:
    return subprocess.run([sys.executable, str(program), *args], env=environ, capture_output=True, text=True,
                          timeout=60, check=True).stdout.splitlines()

  assert run("restart", "--x=1") == ["start", "start", "advised=True glibc.malloc.hugetlb=1 ['restart', '--x=1']"]
  assert run("stay") == ["start", "advised=False None ['stay']"]  # the control: plain malloc gives no advice
