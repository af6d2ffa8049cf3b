"""Replay: device and host modes, divergence reports, mutations, a broken driver."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.drivers import usbstor
from usbtrace.replay.run import replay

from .conftest import STORAGE_CAPTURES, shared_capture

OWN = sorted((Path(__file__).resolve().parent.parent / "captures").glob("*.pcapng"))
THIRD_PARTY = STORAGE_CAPTURES


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_own_captures_exist() -> None:
    assert len(OWN) >= 2


@pytest.mark.parametrize("capture", OWN, ids=[p.name for p in OWN])
@pytest.mark.parametrize("mode", ["device", "host"])
def test_own_captures_replay_identically(capture: Path, mode: str) -> None:
    report = replay(str(capture), mode)
    assert report.identical, report.text()
    assert report.replayed == report.commands > 0 and report.compared_bytes > 0


@pytest.mark.parametrize("name", THIRD_PARTY)
def test_third_party_captures_in_device_mode(name: str) -> None:
    report = replay(str(shared_capture(name)), "device")
    assert report.identical, report.text()
    if name in ("ctfs__fore2.pcap", "linux-qemu-fat16-xhci.qemu.pcap"):
        # truncated payloads are named, not silently passed
        assert any("cut their data short" in n for n in report.notes)
        assert "caveat" in report.text()


@pytest.fixture
def mutable(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    db = tmp_path / "m.db"
    assert cli("import", str(OWN[0] if "raw" in OWN[0].name else OWN[-1]), "--db",
               str(db))[0] == 0
    return db, sqlite3.connect(db)


def _export_and_replay(db: Path, tmp_path: Path) -> tuple[int, str]:
    out = tmp_path / "mutated.pcapng"
    assert cli("export", "1", "-o", str(out), "--db", str(db))[0] == 0
    code, stdout, _ = cli("replay", str(out), "--mode", "host")
    return code, stdout


def _command(conn: sqlite3.Connection, name: str, nth: int = 0) -> tuple[int, int, int]:
    return conn.execute("SELECT seq, cbw_seq, csw_seq FROM scsi_commands WHERE name=? "
                        "AND status='good' AND data_length > 0 ORDER BY seq LIMIT 1 OFFSET ?",
                        (name, nth)).fetchone()


def test_flipped_byte_in_a_read_response(mutable, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, conn = mutable
    seq, cbw, csw = _command(conn, "read_10", 1)
    data, = conn.execute("SELECT data FROM urbs WHERE seq=?", (cbw + 1,)).fetchone()
    flipped = bytes([data[0] ^ 0xFF]) + data[1:]
    conn.execute("UPDATE urbs SET data=? WHERE seq=?", (flipped, cbw + 1))
    conn.commit()
    code, out = _export_and_replay(db, tmp_path)
    assert code == 1 and "data_in differs at byte 0" in out and "read_10" in out


def test_changed_csw_status(mutable, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, conn = mutable
    seq, cbw, csw = _command(conn, "read_10")
    data, = conn.execute("SELECT data FROM urbs WHERE seq=?", (csw,)).fetchone()
    conn.execute("UPDATE urbs SET data=? WHERE seq=?", (data[:12] + b"\x01", csw))
    conn.commit()
    code, out = _export_and_replay(db, tmp_path)
    assert code == 1 and "csw status differs" in out and "read_10" in out


def test_dropped_command(mutable, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, conn = mutable
    seq, cbw, csw = _command(conn, "write_10", 1)
    conn.execute("DELETE FROM urbs WHERE seq BETWEEN ? AND ?", (cbw, csw))
    conn.commit()
    code, out = _export_and_replay(db, tmp_path)
    # the write never reached the target: the read of the same blocks shows it
    assert code == 1 and "read_10" in out and "data_in differs" in out


def test_changed_lba(mutable, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, conn = mutable
    seq, cbw, csw = _command(conn, "read_10", 1)
    data, = conn.execute("SELECT data FROM urbs WHERE seq=?", (cbw,)).fetchone()
    cdb = bytearray(data)
    cdb[15 + 5] ^= 0x01  # the LBA's lowest byte, in the CBW's command block
    conn.execute("UPDATE urbs SET data=? WHERE seq=?", (bytes(cdb), cbw))
    conn.commit()
    code, out = _export_and_replay(db, tmp_path)
    assert code == 1 and "read_10" in out


def test_a_broken_driver_fails_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    # usbstor "forgets" to read the CSW after a data phase
    monkeypatch.setitem(usbstor.PHASE_TRANSITIONS, ("data", "ok"), "done")
    report = replay(str(OWN[0]), "device")
    assert not report.identical
    assert any(d.field == "sequence" for d in report.divergences)


def test_json_report_and_exit_codes(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, stdout, _ = cli("replay", str(OWN[0]), "--json", str(out))
    assert code == 0 and "identical" in stdout
    body = json.loads(out.read_text())
    assert body["identical"] is True and body["commands"] == body["replayed"] > 0
    code, _, err = cli("replay", str(tmp_path / "missing.pcap"))
    assert code == 2 and "no such file" in err
    code, _, err = cli("replay", str(shared_capture("Flameeyes__test1.pcap")))
    assert code == 2 and "no mass-storage commands" in err


def test_a_stored_session_replays(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    assert cli("record", "--db", db, "--size", "4M")[0] == 0
    for mode in ("device", "host"):
        code, stdout, _ = cli("replay", "session:1", "--mode", mode, "--db", db)
        assert code == 0, stdout


def test_recorded_timing_scaled(tmp_path: Path) -> None:
    report = replay(str(OWN[0]), "host", speed=1000.0, max_gap=0.001)
    assert report.identical


def test_fixtures_from_the_plugin(usbtrace_stack, usbtrace_recorder, usbtrace_replayer) -> None:  # type: ignore[no-untyped-def]
    h = usbtrace_stack.open()
    assert usbtrace_stack.win32.ReadFile(h, bytearray(512), 0) == 512
    summary = usbtrace_recorder()
    assert summary.workload.ok
    assert usbtrace_replayer(OWN[0]).identical
