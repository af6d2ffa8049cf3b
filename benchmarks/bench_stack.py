"""64 KiB reads through the whole stack, with and without the tracer, against the disk.

Each run reads the same amount through CreateFile/ReadFile on the simulated
stick.  Stages, to show what limits the traced rate:

  bare      no tracer in the stack
  tracer    tracer at both positions, each record dropped as it is made: the
            filter's own cost
  capture   tracer at both positions, records queued and shipped to the storing
            process, which drops them: all the I/O path's process does
  decode    ... the storing process pairs and decodes, but stores nothing
  stored    ... and inserts every row and payload into SQLite (the real thing,
            without file attribution)
  files     ... and attributes blocks to files too (what ``usbtrace record`` does)
  sqlite    no stack at all: the same payload bytes inserted as 64 KiB blobs, with
            the pragmas the application uses (64 KiB pages, WAL)
  disk      no SQLite: the same bytes written to a file 64 KiB at a time, then fsync

The stages that open a database close it in the timed run, as ``usbtrace record``
does: the WAL's last checkpoint is part of the cost.  ``--journal rollback`` runs the
stages with SQLite's rollback journal instead of WAL, to show what a layout that
writes each payload page once would reach; it is not what the application does (with
a rollback journal, a reader holds up the writer: see README, "Architecture").

Each stage reports wall-clock MB/s, the CPU seconds of this process (the stack and
the tracer) and of its children (the storing process), and the rate the two would
reach with a core each (payload over the busier one's CPU seconds): on a shared
machine wall rates follow the load, CPU ones much less.  ``written/payload`` is what
the two processes sent towards the disk (``write_bytes`` of ``/proc/self/io``, which
counts reaped children) per payload byte: 1.0 is each byte written once.  The stages run in rounds
(``--rounds``, each stage once a round, in turn); the median is shown with the
min-max across rounds, and ratios are taken within a round.  ``stored`` against
``disk`` is what the design costs over the disk's own speed; ``file/payload`` is
the database file's size per payload byte (each payload is written once).

``--instructions`` compares the tracer alone with the bare stack in instructions
(valgrind's callgrind), which repeat from run to run where CPU seconds on the 2-core
build machine move by a tenth: each stage runs once in a child process, and once more
with no read, whose count (building and starting the machine) is taken off.  It leaves
out how many instructions run a cycle, and the kernel's work; and it counts glibc's
``rep movsb`` copies once a byte, so the ratio is also given with memcpy set apart.
Callgrind runs some fifty times slower: ``--mib 64`` takes about two minutes.

Run:  PYTHONPATH=. python benchmarks/bench_stack.py [--mib 256] [--rounds 3]
          [--protocol bot|uas|uas-streams] [--journal wal|rollback] [--samples FILE]
      PYTHONPATH=. python benchmarks/bench_stack.py --instructions --mib 64
      python benchmarks/pair_samples.py BEFORE.jsonl AFTER.jsonl   # ratios, run by run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's usbtrace, and benchmarks.callgrind
import usbtrace.store.database as database_module  # noqa: E402
from benchmarks.callgrind import instructions  # noqa: E402
from usbtrace.devices.image import DiskImage  # noqa: E402
from usbtrace.devices.simulated import SimulatedStick  # noqa: E402
from usbtrace.machine import DISK_PATH, Machine  # noqa: E402
from usbtrace.records import Record, RecordSink  # noqa: E402
from usbtrace.store.database import PAGE_SIZE, Database  # noqa: E402
from usbtrace.store.writer import Recorder, SessionWriter  # noqa: E402

CHUNK = 64 * 1024
STAGES = ("bare", "tracer", "capture", "decode", "stored", "files", "sqlite", "disk")
# the stick's transport: Bulk-Only (usbstor), UAS without or with streams (UASPStor)
PROTOCOLS: dict[str, tuple[str, bool]] = {"bot": ("bot", False), "uas": ("uas", False),
                                          "uas-streams": ("uas", True)}
JOURNAL = "WAL"  # the journal mode of every stage's database (--journal)


def use_rollback_journal() -> None:
    """``--journal rollback``: the writers' connections keep SQLite's rollback journal
    (TRUNCATE, so that a commit does not delete and create the file)."""
    global JOURNAL
    JOURNAL = "TRUNCATE"
    pragmas = database_module._sqlite_pragmas

    def rollback(dbapi_connection: Any, record: Any) -> None:
        pragmas(dbapi_connection, record)
        dbapi_connection.execute("PRAGMA journal_mode=TRUNCATE")

    database_module._sqlite_pragmas = rollback  # type: ignore[assignment]


class Sample:
    """One run of one stage: wall seconds, CPU seconds here and in children, bytes."""

    def __init__(self, wall: float, cpu: float, child_cpu: float, payload: int,
                 written: int = 0, io: int = 0) -> None:
        self.wall, self.cpu, self.child_cpu = wall, cpu, child_cpu
        self.payload, self.written, self.io = payload, written, io

    @property
    def rate(self) -> float:
        return self.payload / self.wall / 1e6


def write_bytes() -> int:
    """Bytes this process and its reaped children sent towards the disk (0 where there is
    no ``/proc/self/io``)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured(body: Callable[[], int]) -> Sample:
    """Run ``body`` (it returns the bytes it put in files) and time it."""
    io0 = write_bytes()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    written = body()
    wall = time.perf_counter() - t0
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = self1.ru_utime - self0.ru_utime + self1.ru_stime - self0.ru_stime
    child = kids1.ru_utime - kids0.ru_utime + kids1.ru_stime - kids0.ru_stime
    return Sample(wall, cpu, child, 0, written, write_bytes() - io0)


