"""The command-line flags that join a script to the other processes of a multi-host run.

scripts/train.py, sample.py and likelihood.py call `define_flags()` next to their own flags and
`initialize(FLAGS)` first thing in `main`, before any JAX computation. Run each script once per
host, either with --distributed (JAX finds the others on a TPU pod, Slurm or Open MPI) or with
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I. Without these flags a script
runs as a single process.
"""
from __future__ import annotations

import sys

from absl import flags

from score_sde import parallel


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines --distributed, --coordinator_address, --num_processes and --process_id."""
  flags.DEFINE_bool("distributed", False, "join the other processes found by JAX (TPU pod, Slurm, Open MPI)",
                    flag_values=flag_values)
  flags.DEFINE_string("coordinator_address", None,
                      "multi-process: HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS)",
                      flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None, "multi-process: the number of processes", flag_values=flag_values)
  flags.DEFINE_integer("process_id", None, "multi-process: this process's id in [0, num_processes)",
                       flag_values=flag_values)


def initialize(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Joins the other processes as the flags of `define_flags` say; exits with the reason if they are incomplete."""
  try:
    parallel.initialize(flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id,
                        auto_detect=flag_values.distributed)
  except ValueError as e:
    sys.exit(f"distributed setup error: {e}")
