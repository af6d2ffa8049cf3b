"""Instructions a command executes, counted by valgrind's callgrind: the measure that
repeats from run to run on a shared machine, where CPU seconds do not.

What it leaves out, and what the benchmarks that use it say beside their counts: the
kernel's work, how many instructions run a cycle, and two ways callgrind's CPU differs
from the real one.  It has no SHA extensions, so OpenSSL hashes in portable code (some
28 instructions a byte); and it counts a ``rep movsb``, with which glibc's memcpy moves
large blocks, once a byte, where the CPU takes a few thousand cycles for 64 KiB.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def instructions(args: list[str], env: dict[str, str] | None = None,
                 copies: bool = False) -> tuple[int, int]:
    """What ``args`` executes (callgrind's ``Collected``, its own process only) and, with
    ``copies``, how many of those glibc's memcpy and memmove ran (else 0)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                               *args], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        counts = [line.split("Collected :")[1] for line in proc.stderr.splitlines()
                  if "Collected :" in line]
        if proc.returncode != 0 or not counts:
            sys.exit(f"valgrind {' '.join(args[:3])} failed ({proc.returncode}): "
                     f"{proc.stderr[-500:]}")
        copied = 0
        if copies:
            table = subprocess.run(["callgrind_annotate", "--inclusive=no",
                                    "--threshold=100", str(out)],
                                   capture_output=True, text=True, check=True).stdout
            for line in table.splitlines():
                cost, _, where = line.strip().partition(" ")
                function = where.split(" [")[0].rpartition(":")[2]
                if cost[:1].isdigit() and ("memcpy" in function or "memmove" in function):
                    copied += int(cost.replace(",", ""))
    return int(counts[-1]), copied
