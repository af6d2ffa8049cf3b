"""Two versions of usbtrace importing the same capture in turn: the CPU of the newer
over the older's, per pair.

  python benchmarks/paired_import.py BEFORE_TREE AFTER_TREE CAPTURE [--pairs 3]
      [--no-files] [--fork]

Each tree is a checkout (its ``usbtrace`` package is imported from it: the command runs
from a neutral directory, so that the current one does not come first on sys.path).  The
import runs in one process unless ``--fork`` (``importing.spare_core`` is set, so both
store the same way whatever the load).  CPU is the process tree's user+sys
(``os.wait4``); the order alternates in each pair; reported: each side's CPU seconds and
the ratio after/before, median (min-max).  Both trees are byte-compiled first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WRAPPER = ("import sys, usbtrace.importing\n"
           "from usbtrace.cli import main\n"
           "fork = sys.argv.pop(1) == 'fork'\n"
           "usbtrace.importing.spare_core = lambda: fork\n"
           "sys.argv = ['usbtrace', 'import', '-q', *sys.argv[1:]]\n"
           "main()\n")


def cpu_of(tree: Path, capture: Path, extra: list[str], fork: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-c", WRAPPER, "fork" if fork else "here", str(capture),
                "--db", str(Path(tmp) / "p.db"), *extra]
        proc = subprocess.Popen(args, cwd=tmp, env=dict(os.environ, PYTHONPATH=str(tree)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{tree}: the import failed: {err.strip()[-300:]}")
        return usage.ru_utime + usage.ru_stime


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("capture", type=Path)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--no-files", action="store_true")
    parser.add_argument("--fork", action="store_true", help="store in a forked inserter")
    args = parser.parse_args()
    for tree in (args.before, args.after):
        if not (tree / "usbtrace" / "__init__.py").is_file():
            print(f"{tree}: no usbtrace package there", file=sys.stderr)
            sys.exit(2)
    if not args.capture.is_file() or args.pairs < 1:
        print(f"{args.capture}: not a file (or --pairs below 1)", file=sys.stderr)
        sys.exit(2)
    for tree in (args.before, args.after):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "usbtrace")],
                       check=True, stdout=subprocess.DEVNULL)
    extra = ["--no-files"] if args.no_files else []
    before: list[float] = []
    after: list[float] = []
    for i in range(args.pairs):
        order = [(args.before, before), (args.after, after)]
        for tree, runs in order if i % 2 == 0 else order[::-1]:
            runs.append(cpu_of(tree, args.capture.resolve(), extra, args.fork))
    ratios = [a / b for a, b in zip(after, before)]
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.capture.name}, {'forked inserter' if args.fork else 'one process'}, "
          f"{'no files' if args.no_files else 'files'}, {args.pairs} pairs (load {load})")
    print(f"  CPU s  before {spread(before)}   after {spread(after)}")
    print(f"  after/before {spread(ratios)}")


if __name__ == "__main__":
    main()
