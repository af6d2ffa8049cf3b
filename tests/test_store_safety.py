"""Nothing is destroyed, and sessions tell the truth about themselves.

Outputs never overwrite the database or an existing file unasked; read-only
commands change no byte; ``query`` only reads and can be stopped; a session
interrupted by Ctrl-C or kill -9 says so with true counts, and leaves no
process behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import pytest
from click.testing import CliRunner

from tests.conftest import shared_capture
from tests.tiling import tile
from usbtrace.cli import main
from usbtrace.records import BULK, COMPLETE, SUBMIT, Event, record_from_event
from usbtrace.store.database import Database
from usbtrace.store.writer import Recorder, SessionWriter

REPO = Path(__file__).resolve().parent.parent


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def usbtrace(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "usbtrace", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    db = tmp_path / "u.db"
    code, _, err = invoke("record", "--db", str(db), "--size", "4M")
    assert code == 0, err
    return db


# ---- outputs --------------------------------------------------------------------------


def test_export_never_writes_over_the_database(recorded: Path) -> None:
    before = digest(recorded)
    for force in ([], ["--force"]):
        code, _, err = invoke("export", "1", "-o", str(recorded), "--db", str(recorded), *force)
        assert code == 2 and "is the database" in err and err.count("\n") == 1
    assert digest(recorded) == before


def test_export_keeps_an_existing_file_unless_forced(recorded: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.pcapng"
    out.write_bytes(b"precious")
    code, _, err = invoke("export", "1", "-o", str(out), "--db", str(recorded))
    assert code == 2 and "already exists" in err and out.read_bytes() == b"precious"
    code, _, err = invoke("export", "1", "-o", str(out), "--db", str(recorded), "--force")
    assert code == 0, err
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng section header
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_export_that_fails_leaves_no_half_file(recorded: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from usbtrace.capture import export as export_module

    def broken(rows: object, stream: BinaryIO, origin: float) -> tuple[int, int]:
        stream.write(b"\0" * 4096)  # some records written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "_usbmon_pcapng", broken)  # writes the records
    out = tmp_path / "x.pcapng"
    code, _, err = invoke("export", "1", "-o", str(out), "--db", str(recorded),
                          "--linktype", "usbmon")
    assert code == 2 and "No space left" in err
    assert list(tmp_path.iterdir()) == [recorded]


def test_record_refuses_the_database_as_its_image(recorded: Path) -> None:
    before = digest(recorded)
    code, _, err = invoke("record", "--db", str(recorded), "--image", str(recorded))
    assert code == 2 and "is the database" in err
    assert digest(recorded) == before


# ---- read-only commands ---------------------------------------------------------------


def test_read_only_commands_change_no_byte_and_leave_no_files(recorded: Path,
                                                              tmp_path: Path) -> None:
    before = digest(recorded)
    listing = sorted(p.name for p in tmp_path.iterdir())
    for args in (["sessions"], ["log", "1"], ["files", "1"], ["query", "SELECT 1"],
                 ["export", "1", "-o", str(tmp_path / "o.pcapng")]):
        code, _, err = invoke(*args, "--db", str(recorded))
        assert code == 0, (args, err)
    (tmp_path / "o.pcapng").unlink()
    assert digest(recorded) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no -wal, no -shm


def test_an_empty_file_stays_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    for args in (["sessions"], ["query", "SELECT 1"], ["log", "1"]):
        code, _, err = invoke(*args, "--db", str(empty))
        assert code == 2 and "nothing recorded" in err
    assert empty.stat().st_size == 0 and sorted(tmp_path.iterdir()) == [empty]


def test_read_only_commands_work_in_a_read_only_folder(recorded: Path, tmp_path: Path) -> None:
    """On a read-only file system (a read-only bind mount in a private mount
    namespace), every reading command still works and nothing is created."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "u.db").write_bytes(recorded.read_bytes())
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            f"mount --bind {folder} {folder} && "
                            f"mount -o remount,ro,bind {folder} && touch {folder}/x"],
                           capture_output=True, text=True)
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()[:200]}")
    commands = " && ".join(
        f"{sys.executable} -m usbtrace {args} --db {folder}/u.db >/dev/null"
        for args in ("sessions", "log 1", "files 1", "query 'SELECT count(*) FROM urbs'",
                     f"export 1 -o {tmp_path}/o.pcapng"))
    result = subprocess.run(["unshare", "-m", "sh", "-c",
                             f"mount --bind {folder} {folder} && "
                             f"mount -o remount,ro,bind {folder} && {commands}"],
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.pcapng").stat().st_size > 0
    assert sorted(p.name for p in folder.iterdir()) == ["u.db"]


# ---- query ----------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "DELETE FROM urbs", "UPDATE sessions SET state = 'complete'", "DROP TABLE urbs",
    "CREATE TABLE t (x)", "INSERT INTO gaps VALUES (1, 1, 0, 1)",
    "ATTACH DATABASE 'elsewhere.db' AS e", "VACUUM INTO 'copy.db'",
    "PRAGMA journal_mode=DELETE", "PRAGMA writable_schema=1", "BEGIN IMMEDIATE",
    "REINDEX", "ANALYZE",
])
def test_query_refuses_every_write(recorded: Path, tmp_path: Path, sql: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = digest(recorded)
    code, _, err = invoke("query", sql, "--db", str(recorded))
    assert code == 2 and err.startswith("usbtrace: error: query failed") and \
        err.count("\n") == 1
    assert digest(recorded) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.db"]


RUNAWAY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
           "SELECT count(*) FROM c")


