"""Export to pcapng: re-import gives the same commands; Wireshark decodes them too."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main

from . import tshark
from .conftest import shared_capture

COMMANDS = ("SELECT tag, opcode, lba, blocks, data_direction, expected_length, data_length, "
            "residue, status, sense_key, asc, ascq FROM scsi_commands WHERE session_id = ? "
            "ORDER BY seq")


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


@pytest.mark.parametrize("linktype", ["usbpcap", "usbmon"])
def test_live_session_round_trip(tmp_path: Path, linktype: str) -> None:
    db = str(tmp_path / "t.db")
    run("record", "--db", db, "--size", "4M")
    out = tmp_path / f"live-{linktype}.pcapng"
    run("export", "1", "-o", str(out), "--linktype", linktype, "--db", db)
    run("import", str(out), "--db", db)
    conn = sqlite3.connect(db)
    original = conn.execute(COMMANDS, (1,)).fetchall()
    assert original and conn.execute(COMMANDS, (2,)).fetchall() == original
    if linktype == "usbpcap":  # IRP ids, URB functions and USBD status survive
        q = ("SELECT irp_id, urb_function, status FROM urbs WHERE session_id = ? "
             "AND transfer_type = 'bulk' ORDER BY seq")
        assert conn.execute(q, (2,)).fetchall() == conn.execute(q, (1,)).fetchall()
    if tshark.available():
        theirs = tshark.scsi_commands(out)
        assert [(c.tag, c.opcode, c.status) for c in theirs] == \
            [(r[0], r[1], 0 if r[8] == "good" else 1) for r in original]


@pytest.mark.parametrize("name,linktype", [
    ("ajbanjara__usb_memory_stick.pcap", "usbmon"),
    ("ajbanjara__USBMSC-USBPcap.pcapng", "usbpcap"),
    ("ajbanjara__usb_memory_stick.pcap", "usbpcap"),
])
def test_imported_capture_round_trip(tmp_path: Path, name: str, linktype: str) -> None:
    db = str(tmp_path / "t.db")
    run("import", str(shared_capture(name)), "--db", db)
    out = tmp_path / "again.pcapng"
    run("export", "1", "-o", str(out), "--linktype", linktype, "--db", db)
    run("import", str(out), "--db", db)
    conn = sqlite3.connect(db)
    assert conn.execute(COMMANDS, (2,)).fetchall() == conn.execute(COMMANDS, (1,)).fetchall()
    if tshark.available():
        assert len(tshark.scsi_commands(out)) == len(conn.execute(COMMANDS, (1,)).fetchall())


def test_export_of_a_missing_session(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    run("record", "--db", db, "--size", "4M")
    result = CliRunner().invoke(main, ["export", "9", "-o", str(tmp_path / "x.pcapng"),
                                       "--db", db])
    assert result.exit_code == 2 and "no session 9" in result.stderr
