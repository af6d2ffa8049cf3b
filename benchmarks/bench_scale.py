"""Reading a session costs the same memory whatever its size: log, export, replay, and
the analysis commands (stats, extract, timeline, report).

A real capture is tiled to each size (default 250,000 and 1,000,000 records) and
imported; then ``usbtrace log``, ``usbtrace export`` and ``usbtrace replay``
run on the session, each in a subprocess whose peak RSS and time are measured.
It reports each command's peak memory at the largest size against the smallest
(the goal: within 1.25x) and the time of ``log`` against the time of the import.

Run:  python benchmarks/bench_scale.py [--records 250000,1000000] [--skip replay]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.tiling import tile  # noqa: E402

DEFAULT = HERE.parent.parent / "shared" / "captures" / "ajbanjara__usb_memory_stick.pcap"
ENV = dict(os.environ, PYTHONPATH=str(HERE.parent))

# runs a command and prints its CPU seconds, wall seconds and peak RSS (KiB)
MEASURE = """
import resource, subprocess, sys, time
t0 = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - t0
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(code, use.ru_utime + use.ru_stime, wall, use.ru_maxrss)
"""


def measure(*args: str) -> tuple[int, float, float, int]:
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "usbtrace",
                          *args], env=ENV, capture_output=True, text=True, check=True)
    code, cpu, wall, rss = out.stdout.split()
    return int(code), float(cpu), float(wall), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="250000,1000000")
    parser.add_argument("--capture", type=Path, default=DEFAULT)
    parser.add_argument("--skip", default="", help="comma-separated: log, export, replay, "
                        "stats, extract, timeline, report")
    args = parser.parse_args()
    sizes = [int(n) for n in args.records.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, dict[int, tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in sizes:
            capture = folder / f"tiled-{size}.pcap"
            tile(args.capture, capture, size)
            db = folder / f"s{size}.db"
            commands = {
                "import": ["import", str(capture), "--db", str(db), "--quiet"],
                "log": ["log", "1", "--db", str(db), "--format", "tsv"],
                "export": ["export", "1", "--db", str(db), "-o", str(folder / f"e{size}.pcapng")],
                "replay": ["replay", "session:1", "--db", str(db)],
                "stats": ["stats", "1", "--db", str(db), "--interval", "1"],
                "extract": ["extract", "1", "--db", str(db), "-o", str(folder / f"x{size}")],
                "timeline": ["timeline", "1", "--db", str(db), "-o",
                             str(folder / f"t{size}.json")],
                "report": ["report", "1", "--db", str(db), "-o", str(folder / f"r{size}.html")],
            }
            for name, command in commands.items():
                if name in skip:
                    continue
                code, cpu, wall, rss = measure(*command)
                if code not in (0, 1):
                    sys.exit(f"{name} of {size} records exited {code}")
                results.setdefault(name, {})[size] = (cpu, wall, rss)
                print(f"{size:>9,} records  {name:<7} cpu {cpu:7.2f} s  wall {wall:7.2f} s  "
                      f"peak RSS {rss / 1024:6.1f} MiB", flush=True)
            capture.unlink()
    small, large = sizes[0], sizes[-1]
    print(f"\npeak memory at {large:,} records / at {small:,} (goal <= 1.25x):")
    for name, by_size in results.items():
        print(f"  {name:<7} {by_size[large][2] / by_size[small][2]:.2f}x")
    if "log" in results:
        print(f"log of {large:,} records takes {results['log'][large][1]:.1f} s wall, the "
              f"import {results['import'][large][1]:.1f} s "
              f"({results['log'][large][1] / results['import'][large][1]:.2f}x)")


if __name__ == "__main__":
    main()
