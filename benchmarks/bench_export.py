"""``usbtrace export`` against editcap, on the same records, in paired runs.

A real capture is tiled to each size (default 100,000 and 400,000 records) and
imported.  At the largest size, ``usbtrace export`` writes the session with
``--linktype`` records (default usbmon, the session's own) in ``--format``'s
container (default pcapng); editcap then copies that same file into the same
container, so both read and write the same records.  The two run in turn
(``--pairs``, at least 3), each in a child process whose CPU seconds (user +
system), wall time and peak RSS the kernel reports.  The CPU ratio
usbtrace/editcap is taken within each pair; the median is shown with the
min-max.  Peak RSS of the export at each size shows whether memory stays flat
as the session grows.

Run:  PYTHONPATH=. python benchmarks/bench_export.py [--records 100000,400000] [--pairs 3]
      [--linktype usbmon|usbpcap] [--format pcapng|pcap]

``--keep DIR`` keeps the imported databases in DIR and reuses them on the next run
(tiling and importing a million records costs more than the whole comparison).

The children run as an installed usbtrace does, from compiled bytecode: Python caches
it (in the temporary folder) even where PYTHONDONTWRITEBYTECODE is set, so no export
run but a first, unmeasured one pays for compiling usbtrace's modules.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.tiling import tile  # noqa: E402
from usbtrace.capture.export import select_for  # noqa: E402

DEFAULT = HERE.parent.parent / "shared" / "captures" / "ajbanjara__usb_memory_stick.pcap"
ENV = dict(os.environ, PYTHONPATH=str(HERE.parent))

# runs a command; prints its exit code, CPU seconds, wall seconds and peak RSS (KiB)
MEASURE = """
import os, subprocess, sys, time
t0 = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, use = os.wait4(child.pid, 0)
wall = time.perf_counter() - t0
print(os.waitstatus_to_exitcode(status), use.ru_utime + use.ru_stime, wall, use.ru_maxrss)
"""


# the floor: export's own query (what this export reads from SQLite, prepared for
# packing: for usbmon in classic pcap, one column fewer, see classic_sql), its rows
# fetched and dropped
FLOOR = """
import sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
for row in conn.execute(f"SELECT {sys.argv[2]} FROM urbs u WHERE u.session_id = 1 "
                        "ORDER BY u.seq"):
    pass
"""


def measure(*command: str) -> tuple[float, float, int]:
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], env=ENV,
                         capture_output=True, text=True, check=True)
    code, cpu, wall, rss = out.stdout.split()
    if int(code) != 0:
        sys.exit(f"{' '.join(command[:4])}... exited {code}")
    return float(cpu), float(wall), int(rss)


def usbtrace(*args: str) -> list[str]:
    return [sys.executable, "-m", "usbtrace", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="100000,400000")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--capture", type=Path, default=DEFAULT)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the imported databases here and reuse them")
    parser.add_argument("--linktype", choices=("usbmon", "usbpcap"), default="usbmon",
                        help="the records export writes (default: usbmon)")
    parser.add_argument("--format", dest="container", choices=("pcapng", "pcap"),
                        default="pcapng", help="the container (default: pcapng)")
    args = parser.parse_args()
    if args.pairs < 3:
        parser.error("--pairs: at least 3")
    editcap = shutil.which("editcap")
    if editcap is None:
        sys.exit("editcap is not installed (Wireshark's command-line tools)")
    sizes = [int(n) for n in args.records.split(",")]
    rss_by_size: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        ENV["PYTHONPYCACHEPREFIX"] = str(folder / "bytecode")
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
        for size in sizes:
            db = (args.keep or folder) / f"{args.capture.stem}-{size}.db"
            if not db.exists():
                capture = folder / f"tiled-{size}.pcap"
                tile(args.capture, capture, size)
                partial = db.with_suffix(".part")
                partial.unlink(missing_ok=True)
                subprocess.run(usbtrace("import", str(capture), "--db", str(partial),
                                        "--quiet", "--no-files"), env=ENV, check=True,
                               stdout=subprocess.DEVNULL, cwd=folder)
                partial.rename(db)
                capture.unlink()
            out = folder / f"e{size}.{args.container}"
            export = usbtrace("export", "1", "--db", str(db), "-o", str(out), "--force",
                              "--linktype", args.linktype, "--format", args.container)
            if size == sizes[0]:
                measure(*export)  # compiles the bytecode, unmeasured
            _, _, rss = measure(*export)
            rss_by_size[size] = rss
            records = int(subprocess.run(["capinfos", "-M", "-c", "-T", "-r", str(out)],
                                         capture_output=True, text=True
                                         ).stdout.split()[-1]) \
                if shutil.which("capinfos") else None
            print(f"{size:>9,} records tiled: export peak RSS {rss / 1024:6.1f} MiB"
                  + (f" ({records:,} records written)" if records else ""), flush=True)
            if size != sizes[-1]:
                continue
            copy = folder / f"copy.{args.container}"
            print(f"  {args.linktype} records in {args.container}; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            pairs = []
            for n in range(args.pairs):
                ours = measure(*export)
                theirs = measure(editcap, "-F", args.container, str(out), str(copy))
                pairs.append((ours, theirs))
                print(f"  pair {n + 1}: usbtrace export cpu {ours[0]:6.2f} s wall {ours[1]:6.2f}"
                      f" s | editcap cpu {theirs[0]:6.2f} s wall {theirs[1]:6.2f} s | "
                      f"cpu ratio {ours[0] / theirs[0]:5.2f}", flush=True)
            print(f"  load average after the pairs {os.getloadavg()[0]:.1f}")
            columns, _ = select_for(args.linktype, args.container, "u", True)
            floor = measure(sys.executable, "-c", FLOOR, str(db), columns)
            print(f"  floor: the same rows fetched from SQLite and nothing else, in Python: "
                  f"cpu {floor[0]:6.2f} s wall {floor[1]:6.2f} s")
            cpu_ratios = [o[0] / t[0] for o, t in pairs]
            wall_ratios = [o[1] / t[1] for o, t in pairs]
            print(f"  usbtrace export / editcap: CPU {statistics.median(cpu_ratios):.2f}x "
                  f"({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}), wall "
                  f"{statistics.median(wall_ratios):.2f}x ({min(wall_ratios):.2f}-"
                  f"{max(wall_ratios):.2f}) (target: CPU at most 3x)")
            print(f"  usbtrace export: CPU {statistics.median(o[0] for o, _ in pairs):.2f} s, "
                  f"editcap {statistics.median(t[0] for _, t in pairs):.2f} s (medians)")
    small, large = sizes[0], sizes[-1]
    print(f"export peak RSS at {large:,} / at {small:,} records: "
          f"{rss_by_size[large] / rss_by_size[small]:.2f}x (flat: near 1)")


if __name__ == "__main__":
    main()