def test_query_timeout_stops_a_runaway_query(recorded: Path) -> None:
    start = time.monotonic()
    code, _, err = invoke("query", RUNAWAY, "--db", str(recorded), "--timeout", "1")
    assert code == 2 and "--timeout" in err
    assert time.monotonic() - start < 30


def opened(pid: int, path: Path, seconds: float = 120) -> None:
    """Wait until process ``pid`` has ``path`` open (Linux: its /proc fd links)."""
    fds = Path(f"/proc/{pid}/fd")
    if not fds.is_dir():
        pytest.skip("no /proc to see when the query has started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if any(link.resolve() == path.resolve() for link in fds.iterdir()):
                return
        except OSError:  # an fd closed as it was read
            pass
        time.sleep(0.05)
    pytest.fail(f"the process did not open {path} in {seconds} s")


def test_ctrl_c_stops_a_runaway_query(recorded: Path, tmp_path: Path) -> None:
    process = usbtrace("query", RUNAWAY, "--db", str(recorded), cwd=tmp_path)
    opened(process.pid, recorded)  # started up: the query runs (a fixed wait was too short
    time.sleep(0.5)                # on a loaded machine, and Ctrl-C hit the imports)
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and b"interrupted" in err and b"Traceback" not in err


def test_machine_formats_keep_every_byte(recorded: Path) -> None:
    full = sqlite3.connect(recorded).execute(
        "SELECT data FROM urbs WHERE length(data) > 1000 ORDER BY seq LIMIT 1").fetchone()[0]
    sql = "SELECT data FROM urbs WHERE length(data) > 1000 ORDER BY seq LIMIT 1"
    _, out, _ = invoke("query", sql, "--db", str(recorded), "--format", "json")
    assert bytes.fromhex(json.loads(out)[0]["data"]) == full
    _, out, _ = invoke("query", sql, "--db", str(recorded), "--format", "csv")
    assert bytes.fromhex(out.splitlines()[1]) == full
    _, out, _ = invoke("query", sql, "--db", str(recorded), "--format", "jsonl")
    assert bytes.fromhex(json.loads(out)["data"]) == full
    _, out, _ = invoke("query", sql, "--db", str(recorded))
    assert f"({len(full)} bytes)" in out  # a table says the cell is cut


def test_log_finds_a_commands_files_through_an_index(recorded: Path) -> None:
    """``log`` looks up each command's file activity by index: linear, not quadratic."""
    plan = sqlite3.connect(recorded).execute(
        "EXPLAIN QUERY PLAN SELECT group_concat(f.kind) FROM file_activity f "
        "WHERE f.session_id = 1 AND f.scsi_seq = 5").fetchall()
    assert any("ix_file_activity_command" in row[-1] for row in plan)


# ---- sessions tell the truth ----------------------------------------------------------


def test_delete_removes_a_session_and_its_rows(recorded: Path) -> None:
    invoke("record", "--db", str(recorded), "--size", "4M")
    code, out, _ = invoke("delete", "1", "--db", str(recorded))
    assert code == 0 and "deleted 1 session" in out
    conn = sqlite3.connect(recorded)
    for table in ("urbs", "irps", "scsi_commands", "file_activity", "devices"):
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE session_id = 1"
                            ).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM urbs WHERE session_id = 2").fetchone()[0] > 0
    code, _, err = invoke("delete", "7", "--db", str(recorded))
    assert code == 2 and "no session 7" in err


def test_a_schema_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript((REPO / "tests" / "data" / "schema-1.sql").read_text())
    conn.execute("INSERT INTO usbtrace_meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO sessions (source, source_name, started_at, record_count, "
                 "dropped_count, malformed_count, command_count, clock, complete) VALUES "
                 "('usbmon', 'a.pcap', 'x', 10, 0, 0, 2, 'capture', 1), "
                 "('usbmon', 'b.pcap', 'x', 3, 0, 0, 0, 'capture', 0)")
    conn.commit()
    conn.close()
    code, _, err = invoke("sessions", "--db", str(db))
    assert code == 2 and "usbtrace upgrade" in err
    code, _, err = invoke("upgrade", "--db", str(db))
    assert code == 0, err
    code, out, _ = invoke("sessions", "--db", str(db), "--format", "json")
    assert [s["state"] for s in json.loads(out)] == ["complete", "interrupted"]


