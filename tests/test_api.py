"""The Python API: usbtrace.open -> sessions -> commands, URBs, file activity."""

from __future__ import annotations

import dataclasses
import importlib.util
import sqlite3
from pathlib import Path

import pytest

import usbtrace
from usbtrace.api import TABLES
from usbtrace.errors import UsbtraceError
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .conftest import shared_capture


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "a.db"
    import_capture(Database(path), shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"))
    return path


def test_row_types_have_every_column(db: Path) -> None:
    conn = sqlite3.connect(db)
    for table, kind, _ in TABLES.values():
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")} - {"session_id"}
        assert {f.name for f in dataclasses.fields(kind)} == columns, table


def test_sessions_commands_urbs_and_files(db: Path) -> None:
    conn = sqlite3.connect(db)
    with usbtrace.open(db) as log:
        (session,) = log.sessions()
        assert session.state == "complete" and session.source == "usbmon"
        commands = list(session.commands())
        assert [c.seq for c in commands] == \
            [s for (s,) in conn.execute("SELECT seq FROM scsi_commands ORDER BY seq")]
        first = commands[0]
        assert isinstance(first.cdb, bytes) and first.cdb[0] == first.opcode
        assert first.service_time == pytest.approx(first.completed_at - first.submitted_at)
        writes = list(session.commands(opcode="write_10", file="/docs/*"))
        assert writes and all(c.name == "write_10" for c in writes)
        urbs = list(session.urbs(opcode="write_10", file="/docs/*"))
        assert sum(len(u.data or b"") for u in urbs if u.direction == "out"
                   and u.transfer_type == "bulk") >= sum(c.data_length for c in writes)
        names = {f.path for f in session.file_activity(file="/big*")}
        assert names == {"/big.bin", "/big-renamed.bin"}
        assert any(d.product == "QEMU USB HARDDRIVE" for d in session.devices())
        srt = {s.name: s for s in session.stats()}
        assert srt["write_10"].calls == conn.execute(
            "SELECT count(*) FROM scsi_commands WHERE name = 'write_10'").fetchone()[0]
        with pytest.raises(UsbtraceError):
            list(session.commands(colour="red"))
        with pytest.raises(UsbtraceError):
            log.session(99)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None,
                    reason="pandas is an optional extra (pip install '.[pandas]')")
def test_to_dataframe(db: Path) -> None:
    with usbtrace.open(db) as log:
        session = log.session(1)
        frame = session.to_dataframe("commands", opcode="read_10")
        assert len(frame) == len(list(session.commands(opcode="read_10")))
        assert frame["data_length"].sum() == sum(c.data_length for c in
                                                 session.commands(opcode="read_10"))
        assert list(session.to_dataframe("file_activity").columns)[:3] == \
            ["id", "scsi_seq", "path"]
