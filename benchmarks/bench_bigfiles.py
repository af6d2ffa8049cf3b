"""Big copies through the stack: bytes the log attributes to each file, time and peak memory.

The files workload copies files of the given sizes (random bytes) to a simulated stick;
pyfatfs writes each file's data before its FAT and directory entry, so these rows wait
past the attribution window for their owner.  Each file is rebuilt from the log and
compared with what was written.

Run:  python benchmarks/bench_bigfiles.py [--mb 1 30 200] [--fs fat16 fat32] [--size 512M]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fileactivity import rebuild  # noqa: E402
from usbtrace.recording import RecordOptions, record  # noqa: E402


def run(fs: str, size: str, sizes: list[int], folder: Path) -> None:
    source = folder / f"src-{fs}"
    source.mkdir()
    names = []
    for mb in sizes:
        name = f"f{mb:04d}mb.bin"
        (source / name).write_bytes(random.Random(mb).randbytes(mb << 20))
        names.append(name)
    db = folder / f"{fs}.db"
    start = time.perf_counter()
    summary = record(RecordOptions(db=str(db), size=size, workload="files", fs=fs,
                                   copy=tuple(str(source / n) for n in names)))
    elapsed = time.perf_counter() - start
    # the stick's image, the source files and pyfatfs's read-back are in this process too
    recorded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    conn = sqlite3.connect(db)
    written = rebuild(conn, 1, "write")
    unallocated = conn.execute("SELECT coalesce(sum(length), 0) FROM file_activity WHERE "
                               "operation = 'write' AND kind = 'unallocated'").fetchone()[0]
    for op in summary.workload.operations:
        if op.operation != "write" or not op.size:
            continue
        data = bytes(written.get(op.path, b""))
        same = hashlib.sha256(data).hexdigest() == op.sha256
        print(f"{fs} {size} {op.path}: {len(data)} of {op.size} bytes attributed, "
              f"{'identical' if same else 'DIFFERENT'}")
    print(f"{fs} {size}: unallocated writes {unallocated} bytes, record {elapsed:.1f} s, "
          f"peak RSS {recorded_rss} MiB after recording (simulated stick and sources "
          "included)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, nargs="+", default=[1, 30, 200])
    parser.add_argument("--fs", nargs="+", default=["fat16", "fat32"])
    parser.add_argument("--size", default="512M")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for fs in args.fs:
            run(fs, args.size, args.mb, Path(tmp))


if __name__ == "__main__":
    main()
