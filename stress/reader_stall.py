"""A long reader during a live recording: does it hold up the I/O path?

The recording reads 64 KiB blocks through the traced stack into a database (the
storing process, lossless tracer), and after ``--after`` reads a separate process
opens the database, starts a read transaction (as a long ``usbtrace query`` or any
SQLite client's long SELECT does) and holds it for ``--hold`` seconds.  Printed: the
whole run's time, the longest single ReadFile, how many took over 0.1 s, and whether
every read's payload is in the database afterwards.

With the application's WAL the reader keeps its snapshot and the writer goes on: no
ReadFile waits for it (the longest, 0.04 to 0.07 s on the build machine, wait as long
with ``--hold 0``; 0.17 to 0.34 s while the writer checkpointed inside its commits).
``--journal rollback`` runs the writer with SQLite's rollback journal (which writes
each payload page once) and a busy timeout long enough never to fail: the writer's
commit then waits for the reader, the lossless tracer's queue fills, and the I/O path
stops for as long as the reader reads.  (With the application's busy timeout of 10 s,
a reader longer than that makes the commit fail, and the session with it.)  Windows'
loggers never stop the I/O path: ETW drops events when its buffers are full and counts
them (EventsLost; MS docs, "Windows Performance Recorder: Sessions"), and USBPcap drops
packets when its capture buffer is full (desowin/usbpcap, todo.md, "Notify user about
packet drops").

Run:  python stress/reader_stall.py [--reads 4096] [--after 512] [--hold 3]
          [--journal wal|rollback]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import usbtrace.store.database as database_module  # noqa: E402
from usbtrace.devices.image import DiskImage  # noqa: E402
from usbtrace.devices.simulated import SimulatedStick  # noqa: E402
from usbtrace.machine import DISK_PATH, Machine  # noqa: E402
from usbtrace.store.database import Database  # noqa: E402
from usbtrace.store.writer import Recorder, SessionWriter  # noqa: E402

CHUNK = 64 * 1024
READER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM urbs").fetchone()  # the read transaction starts here
print("reading", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def rollback_without_limit() -> None:
    """The writers' connections: a rollback journal, and a busy timeout that never ends."""
    pragmas = database_module._sqlite_pragmas

    def rollback(dbapi_connection: Any, record: Any) -> None:
        pragmas(dbapi_connection, record)
        dbapi_connection.execute("PRAGMA journal_mode=TRUNCATE")
        dbapi_connection.execute("PRAGMA busy_timeout=3600000")

    database_module._sqlite_pragmas = rollback  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=4096, help="64 KiB reads to record")
    parser.add_argument("--after", type=int, default=512, help="reads before the reader")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds the reader reads")
    parser.add_argument("--journal", choices=("wal", "rollback"), default="wal")
    args = parser.parse_args()
    if not 0 <= args.after < args.reads:
        parser.error("--after must be below --reads")
    if args.journal == "rollback":
        rollback_without_limit()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stall.db"
        database = Database(path)
        sid = database.new_session("simulated", "reader_stall", "now", "virtual")
        recorder = Recorder(SessionWriter(database, sid, attribute_files=False))
        stick = SimulatedStick(DiskImage.in_memory(64 << 20))
        machine = Machine(stick, sink=recorder, positions=("lower", "upper")).start()
        win32 = machine.win32
        handle = win32.CreateFile(DISK_PATH)
        buffer = bytearray(CHUNK)
        reader: subprocess.Popen[str] | None = None
        latencies = []
        start = time.perf_counter()
        for i in range(args.reads):
            if i == args.after:
                reader = subprocess.Popen([sys.executable, "-c", READER, str(path),
                                           str(args.hold)], stdout=subprocess.PIPE, text=True)
                assert reader.stdout is not None
                reader.stdout.readline()  # it holds its read transaction from here
            t0 = time.perf_counter()
            win32.ReadFile(handle, buffer, (i * CHUNK) % stick.image.size)
            latencies.append(time.perf_counter() - t0)
        machine.stop()
        recorder.close()
        database.close()
        whole = time.perf_counter() - start
        if reader is not None:
            reader.wait()
        conn = sqlite3.connect(path)
        stored = conn.execute("SELECT count(*) FROM urbs WHERE session_id = ? AND "
                              "captured_length = ?", (sid, CHUNK)).fetchone()[0]
        conn.close()
    slow = sum(t > 0.1 for t in latencies)
    print(f"{args.journal}: {args.reads} reads of 64 KiB in {whole:.2f} s, a reader holding "
          f"a read transaction for {args.hold:.1f} s after read {args.after}")
    print(f"  longest ReadFile {max(latencies):.3f} s; {slow} took over 0.1 s; the tracer "
          f"waited for room {recorder.waits} times; {stored} of {args.reads} payloads stored")
    sys.exit(0 if stored == args.reads else 1)


if __name__ == "__main__":
    main()