class Drop(RecordSink):
    """The tracer stage's sink: the record is made, and goes."""

    def take(self, record: Record) -> None:
        pass


def stack(mib: int, stage: str, folder: Path, protocol: str = "bot") -> Sample:
    transport, streams = PROTOCOLS[protocol]
    stick = SimulatedStick(DiskImage.in_memory(64 << 20), protocol=transport, streams=streams)
    recorder: Recorder | None = None
    sink: RecordSink | None = None
    path = folder / f"{stage}.db"
    if stage == "tracer":
        sink = Drop()
    elif stage != "bare":
        database = Database(path)
        sid = database.new_session("simulated", "bench", "now", "virtual")
        writer = SessionWriter(database, sid, attribute_files=stage == "files")
        if stage == "capture":  # the storing process takes the records and drops them
            # (the storing process hands each message to feed_all; feed for the thread)
            writer.feed = lambda event: None  # type: ignore[method-assign]
            writer.feed_all = lambda events, stop=None: None  # type: ignore[method-assign]
        elif stage == "decode":  # decode, then throw the rows away
            def discard(w: SessionWriter = writer) -> None:
                w._irps, w._urbs, w._cmds = [], [], []
            writer.flush = discard  # type: ignore[method-assign]
        recorder = Recorder(writer)
    machine = Machine(stick, sink=recorder or sink, positions=() if stage == "bare" else
                      ("lower", "upper"))
    machine.start()
    win32 = machine.win32
    handle = win32.CreateFile(DISK_PATH)
    buffer = bytearray(CHUNK)
    count = (mib << 20) // CHUNK

    def body() -> int:
        for i in range(count):
            win32.ReadFile(handle, buffer, (i * CHUNK) % stick.image.size)
        machine.stop()
        if recorder is not None:
            recorder.close()
            database.close()  # as ``record`` does: the WAL's last checkpoint
        return path.stat().st_size if path.exists() else 0

    sample = measured(body)
    sample.payload = count * CHUNK
    path.unlink(missing_ok=True)
    return sample


