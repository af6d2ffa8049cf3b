"""Replay throughput in URBs/s, and replay's peak memory against session size.

Throughput (the default): a session of many small reads and writes is recorded
on the simulated stick, then replayed both ways, in turn, ``--rounds`` times.
Device mode runs the whole stack (disk, usbstor, tracer, bus driver) against the
recorded device; host mode sends the recorded host's transfers straight to a
simulated stick.  The survey decodes the session from SQLite once and keeps its
commands on disk; the replays read them back.  The rates of each mode leave the
survey out; the end-to-end rates, what ``usbtrace replay`` costs, put it in.  Rates are
given by wall time and by CPU time (the machine may be shared: CPU is the steadier
figure).  Targets: device 100,000 URBs/s, host 200,000 URBs/s.

Memory (``--memory``): a short session of one-block reads and writes is
recorded, then tiled in SQL (its ``urbs`` rows copied with later ``seq`` and
timestamps) into a session of ``--small`` and one of ``--large`` records.  A
record is a submission or a completion, as in a capture file (a usbmon or USBPcap
packet) and in ``sessions.record_count``: each ``urbs`` row holds two.
``usbtrace replay session:1`` runs on each in a child process, whose peak RSS
the kernel reports (``wait4``).  Replay streams, so the ratio should stay near
1 (acceptance: at most 1.25 for 250,000 vs 1,000,000 records).  The child runs
the same ``usbtrace`` as this script: set PYTHONPATH to measure a checkout.

Instructions (``--instructions``): the same session's survey, device replay and host
replay counted by valgrind's callgrind, which repeat from run to run where this
machine's CPU seconds move by a tenth or more.  Each stage runs once in a child
process: the survey alone, then the survey and one replay; a child that only opens
the database is taken off the first, the survey off the others.  It leaves out the
kernel's work and how many instructions run a cycle.  Callgrind runs some fifty
times slower: ``--commands 2000`` takes about a minute.

Run:  PYTHONPATH=. python benchmarks/bench_replay.py [--commands 20000] [--rounds 3]
      PYTHONPATH=. python benchmarks/bench_replay.py --memory [--small N --large N]
      PYTHONPATH=. python benchmarks/bench_replay.py --instructions [--commands 2000]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's usbtrace, and benchmarks.callgrind
from benchmarks.callgrind import instructions  # noqa: E402
from usbtrace.devices.image import DiskImage  # noqa: E402
from usbtrace.devices.simulated import SimulatedStick  # noqa: E402
from usbtrace.machine import DISK_PATH, Machine  # noqa: E402
from usbtrace.replay.device import replay_device  # noqa: E402
from usbtrace.replay.host import replay_host  # noqa: E402
from usbtrace.replay.report import Report  # noqa: E402
from usbtrace.replay.run import load, target_image  # noqa: E402
from usbtrace.store.database import Database  # noqa: E402
from usbtrace.store.writer import Recorder, SessionWriter  # noqa: E402


def make_session(db: Path, commands: int, size: int = 4096) -> None:
    database = Database(db)
    sid = database.new_session("simulated", "bench", "now", "virtual")
    recorder = Recorder(SessionWriter(database, sid, attribute_files=False))
    machine = Machine(SimulatedStick(DiskImage.in_memory(16 << 20)), sink=recorder).start()
    handle = machine.win32.CreateFile(DISK_PATH)
    rng = random.Random(1)
    block = bytearray(size)
    for i in range(commands):
        offset = rng.randrange(0, (16 << 20) // size) * size
        if i % 4 == 0:
            machine.win32.WriteFile(handle, rng.randbytes(size), offset)
        else:
            machine.win32.ReadFile(handle, block, offset)
    machine.stop()
    recorder.close()
    database.close()


def tile(db: Path, rows: int) -> None:
    """Grow session 1's ``urbs`` to ``rows`` rows by copying them after themselves."""
    conn = sqlite3.connect(db)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(urbs)")]
    shifted = {"seq": "seq + :seq", "submitted_at": "submitted_at + :ts",
               "completed_at": "completed_at + :ts"}
    select = ", ".join(shifted.get(c, c) for c in columns)
    while True:
        count, last_seq, last_ts = conn.execute(
            "SELECT count(*), max(seq), max(coalesce(completed_at, submitted_at)) FROM urbs "
            "WHERE session_id = 1").fetchone()
        if count >= rows:
            break
        conn.execute(f"INSERT INTO urbs ({', '.join(columns)}) SELECT {select} FROM urbs "
                     "WHERE session_id = 1 ORDER BY seq LIMIT :n",
                     {"seq": last_seq, "ts": last_ts + 1.0, "n": rows - count})
        conn.commit()
    conn.execute("UPDATE sessions SET record_count = :n WHERE id = 1", {"n": 2 * rows})
    conn.commit()
    conn.close()