def _events_with_commands(count: int) -> list[Event]:
    """``count`` INQUIRY exchanges (CBW, 36 bytes in, CSW), as a capture has them."""
    from usbtrace.storage.bot import build_cbw, build_csw

    events = []
    t = 0.0
    for tag in range(1, count + 1):
        cbw = build_cbw(tag, 36, True, 0, bytes([0x12, 0, 0, 0, 36, 0]))
        for irp, ep, data_out, data_in in ((3 * tag, 0x02, cbw, b""),
                                           (3 * tag + 1, 0x81, b"", b"\x00" * 36),
                                           (3 * tag + 2, 0x81, b"", build_csw(tag, 0, 0))):
            t += 0.001
            events.append(Event(SUBMIT, t, irp, bus=1, device=2, endpoint=ep,
                                transfer_type=BULK, length=len(data_out or data_in),
                                data=data_out, urb_status=0))
            events.append(Event(COMPLETE, t, irp, bus=1, device=2, endpoint=ep,
                                transfer_type=BULK, length=len(data_out or data_in),
                                data=data_in, urb_status=0))
    return events


def test_a_lossy_session_says_where_its_gaps_are(tmp_path: Path) -> None:
    """A writer that falls behind makes a lossy tracer drop records: the session
    says where, and no command is made up from the records on both sides."""
    import threading

    database = Database(tmp_path / "g.db")
    sid = database.new_session("simulated", "t", "x", "virtual")
    writer = SessionWriter(database, sid)
    gate = threading.Event()

    def slow(event: Event) -> None:
        gate.wait()
        writer.feed(event)

    events = _events_with_commands(200)
    room = 40 * (Recorder.RECORD_COST + 36)
    recorder = Recorder(writer, capacity=room, lossy=True, consume=slow)
    for event in events[:300]:  # the writer is stuck: the queue fills, the rest is dropped
        recorder(record_from_event(event))
    assert recorder.dropped > 0
    gate.set()
    while recorder.queued_bytes:
        time.sleep(0.01)
    for event in events[300:]:  # the writer keeps up again: nothing more is lost
        while recorder.queued_bytes > room // 2:
            time.sleep(0.001)
        recorder(record_from_event(event))
    recorder.close()
    conn = sqlite3.connect(tmp_path / "g.db")
    gaps = conn.execute("SELECT seq, dropped FROM gaps WHERE session_id = ?", (sid,)).fetchall()
    assert [d for _, d in gaps] == [recorder.dropped]
    state, dropped, notes = conn.execute(
        "SELECT state, dropped_count, notes FROM sessions").fetchone()
    assert state == "complete" and dropped == recorder.dropped and "gaps table" in notes
    gap_seq = gaps[0][0]
    for cbw, csw in conn.execute("SELECT cbw_seq, csw_seq FROM scsi_commands "
                                 "WHERE csw_seq IS NOT NULL"):
        assert not cbw < gap_seq <= csw, "a command decoded across the gap"
    good = conn.execute("SELECT count(*) FROM scsi_commands WHERE status = 'good'").fetchone()[0]
    whole = sum(1 for i in range(200) if 6 * i + 6 <= 300 - recorder.dropped or 6 * i >= 300)
    assert good == whole  # only commands with all six records on one side of the gap


def _big_capture(tmp_path: Path) -> Path:
    big = tmp_path / "big.pcap"
    tile(shared_capture("ajbanjara__usb_memory_stick.pcap"), big, 120_000)
    return big


def _processes_using(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


def _wait_for_rows(db: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                if conn.execute("SELECT count(*) FROM urbs").fetchone()[0] > 1000:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    raise AssertionError("no rows appeared")


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_an_interrupted_import_says_so_with_true_counts(tmp_path: Path, how: str) -> None:
    big = _big_capture(tmp_path)
    db = tmp_path / "i.db"
    invoke("record", "--db", str(db), "--size", "4M")  # an earlier session, to keep intact
    earlier = sqlite3.connect(db).execute("SELECT count(*) FROM urbs").fetchone()[0]
    process = usbtrace("import", str(big), "--db", str(db), cwd=tmp_path)
    _wait_for_rows(db)
    process.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    if how == "ctrl-c":
        assert process.returncode == 130 and b"Traceback" not in err
    else:
        assert process.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _processes_using(str(db)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_using(str(db)) == [], "a usbtrace process outlived the command"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM urbs WHERE session_id = 1").fetchone()[0] == \
        earlier
    code, out, _ = invoke("sessions", "--db", str(db), "--format", "json")
    second = json.loads(out)[1]
    assert second["state"] == "interrupted"
    stored = conn.execute("SELECT count(*) FROM scsi_commands WHERE session_id = 2"
                          ).fetchone()[0]
    assert second["command_count"] == stored > 0
    assert second["record_count"] >= conn.execute(
        "SELECT count(*) FROM urbs WHERE session_id = 2").fetchone()[0] > 0
    # an interrupted import is no reason to skip the file next time
    code, out, _ = invoke("import", str(big), "--db", str(db), "--no-files")
    assert code == 0 and "already imported" not in out


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1")  # a pcap header cut short
    good = shared_capture("ajbanjara__usb_memory_stick_create_file.pcap")
    db = tmp_path / "m.db"
    code, out, err = invoke("import", str(bad), str(tmp_path / "missing.pcap"), str(good),
                            "--db", str(db))
    assert code == 2 and "session" in out and good.name in out
    assert err.count("usbtrace: error:") == 2