def sqlite_floor(mib: int, folder: Path) -> Sample:
    """The payloads alone, as the application's pragmas store them."""
    path = folder / "floor.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute(f"PRAGMA journal_mode={JOURNAL}")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (seq INTEGER, data BLOB)")
    blob = os.urandom(CHUNK)
    count = (mib << 20) // CHUNK

    def body() -> int:
        for start in range(0, count, 256):  # 16 MiB a commit, as the writer's batches
            with conn:
                conn.executemany("INSERT INTO t VALUES (?, ?)",
                                 [(i, blob) for i in range(start, min(start + 256, count))])
        conn.close()
        return path.stat().st_size

    sample = measured(body)
    sample.payload = count * CHUNK
    path.unlink()
    return sample


def disk(mib: int, folder: Path) -> Sample:
    """The disk's own sequential write speed: the same bytes, 64 KiB a write, fsync."""
    path = folder / "disk.bin"
    blob = os.urandom(CHUNK)
    count = (mib << 20) // CHUNK

    def body() -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(count):
                os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        return count * CHUNK

    sample = measured(body)
    sample.payload = count * CHUNK
    path.unlink()
    return sample


def run_stage(stage: str, mib: int, folder: Path, protocol: str) -> Sample:
    # the files of the stage before go to the disk first, untimed: otherwise the kernel's
    # writeback of them is charged to whichever stage writes next
    os.sync()
    if stage == "sqlite":
        return sqlite_floor(mib, folder)
    if stage == "disk":
        return disk(mib, folder)
    return stack(mib, stage, folder, protocol)


def stage_instructions(stage: str, mib: int, protocol: str) -> tuple[int, int]:
    """The instructions a child process executes to run ``stage`` over ``mib`` MiB, set-up
    included (``--instructions`` takes it off by counting a run of no reads too), and of
    those glibc's copies (see ``tracer_instructions``)."""
    child = [sys.executable, str(Path(__file__).resolve()), "--count-stage", stage,
             "--mib", str(mib), "--protocol", protocol]
    return instructions(child, dict(os.environ, PYTHONPATH=str(ROOT)), copies=True)


