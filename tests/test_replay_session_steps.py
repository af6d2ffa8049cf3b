"""A stored session whose rows are all whole pairs is replayed from its rows as
exchanges, without pairing the events again: the commands are the ones pairing
gives, field for field; a session with a half row goes through pairing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.replay.recording import Recording, load_session
from usbtrace.store.database import Database
from usbtrace.store.writer import Recorder, SessionWriter


def _session(db: Path) -> None:
    database = Database(db)
    sid = database.new_session("simulated", "test", "now", "virtual")
    recorder = Recorder(SessionWriter(database, sid, attribute_files=False))
    machine = Machine(SimulatedStick(DiskImage.in_memory(4 << 20)), sink=recorder).start()
    handle = machine.win32.CreateFile(DISK_PATH)
    for i in range(30):
        if i % 3:
            machine.win32.ReadFile(handle, bytearray(4096), i * 4096)
        else:
            machine.win32.WriteFile(handle, bytes([i]) * 8192, i * 4096)
    machine.stop()
    recorder.close()
    database.close()


def _commands(recording: Recording) -> list[tuple[object, ...]]:
    return [(c.seq, c.cbw_seq, c.csw_seq, c.tag, bytes(c.cdb), c.status, c.data,
             c.data_truncated, c.residue, c.expected_length) for c in recording.commands()]


def test_whole_pairs_replay_as_pairing_would_give_them(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _session(db)
    recording = load_session(Database(db, create=False, readonly=True), 1)
    assert recording.steps is not None  # every row whole: straight from the rows
    paired = Recording(recording.name, recording.source, None, recording.device,
                       recording.survey)
    fast, slow = _commands(recording), _commands(paired)
    assert fast == slow and len(fast) == recording.count > 30


def test_a_half_row_goes_through_pairing(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _session(db)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE urbs SET completed_at = NULL WHERE seq = "
                 "(SELECT max(seq) FROM urbs WHERE transfer_type = 'control')")
    conn.commit()
    conn.close()
    recording = load_session(Database(db, create=False, readonly=True), 1)
    assert recording.steps is None and recording.count > 30
