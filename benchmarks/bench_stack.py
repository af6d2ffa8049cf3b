"""64 KiB reads through the whole stack, with and without the tracer.

Each run reads the same amount through CreateFile/ReadFile on the simulated
stick; all rates are wall-clock MB/s from one run, and the ratios are what to
compare across machines.  Stages, to show what limits the traced rate:

  bare      no tracer in the stack
  capture   tracer at both positions, records queued, the writer discards them
  decode    ... the writer thread pairs and decodes, but stores nothing
  stored    ... and inserts every row and payload into SQLite (the real thing)
  sqlite    no stack at all: the same payload bytes inserted as 64 KiB blobs (the floor)

Run:  python benchmarks/bench_stack.py [--mib 256] [--protocol bot|uas|uas-streams]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.store.database import Database
from usbtrace.store.writer import Recorder, SessionWriter

CHUNK = 64 * 1024
# the stick's transport: Bulk-Only (usbstor), UAS without or with streams (UASPStor)
PROTOCOLS: dict[str, tuple[str, bool]] = {"bot": ("bot", False), "uas": ("uas", False),
                                          "uas-streams": ("uas", True)}


def run(mib: int, stage: str, folder: Path, protocol: str = "bot") -> float:
    transport, streams = PROTOCOLS[protocol]
    stick = SimulatedStick(DiskImage.in_memory(64 << 20), protocol=transport, streams=streams)
    recorder = None
    if stage != "bare":
        database = Database(folder / f"{stage}.db")
        sid = database.new_session("simulated", "bench", "now", "virtual")
        writer = SessionWriter(database, sid)
        if stage == "capture":
            recorder = Recorder(writer, consume=lambda event: None)
        else:
            if stage == "decode":  # decode, then throw the rows away
                def discard(w: SessionWriter = writer) -> None:
                    w._irps, w._urbs, w._cmds = [], [], []
                writer.flush = discard  # type: ignore[method-assign]
            recorder = Recorder(writer)
    machine = Machine(stick, sink=recorder, positions=() if stage == "bare" else
                      ("lower", "upper"))
    machine.start()
    win32 = machine.win32
    handle = win32.CreateFile(DISK_PATH)
    buffer = bytearray(CHUNK)
    count = (mib << 20) // CHUNK
    t0 = time.perf_counter()
    for i in range(count):
        win32.ReadFile(handle, buffer, (i * CHUNK) % stick.image.size)
    machine.stop()
    if recorder is not None:
        recorder.close()
    return count * CHUNK / (time.perf_counter() - t0) / 1e6


def sqlite_floor(mib: int, folder: Path) -> float:
    path = folder / "floor.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size=65536")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (seq INTEGER, data BLOB)")
    blob = os.urandom(CHUNK)
    count = (mib << 20) // CHUNK
    t0 = time.perf_counter()
    for start in range(0, count, 64):
        with conn:
            conn.executemany("INSERT INTO t VALUES (?, ?)",
                             [(i, blob) for i in range(start, min(start + 64, count))])
    conn.close()
    return count * CHUNK / (time.perf_counter() - t0) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="MiB to read in each run")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="bot",
                        help="the stick's transport (default: Bulk-Only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rates = {stage: run(args.mib, stage, Path(tmp), args.protocol)
                 for stage in ("bare", "capture", "decode", "stored")}
        rates["sqlite"] = sqlite_floor(args.mib, Path(tmp))
    bare = rates["bare"]
    print(f"64 KiB reads through the stack ({args.protocol}), {args.mib} MiB a run (MB/s, "
          "and bare/stage)")
    for stage, rate in rates.items():
        print(f"  {stage:8} {rate:8.1f} MB/s   {bare / rate:5.2f}x")
    print(f"  tracer cost with storage: {(1 - rates['stored'] / bare) * 100:.0f}% "
          f"(target: 450 MB/s, at most 30%)")


if __name__ == "__main__":
    main()
