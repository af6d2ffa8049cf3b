"""``usbtrace record --fault``: each fault the simulated stick supports, from the CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.devices.faults import FAULT_KINDS, Fault, parse_fault


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def commands(db: str) -> list[tuple[int, str, int | None, str]]:
    return sqlite3.connect(db).execute(
        "SELECT seq, name, lba, status FROM scsi_commands ORDER BY seq").fetchall()


# Windows 10's start-up and disk arrival send 13 commands (the shared USBPcap capture),
# so the 'read' workload's 20th command is a READ(10) of 128 sectors at LBA 640; the
# READ retried is that one, or with stall-out the next (its CBW is what stalls)
RECOVERED = {"stall-in@20": 640, "stall-out@20": 768, "invalid-csw@20": 640,
             "phase-error@20": 640, "unit-attention@20": 640}
FAILING = {
    "not-ready@20": "STATUS_NO_MEDIA_IN_DEVICE",
    "media-error@700": "STATUS_CRC_ERROR",
    "disconnect@20": "STATUS_DEVICE_NOT_CONNECTED",
    "stall-in@20+": "STATUS_IO_DEVICE_ERROR",
    "phase-error@20+": "STATUS_IO_DEVICE_ERROR",
}


def test_every_kind_is_exercised_here() -> None:
    used = {parse_fault(s).kind for s in [*RECOVERED, *FAILING, "write-protect"]}
    assert used == set(FAULT_KINDS)


@pytest.mark.parametrize("spec", list(RECOVERED))
def test_one_off_fault_is_recorded_and_recovered(tmp_path: Path, spec: str) -> None:
    db = str(tmp_path / "t.db")
    code, out, err = cli("record", "--db", db, "--size", "8M", "--workload", "read",
                         "--fault", spec)
    assert code == 0, out + err
    rows = commands(db)
    # the faulted READ was done again after the fault, and ended good
    lba = RECOVERED[spec]
    assert rows[19][1] == "read_10" and rows[19][2] == 640
    tries = [r for r in rows[19:] if r[1] == "read_10" and r[2] == lba]
    assert len(tries) == 2 and tries[0][3] != "good" and tries[1][3] == "good"
    state, notes = sqlite3.connect(db).execute(
        "SELECT state, notes FROM sessions").fetchone()
    assert state == "complete" and notes.startswith(f"faults injected: {spec}")


@pytest.mark.parametrize("spec", list(FAILING))
def test_failing_fault_ends_in_one_line_and_a_stored_session(tmp_path: Path,
                                                             spec: str) -> None:
    db = str(tmp_path / "t.db")
    code, _, err = cli("record", "--db", db, "--size", "8M", "--workload", "read",
                       "--fault", spec)
    assert code == 2 and FAILING[spec] in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert commands(db)  # the log up to the failure is kept


def test_write_protect_from_the_start_refuses_the_raw_workload(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    code, _, err = cli("record", "--db", db, "--size", "8M", "--fault", "write-protect")
    assert code == 2 and "STATUS_MEDIA_WRITE_PROTECTED" in err and err.count("\n") == 1


@pytest.mark.parametrize("spec, message", [
    ("bogus", "unknown fault 'bogus'"),
    ("stall-in@0", "commands count from 1"),
    ("stall-in@x", "use KIND, KIND@N"),
    ("stall-in@3-4", "a range is for media-error only"),
    ("media-error", "media-error takes sectors"),
    ("media-error@9-3", "below the first"),
    ("disconnect", "disconnect@N"),
    ("disconnect@4+", "disconnect@N"),
])
def test_bad_fault_spec_is_one_line_before_any_session(tmp_path: Path, spec: str,
                                                       message: str) -> None:
    db = tmp_path / "t.db"
    code, _, err = cli("record", "--db", str(db), "--size", "8M", "--fault", spec)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not db.exists()


def test_fault_needs_the_simulated_stick(tmp_path: Path) -> None:
    code, _, err = cli("record", "--db", str(tmp_path / "t.db"), "--device", "usb:1209:0001",
                       "--usb-backend", "simulated", "--fault", "stall-in@3")
    assert code == 2 and "--device" in err and err.count("\n") == 1


def test_fault_syntax() -> None:
    assert parse_fault("stall-in@7") == Fault("stall-in", 7, None, False)
    assert parse_fault("STALL-IN@7+") == Fault("stall-in", 7, None, True)
    assert parse_fault("not-ready") == Fault("not-ready", 1, None, True)
    assert parse_fault("media-error@5-9") == Fault("media-error", 5, 9, True)
    once, always = parse_fault("phase-error@3"), parse_fault("phase-error@3+")
    assert [once.hits(n) for n in (2, 3, 4)] == [False, True, False]
    assert [always.hits(n) for n in (2, 3, 4)] == [False, True, True]
    assert str(always) == "phase-error@3+" and str(parse_fault("media-error@4")) == \
        "media-error@4"


def test_help_documents_the_syntax() -> None:
    code, out, _ = cli("record", "--help")
    assert code == 0 and "--fault SPEC" in out and "KIND@N+" in out
