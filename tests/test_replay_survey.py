"""What replay decodes is what the import decoded.

Replay decodes a recording afresh (``usbtrace.replay.recording._decode``), in a loop of
its own beside the import's (``SessionWriter._exchange``): the two must find the same
SCSI commands, with the same numbering, in a capture file and in the session stored
from it, Bulk-Only and UAS alike."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.decode.bot import ScsiCommand
from usbtrace.replay.recording import Recording, load_capture, load_session
from usbtrace.store.database import Database

from .conftest import STORAGE_CAPTURES, shared_capture

OWN = sorted((Path(__file__).resolve().parent.parent / "captures").glob("*.pcapng"))
CAPTURES = [(p.name, p) for p in OWN] + [(name, None) for name in STORAGE_CAPTURES]


def _fields(cmd: ScsiCommand) -> tuple[Any, ...]:
    return (cmd.seq, cmd.lun, cmd.tag, bytes(cmd.cdb), cmd.info.lba, cmd.info.blocks,
            cmd.status, cmd.data_length, cmd.residue, cmd.cbw_seq, cmd.csw_seq)


def _imported(db: Path, recording: Recording) -> list[tuple[Any, ...]]:
    assert recording.device is not None
    bus, device = recording.device
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT seq, lun, tag, cdb, lba, blocks, status, data_length, residue, cbw_seq, "
            "csw_seq FROM scsi_commands WHERE session_id = 1 AND bus IS ? AND device IS ? "
            "ORDER BY seq", (bus, device)).fetchall()


@pytest.mark.parametrize("name,path", CAPTURES, ids=[name for name, _ in CAPTURES])
def test_replay_finds_the_commands_the_import_stored(name: str, path: Path | None,
                                                     tmp_path: Path) -> None:
    capture = path if path is not None else shared_capture(name)
    db = tmp_path / "s.db"
    result = CliRunner().invoke(main, ["import", "-q", str(capture), "--db", str(db)])
    assert result.exit_code == 0, result.output
    from_file = load_capture(capture)
    stored = _imported(db, from_file)
    assert stored and len(stored) == from_file.count
    assert [_fields(c) for c in from_file.commands()] == stored
    from_session = load_session(Database(db, create=False, readonly=True), 1)
    assert from_session.device == from_file.device
    assert [_fields(c) for c in from_session.commands()] == stored