def tracer_instructions(mib: int, protocol: str) -> None:
    """The tracer alone against the bare stack in instructions, which repeat from run to
    run where this machine's CPU seconds move by a tenth or more: each stage's count
    over ``mib`` MiB less its count with no read (building and starting the machine).

    Copies are also set apart: glibc copies 64 KiB with ``rep movsb``, one instruction to
    the CPU, which callgrind counts once a byte.  So the payload's copy into the
    caller's buffer (the bare stack) and the tracer's copy of it into its record weigh
    65,536 instructions each, for what the CPU does in a few thousand cycles."""
    reads, copies = {}, {}
    for stage in ("bare", "tracer"):
        total, copied = stage_instructions(stage, mib, protocol)
        total0, copied0 = stage_instructions(stage, 0, protocol)
        reads[stage], copies[stage] = total - total0, copied - copied0
    count = (mib << 20) // CHUNK
    bare, tracer = reads["bare"], reads["tracer"]
    rest = {stage: reads[stage] - copies[stage] for stage in reads}
    print(f"64 KiB reads through the stack ({protocol}), {mib} MiB ({count} reads), "
          f"instructions (callgrind) of the reads alone, and of those memcpy's:\n"
          f"  bare   {bare / 1e6:,.1f}M, {bare / count:,.0f} a read, memcpy "
          f"{copies['bare'] / count:,.0f}\n"
          f"  tracer {tracer / 1e6:,.1f}M, {tracer / count:,.0f} a read, memcpy "
          f"{copies['tracer'] / count:,.0f}\n"
          f"  the tracer alone (tracer/bare): {tracer / bare:.3f}x counted, "
          f"{rest['tracer'] / rest['bare']:.3f}x with memcpy set apart "
          "(target: at most 1.3x)")


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="MiB to read in each run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each stage, in turn")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="bot",
                        help="the stick's transport (default: Bulk-Only)")
    parser.add_argument("--journal", choices=("wal", "rollback"), default="wal",
                        help="SQLite's journal: WAL, as the application (default), or the "
                        "rollback journal, for comparison")
    parser.add_argument("--samples", metavar="FILE", type=Path,
                        help="also write every run's figures, round by round, as JSON "
                        "lines (for ratios paired with another tree's runs)")
    parser.add_argument("--instructions", action="store_true",
                        help="the tracer alone against the bare stack, in instructions "
                        "(valgrind's callgrind) instead of seconds; try --mib 64")
    parser.add_argument("--count-stage", choices=("bare", "tracer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_stage:  # a child of --instructions, under callgrind: the stage, once
        with tempfile.TemporaryDirectory() as tmp:
            stack(args.mib, args.count_stage, Path(tmp), args.protocol)
        return
    if args.instructions:
        if shutil.which("valgrind") is None:
            parser.error("valgrind is not installed: --instructions counts with its "
                         "callgrind tool")
        tracer_instructions(args.mib, args.protocol)
        return
    if args.journal == "rollback":
        use_rollback_journal()
    stages = [s for s in args.stages.split(",") if s]
    for stage in stages:
        if stage not in STAGES:
            parser.error(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    results: dict[str, list[Sample]] = {s: [] for s in stages}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        for _ in range(args.rounds):
            for stage in stages:
                results[stage].append(run_stage(stage, args.mib, Path(tmp), args.protocol))
    if args.samples is not None:
        with args.samples.open("a") as out:
            for stage, samples in results.items():
                for number, sample in enumerate(samples):
                    out.write(json.dumps({"stage": stage, "round": number,
                                          "load": os.getloadavg()[0], **vars(sample)}) + "\n")
    print(f"64 KiB reads through the stack ({args.protocol}, {args.journal}), "
          f"{args.mib} MiB a run, "
          f"{args.rounds} rounds: "
          f"median (min-max); load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, "
          f"on {os.cpu_count()} CPUs")
    print(f"  {'stage':8} {'wall MB/s':>20} {'CPU s: this + storing':>23} "
          f"{'MB/s, a core each':>18} {'file/payload':>12} {'written/payload':>15}")
    for stage, samples in results.items():
        rates = [s.rate for s in samples]
        cpu_self = statistics.median([s.cpu for s in samples])
        cpu_child = statistics.median([s.child_cpu for s in samples])
        # what the two processes reach with a core each: the busier one sets the pace
        paced = [s.payload / max(s.cpu, s.child_cpu) / 1e6 for s in samples]
        written = statistics.median([s.written / s.payload for s in samples])
        io = statistics.median([s.io / s.payload for s in samples])
        print(f"  {stage:8} {spread(rates, '5.0f'):>20} {cpu_self:10.2f} + {cpu_child:5.2f}  "
              f"{spread(paced, '5.0f'):>22} {written:8.3f} {io:12.2f}")
    ratios = []

    def per_round(a: str, b: str, key: Callable[[Sample], float]) -> str:
        values = [key(x) / key(y) for x, y in zip(results[a], results[b])]
        ratios.append(values)
        return spread(values, ".2f")

    wall = (lambda s: s.wall)  # noqa: E731
    cpu = (lambda s: s.cpu)  # noqa: E731
    if "bare" in results and "tracer" in results:
        print(f"  the tracer alone (tracer/bare): wall {per_round('tracer', 'bare', wall)}x, "
              f"CPU {per_round('tracer', 'bare', cpu)}x (target: at most 1.3x)")
    if "bare" in results and "capture" in results:
        print(f"  the I/O path's process when logging (capture/bare): wall "
              f"{per_round('capture', 'bare', wall)}x, CPU {per_round('capture', 'bare', cpu)}x")
    if "stored" in results and "disk" in results:
        print(f"  stored against the disk: the disk takes the same bytes at "
              f"{spread([s.rate for s in results['disk']], '.0f')} MB/s; stored takes "
              f"{per_round('stored', 'disk', wall)} times its wall time")
    if "stored" in results:
        print(f"  stored: {statistics.median([s.rate for s in results['stored']]):.0f} MB/s "
              "(target: at least 450 MB/s)")


if __name__ == "__main__":
    main()
