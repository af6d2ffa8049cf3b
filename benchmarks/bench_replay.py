"""Replay throughput in URBs/s, device mode and host mode, from one run.

A session of many small reads and writes is recorded on the simulated stick,
then replayed both ways.  Device mode runs the whole stack (disk, usbstor,
tracer, bus driver) against the recorded device; host mode sends the recorded
host's transfers straight to a simulated stick.  Target: 100,000 URBs/s.

Run:  python benchmarks/bench_replay.py [--commands 20000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.replay.device import replay_device
from usbtrace.replay.host import replay_host
from usbtrace.replay.report import Report
from usbtrace.replay.run import load, target_image
from usbtrace.store.database import Database
from usbtrace.store.writer import Recorder, SessionWriter


def make_session(db: Path, commands: int) -> None:
    database = Database(db)
    sid = database.new_session("simulated", "bench", "now", "virtual")
    recorder = Recorder(SessionWriter(database, sid, attribute_files=False))
    machine = Machine(SimulatedStick(DiskImage.in_memory(16 << 20)), sink=recorder).start()
    handle = machine.win32.CreateFile(DISK_PATH)
    rng = random.Random(1)
    block = bytearray(4096)
    for i in range(commands):
        offset = rng.randrange(0, (16 << 20) // 4096) * 4096
        if i % 4 == 0:
            machine.win32.WriteFile(handle, rng.randbytes(4096), offset)
        else:
            machine.win32.ReadFile(handle, block, offset)
    machine.stop()
    recorder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        make_session(db, args.commands)
        t0 = time.perf_counter()
        recording = load("session:1", str(db))
        loading = time.perf_counter() - t0
        print(f"replay of {args.commands} 4 KiB commands (URBs/s, one run each)")
        print(f"  loading the session from SQLite and decoding it: {loading:.2f} s")
        for mode in ("device", "host"):
            report = Report("bench", mode, commands=len(recording.commands))
            t0 = time.perf_counter()
            if mode == "device":
                replay_device(recording, report)
            else:
                replay_host(recording, SimulatedStick(target_image(recording, None)), report)
            elapsed = time.perf_counter() - t0
            assert report.identical, report.text()
            print(f"  {mode:6}  {report.urbs / elapsed:>10,.0f} URBs/s   ({report.urbs} URBs "
                  f"in {elapsed:.2f} s)")
        print("  target: 100,000 URBs/s")


if __name__ == "__main__":
    main()
