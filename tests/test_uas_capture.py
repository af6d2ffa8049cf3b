"""The macOS capture of a UAS SSD: imported through the CLI, decoded as Wireshark decodes it."""

from __future__ import annotations

import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.storage.scsi import SENSE_KEYS

from . import tshark
from .conftest import shared_capture

NAME = "ajbanjara__XHC1-SanDiskExtremePortableSSD.pcapng"
# Wireshark fills scsi_sbc.rdwr10.* for these opcodes, scsi.cdb.alloclen16 for INQUIRY
RDWR10 = {0x28, 0x2A, 0x2F, 0x35}
INQUIRY = 0x12
SENSE_KEY_NUMBERS = {name: key for key, name in SENSE_KEYS.items()}
SCSI_STATUS = {"good": 0x00, "check_condition": 0x02, "condition_met": 0x04, "busy": 0x08,
               "resv_conflict": 0x18, "task_set_full": 0x28, "aca_active": 0x30,
               "task_aborted": 0x40, "missing": None}
FIELDS = ["frame.number", "uasp.iu_id", "uasp.tag", "scsi.spc.opcode", "scsi_sbc.opcode",
          "scsi_sbc.rdwr10.lba", "scsi_sbc.rdwr10.xferlen", "scsi.cdb.alloclen16",
          "uasp.sense.status", "scsi.sns.key", "scsi.sns.asc", "scsi.sns.ascq"]


@dataclass
class UasCommand:
    frame: int
    tag: int
    opcode: int | None
    lba: int | None
    length: int | None  # blocks for READ/WRITE, allocation length for INQUIRY
    status: int | None = None  # None: no Sense IU seen
    sense: tuple[int | None, int | None, int | None] = (None, None, None)


def _int(text: str) -> int | None:
    text = text.split(",")[0].strip()
    return int(text, 0) if text else None


def wireshark_uas_commands(path: Path) -> list[UasCommand]:
    """Wireshark's UAS decode: Command IUs in order, each with its Sense IU's status."""
    args = ["tshark", "-r", str(path), "-Y", "uasp.iu_id", "-T", "fields",
            "-E", "separator=\t", "-E", "occurrence=f"]
    for name in FIELDS:
        args += ["-e", name]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    commands: list[UasCommand] = []
    open_by_tag: dict[int, UasCommand] = {}
    for line in out.splitlines():
        cols = line.split("\t") + [""] * len(FIELDS)
        frame, iu, tag, spc, sbc, lba, xfer, alloc, status, key, asc, ascq = cols[: len(FIELDS)]
        iu_id, t = _int(iu), _int(tag)
        assert t is not None
        if iu_id == 0x01:
            opcode = _int(spc) if spc else _int(sbc)
            cmd = UasCommand(int(frame), t, opcode, _int(lba), _int(xfer) or _int(alloc))
            commands.append(cmd)
            open_by_tag[t] = cmd
        elif iu_id == 0x03 and t in open_by_tag:
            cmd = open_by_tag.pop(t)
            cmd.status = _int(status)
            cmd.sense = (_int(key), _int(asc), _int(ascq))
    return commands


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    path = shared_capture(NAME)
    db = tmp_path_factory.mktemp("uas") / "t.db"
    result = CliRunner().invoke(main, ["import", str(path), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "6 SCSI commands, 0 malformed" in result.output
    return sqlite3.connect(db)


def test_macos_capture_imports_its_uas_commands(imported: sqlite3.Connection) -> None:
    rows = imported.execute("SELECT name, lun, tag, hex(cdb), data_direction, expected_length, "
                            "data_length, residue, status, sense_key, asc, ascq "
                            "FROM scsi_commands ORDER BY seq").fetchall()
    assert rows[0] == ("test_unit_ready", 0, 0x1F, "000000000000", "none", 0, 0, 0,
                       "check_condition", "not_ready", 0x04, 0x01)
    assert [r[0] for r in rows[1:]] == ["inquiry"] * 5
    assert [(r[3], r[5], r[6], r[8]) for r in rows[1:]] == [
        ("120000000600", 6, 6, "good"), ("120000006000", 96, 96, "good"),
        ("120100000400", 4, 4, "good"), ("120100001000", 16, 16, "good"),
        ("120180000500", 5, 5, "good")]
    source, notes = imported.execute("SELECT source, notes FROM sessions").fetchone()
    assert source == "macos" and (notes is None or "UAS" not in notes)
    vid, pid = imported.execute("SELECT vid, pid FROM devices").fetchone()
    assert (vid, pid) == (0x0781, 0x558C)


@pytest.mark.skipif(not tshark.available(), reason="tshark is not on PATH (.ci/run installs it)")
def test_uas_commands_agree_with_wireshark(imported: sqlite3.Connection) -> None:
    ours = []
    for tag, opcode, lba, blocks, length, status, key, asc, ascq in imported.execute(
            "SELECT tag, opcode, lba, blocks, expected_length, status, sense_key, asc, ascq "
            "FROM scsi_commands ORDER BY seq"):
        size = blocks if opcode in RDWR10 else length if opcode == INQUIRY else None
        ours.append((tag, opcode, lba if opcode in RDWR10 else None, size, SCSI_STATUS[status],
                     (SENSE_KEY_NUMBERS.get(key), asc, ascq)))
    wireshark = wireshark_uas_commands(shared_capture(NAME))
    theirs = [(c.tag, c.opcode, c.lba, c.length, c.status, c.sense) for c in wireshark]
    assert len(ours) == len(theirs) == 6
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"command {i + 1} (tshark frame {wireshark[i].frame}): {a} != {b}"
