"""The tracer's sink under a deliberately slow writer: lossless waits, lossy drops and counts."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.records import Event
from usbtrace.store.database import Database
from usbtrace.store.writer import Recorder, SessionWriter


def run(tmp_path: Path, lossy: bool) -> tuple[Recorder, int, sqlite3.Connection]:
    database = Database(tmp_path / "t.db")
    sid = database.new_session("simulated", "test", "now", "virtual")
    writer = SessionWriter(database, sid)

    def slow(event: Event) -> None:
        time.sleep(0.0005)
        writer.feed(event)

    recorder = Recorder(writer, capacity=256 * 1024, lossy=lossy, consume=slow)
    stick = SimulatedStick(DiskImage.in_memory(4 << 20))
    machine = Machine(stick, sink=recorder).start()
    h = machine.win32.CreateFile(DISK_PATH)
    for i in range(20):
        machine.win32.ReadFile(h, bytearray(65536), i * 65536)
    machine.stop()
    seen = recorder.writer.records
    recorder.close()
    return recorder, seen, sqlite3.connect(tmp_path / "t.db")


def test_lossless_keeps_every_record_by_making_the_producer_wait(tmp_path: Path) -> None:
    recorder, _, conn = run(tmp_path, lossy=False)
    assert recorder.dropped == 0 and recorder.waits > 0
    (records, dropped), = conn.execute("SELECT record_count, dropped_count FROM sessions")
    assert dropped == 0
    # every READ's SRB has all three URBs
    (n,), = conn.execute("SELECT count(*) FROM scsi_commands WHERE name='read_10' "
                         "AND status='good'")
    assert n == 20 + 1  # and the partition-table read at disk arrival (partmgr.py)


def test_lossy_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    recorder, _, conn = run(tmp_path, lossy=True)
    assert recorder.waits == 0 and recorder.dropped > 0
    (records, dropped), = conn.execute("SELECT record_count, dropped_count FROM sessions")
    assert dropped == recorder.dropped
    assert records + dropped > 0
