"""Ratios of two trees' ``bench_stack.py --samples`` runs, paired round by round.

Run the two trees in turn, each appending to its own file, for instance:

  for i in 1 2; do
    (cd BEFORE && PYTHONPATH=. python AFTER/benchmarks/bench_stack.py --samples /tmp/b.jsonl)
    (cd AFTER && PYTHONPATH=. python benchmarks/bench_stack.py --samples /tmp/a.jsonl)
  done
  python benchmarks/pair_samples.py /tmp/b.jsonl /tmp/a.jsonl

The n-th sample of a stage in one file is paired with the n-th of the same stage in the
other (same run, same round).  For each stage: the median (min-max) over the pairs of
after/before for the CPU seconds of the process with the stack, of the storing process,
and of the busier one ("a core each"), and for the wall time; below 1 is faster.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, list[dict[str, Any]]]:
    stages: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.strip():
            sample = json.loads(line)
            stages[sample["stage"]].append(sample)
    return stages


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: pair_samples.py BEFORE.jsonl AFTER.jsonl")
    before, after = (load(Path(a)) for a in sys.argv[1:])
    keys = {"this CPU": lambda s: s["cpu"], "storing CPU": lambda s: s["child_cpu"],
            "a core each": lambda s: max(s["cpu"], s["child_cpu"]),
            "wall": lambda s: s["wall"]}
    print(f"{'stage':8} {'pairs':>5}  " + "  ".join(f"{k:>18}" for k in keys))
    for stage in before:
        pairs = list(zip(before[stage], after.get(stage, [])))
        if not pairs:
            continue
        cells = []
        for key in keys.values():
            ratios = [key(a) / key(b) for b, a in pairs if key(b) > 0]
            cells.append(spread(ratios) if ratios else "-")
        print(f"{stage:8} {len(pairs):5}  " + "  ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
