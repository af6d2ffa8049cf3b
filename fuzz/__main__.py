"""``python -m fuzz run --inputs N [--seed S] [--target T ...] [--jobs J] [--state F]`` and
``python -m fuzz replay FILE...``: see the README's "Fuzzing" section."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="a campaign of mutated captures")
    run.add_argument("--inputs", type=int, default=1000)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--target", action="append", choices=TARGETS,
                     help="a target to run (repeatable); default: all")
    run.add_argument("--jobs", type=int, default=1, help="worker processes")
    run.add_argument("--corpus", type=Path, default=None,
                     help="where new reproducers go (default fuzz/corpus/regressions)")
    run.add_argument("--time-limit", type=float, default=5.0,
                     help="CPU seconds per input, all targets together")
    run.add_argument("--state", type=Path, default=None,
                     help="a campaign's state file: continued where it stopped if it "
                          "exists, kept up to date as it runs")
    run.add_argument("--memory-limit", type=int, default=500, help="MB of address space")
    again = sub.add_parser("replay", help="run files through the targets, report findings")
    again.add_argument("files", nargs="+", type=Path)
    again.add_argument("--target", action="append", choices=TARGETS)
    args = parser.parse_args(argv)

    from fuzz.runner import CORPUS
    from fuzz.runner import run as campaign
    from fuzz.worker import Worker

    targets = tuple(args.target or TARGETS)
    if args.command == "run":
        try:
            stats = campaign(args.inputs, args.seed, targets, args.jobs, args.corpus or CORPUS,
                             args.time_limit, args.memory_limit << 20, state=args.state)
        except KeyboardInterrupt:
            return 130
        return 1 if stats.findings or stats.earlier_findings else 0
    worker = Worker()
    failed = 0
    try:
        for path in args.files:
            outcome = worker.run(path.read_bytes(), targets)
            for finding in outcome.findings:
                failed += 1
                print(f"{path}: {finding.describe()}\n{finding.trace}")
            print(f"{path}: {len(outcome.findings)} findings, {outcome.seconds:.2f} s, "
                  f"peak RSS {outcome.peak_rss / (1 << 20):.0f} MB")
    finally:
        worker.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