def peak_rss(args: list[str], folder: str) -> tuple[int, float, int]:
    """Run ``python -m usbtrace ARGS``; its peak RSS in KiB, seconds and exit code."""
    import usbtrace

    env = dict(os.environ, PYTHONPATH=str(Path(usbtrace.__file__).resolve().parent.parent))
    t0 = time.perf_counter()
    # from a folder of its own: ``-m`` puts the working folder first on sys.path
    child = subprocess.Popen([sys.executable, "-m", "usbtrace", *args], env=env, cwd=folder,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - t0
    if child.returncode not in (0, 1):
        assert child.stderr is not None
        raise SystemExit(f"replay failed: {child.stderr.read().decode().strip()}")
    return usage.ru_maxrss, elapsed, child.returncode


def memory(small: int, large: int, mode: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed.db"
        make_session(seed, 2000, size=512)
        results = []
        for records in (small, large):
            db = Path(tmp) / f"s{records}.db"
            db.write_bytes(seed.read_bytes())
            tile(db, records // 2)
            rss, elapsed, code = peak_rss(["replay", "session:1", "--db", str(db),
                                           "--mode", mode], tmp)
            results.append(rss)
            verdict = "identical" if code == 0 else "divergent"
            print(f"  {records:>9,} records: peak RSS {rss / 1024:7.1f} MiB, "
                  f"{records / elapsed:>9,.0f} records/s ({elapsed:.1f} s, {verdict})")
            db.unlink()
        print(f"  ratio {large:,} / {small:,}: {results[1] / results[0]:.2f} "
              "(acceptance: at most 1.25)")


def throughput(commands: int, rounds: int) -> None:
    """Each mode ``rounds`` times, in turn; CPU seconds (this process) and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        make_session(db, commands)
        c0, t0 = time.process_time(), time.perf_counter()
        recording = load("session:1", str(db))
        loading = time.perf_counter() - t0, time.process_time() - c0
        print(f"replay of {commands} 4 KiB commands, {rounds} rounds: median (min-max); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"  surveying the session in SQLite: {loading[0]:.2f} s wall, "
              f"{loading[1]:.2f} s CPU")
        runs: dict[str, list[tuple[int, float, float]]] = {"device": [], "host": []}
        for _ in range(rounds):
            for mode in runs:
                report = Report("bench", mode, commands=recording.count)
                c0, t0 = time.process_time(), time.perf_counter()
                if mode == "device":
                    replay_device(recording, report)
                else:
                    replay_host(recording, SimulatedStick(target_image(recording, None)),
                                report)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                assert report.identical, report.text()
                runs[mode].append((report.urbs, wall, cpu))
        for mode, samples in runs.items():
            by_wall = [urbs / wall for urbs, wall, _ in samples]
            by_cpu = [urbs / cpu for urbs, _, cpu in samples]
            urbs = samples[0][0]
            print(f"  {mode:6} {statistics.median(by_wall):>9,.0f} URBs/s wall "
                  f"({min(by_wall):,.0f}-{max(by_wall):,.0f}), "
                  f"{statistics.median(by_cpu):>9,.0f} URBs per CPU second "
                  f"({min(by_cpu):,.0f}-{max(by_cpu):,.0f}); {urbs} URBs, "
                  f"{statistics.median(s[2] for s in samples):.2f} s CPU")
        for mode, samples in runs.items():
            urbs = samples[0][0]
            cpu = statistics.median(s[2] for s in samples) + loading[1]
            print(f"  {mode:6} end to end, the survey included: {urbs / cpu:>9,.0f} URBs "
                  f"per CPU second ({cpu:.2f} s CPU)")
        print("  targets: device 100,000 URBs/s, host 200,000 URBs/s")


STAGES = ("open", "survey", "device", "host")  # what a child of --instructions runs


def run_stage(stage: str, db: Path) -> int:
    """``stage`` on session 1 of ``db``, once; the URBs it replayed."""
    if stage == "open":
        Database(db, create=False, readonly=True).close()
        return 0
    recording = load("session:1", str(db))
    if stage == "survey":
        return 0
    report = Report("bench", stage, commands=recording.count)
    if stage == "device":
        replay_device(recording, report)
    else:
        replay_host(recording, SimulatedStick(target_image(recording, None)), report)
    assert report.identical, report.text()
    return report.urbs


def replay_instructions(commands: int) -> None:
    """Each stage's instructions in a child of its own, less the stage under it."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        make_session(db, commands)
        with sqlite3.connect(db) as conn:
            urbs = conn.execute("SELECT count(*) FROM urbs WHERE session_id = 1").fetchone()[0]
        counted = {}
        for stage in STAGES:
            child = [sys.executable, str(Path(__file__).resolve()), "--count-stage", stage,
                     "--db", str(db)]
            counted[stage] = instructions(child, dict(os.environ, PYTHONPATH=str(ROOT)))[0]
    survey = counted["survey"] - counted["open"]
    print(f"replay of {commands} 4 KiB commands ({urbs} URBs), instructions (callgrind), "
          "each stage once:")
    print(f"  survey  {survey / 1e6:9,.1f}M, {survey / urbs:9,.0f} a URB")
    for mode in ("device", "host"):
        spent = counted[mode] - counted["survey"]
        print(f"  {mode:7} {spent / 1e6:9,.1f}M, {spent / urbs:9,.0f} a URB; with the "
              f"survey {(spent + survey) / urbs:,.0f} a URB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3, help="throughput: runs of each mode")
    parser.add_argument("--memory", action="store_true",
                        help="peak RSS of replay for a small and a large session")
    parser.add_argument("--small", type=int, default=250_000, help="records")
    parser.add_argument("--large", type=int, default=1_000_000, help="records")
    parser.add_argument("--mode", choices=["device", "host"], default="device",
                        help="with --memory: the replay mode measured")
    parser.add_argument("--instructions", action="store_true",
                        help="survey, device and host replay in instructions (callgrind)")
    parser.add_argument("--count-stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_stage:  # a child of --instructions, under callgrind: the stage, once
        run_stage(args.count_stage, args.db)
    elif args.instructions:
        replay_instructions(args.commands)
    elif args.memory:
        print(f"peak memory of 'usbtrace replay' ({args.mode} mode) against session size")
        memory(args.small, args.large, args.mode)
    else:
        throughput(args.commands, args.rounds)


if __name__ == "__main__":
    main()
