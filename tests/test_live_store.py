"""Live logging's storage: 64 KiB pages, readers that never hold up a growing session,
a storing process, a tracer that makes no records when nobody takes them, and export
straight from the cursor.

A file in rollback-journal mode (what a closed usbtrace database is) may hold a journal
left by a writer killed mid-commit: it is "hot" and is rolled back by the next
connection that can write (https://www.sqlite.org/lockingv3.html, "Hot Journals").
"""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from usbtrace.capture.export import export
from usbtrace.cli import main
from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.records import Event
from usbtrace.store.database import PAGE_SIZE, Database
from usbtrace.store.writer import Recorder, SessionWriter


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _record(db: Path, reads: int, process: bool | None = None,
            **writer_options: Any) -> tuple[Recorder, int]:
    database = Database(db)
    sid = database.new_session("simulated", "test", "now", "virtual")
    recorder = Recorder(SessionWriter(database, sid, attribute_files=False, **writer_options),
                        process=process)
    stick = SimulatedStick(DiskImage.in_memory(8 << 20))
    stick.image.write(0, random.Random(1).randbytes(8 << 20))
    machine = Machine(stick, sink=recorder).start()
    handle = machine.win32.CreateFile(DISK_PATH)
    for i in range(reads):
        machine.win32.ReadFile(handle, bytearray(65536), i % 120 * 65536)
    machine.stop()
    recorder.close()
    database.close()
    return recorder, sid


def test_a_new_database_has_64_kib_pages_and_is_one_file_once_closed(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    _record(db, 4)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 65536
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.db"]


def test_a_reader_never_holds_up_a_growing_session(tmp_path: Path) -> None:
    """A reader that keeps its read open while a session grows (``usbtrace log`` piped to
    a pager, a long ``query``) must not make the writer wait or fail.  With a rollback
    journal a commit needs an EXCLUSIVE lock, which waits for every SHARED one, then fails
    after the busy timeout (https://www.sqlite.org/lockingv3.html); in WAL a reader keeps
    its snapshot and the writer goes on (https://www.sqlite.org/wal.html)."""
    db = tmp_path / "u.db"
    _record(db, 2)
    database = Database(db)  # the writer's session begins, then a reader comes
    sid = database.new_session("simulated", "test", "now", "virtual")
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0)
    reader.execute("BEGIN")
    before = reader.execute("SELECT count(*) FROM urbs").fetchone()[0]
    writer = SessionWriter(database, sid, attribute_files=False)
    recorder = Recorder(writer, process=False)
    stick = SimulatedStick(DiskImage.in_memory(8 << 20))
    machine = Machine(stick, sink=recorder).start()
    handle = machine.win32.CreateFile(DISK_PATH)
    for i in range(300):  # past a batch: commits happen while the reader reads
        machine.win32.ReadFile(handle, bytearray(65536), i % 120 * 65536)
    machine.stop()
    recorder.close()
    assert reader.execute("SELECT count(*) FROM urbs").fetchone()[0] == before  # its snapshot
    reader.execute("COMMIT")
    state, records = reader.execute("SELECT state, record_count FROM sessions WHERE id = ?",
                                    (sid,)).fetchone()
    assert state == "complete" and records == writer.records > 600
    assert reader.execute("SELECT count(*) FROM urbs WHERE session_id = ? AND length(data) "
                          "= 65536", (sid,)).fetchone()[0] == 300
    reader.close()
    database.close()


def test_the_storing_process_stores_what_the_tracer_saw(tmp_path: Path) -> None:
    """The forked storing process decodes and inserts; its counts come back to the
    recorder's writer, and they are what the database holds."""
    db = tmp_path / "u.db"
    recorder, sid = _record(db, 20)
    assert recorder._process is not None and recorder._process.exitcode == 0
    writer = recorder.writer
    conn = sqlite3.connect(db)
    records, commands, state = conn.execute(
        "SELECT record_count, command_count, state FROM sessions WHERE id = ?", (sid,)
    ).fetchone()
    assert state == "complete"
    assert (writer.records, writer.commands) == (records, commands)
    stored = conn.execute("SELECT count(*) FROM scsi_commands WHERE session_id = ?", (sid,)
                          ).fetchone()[0]
    assert stored == commands > 20  # the 20 READs and the stack's own start-up commands
    # every byte read is in the database, queryable from any SQLite client
    (data,) = conn.execute("SELECT group_concat(hex(data), '') FROM (SELECT data FROM urbs "
                           "WHERE session_id = ? AND direction = 'in' AND "
                           "captured_length = 65536 ORDER BY seq)", (sid,)).fetchone()
    assert len(data) == 2 * 20 * 65536


def test_a_thread_and_a_process_store_the_same_rows(tmp_path: Path) -> None:
    rows = []
    for process in (False, True):
        db = tmp_path / f"{process}.db"
        _, sid = _record(db, 6, process=process)
        conn = sqlite3.connect(db)
        # file object ids count up across the machines of one process: left out
        irps = ", ".join('"' + c[1] + '"' for c in conn.execute("PRAGMA table_info(irps)")
                         if c[1] != "file_object")
        rows.append([conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                     for table in ("urbs", "scsi_commands")] +
                    [conn.execute(f"SELECT {irps} FROM irps ORDER BY 1, 2").fetchall()])
    assert rows[0] == rows[1] and len(rows[0][0]) > 20


def test_live_batches_leave_out_their_all_null_columns_and_store_the_same_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URB's record_number and setup, and an IRP's minor and detail, are NULL in every
    row of a live batch of reads (not in the start-up's, with its control transfers):
    the INSERT leaves them out instead of binding None in each row, and the table holds
    what the full INSERT stores."""
    import usbtrace.store.writer as writer

    columns = {"urbs": writer.URB_COLUMNS, "irps": writer.IRP_COLUMNS}
    rows, left_out = [], []
    for sparse in (True, False):
        if not sparse:
            monkeypatch.setattr(writer, "SPARSE_COLUMNS", {})
        db = tmp_path / f"{sparse}.db"
        recorder, sid = _record(db, 40, process=False, batch=48)  # batches of reads
        left_out.append({name: {columns[name][i] for absent in bulk._narrow for i in absent}
                         for name, bulk in recorder.writer._bulk.items() if name in columns})
        conn = sqlite3.connect(db)
        irps = ", ".join('"' + c[1] + '"' for c in conn.execute("PRAGMA table_info(irps)")
                         if c[1] != "file_object")  # counts up across machines: left out
        rows.append([conn.execute("SELECT * FROM urbs ORDER BY rowid").fetchall(),
                     conn.execute(f"SELECT {irps} FROM irps ORDER BY rowid").fetchall()])
        conn.close()
    assert left_out[0]["urbs"] >= {"record_number", "setup", "stream_id"}
    assert left_out[0]["irps"] == {"minor", "detail"}
    assert left_out[1] == {"urbs": set(), "irps": set()}
    assert rows[0] == rows[1] and len(rows[0][0]) > 120
    assert {r[columns["urbs"].index("record_number")] for r in rows[0][0]} == {None}


def test_a_lossy_recorder_with_a_storing_process_says_what_it_dropped(tmp_path: Path) -> None:
    """A storing process that falls behind: a lossy tracer drops records rather than
    wait, and the session's gaps add up to what it dropped."""
    db = tmp_path / "g.db"
    database = Database(db)
    sid = database.new_session("simulated", "test", "now", "virtual")
    writer = SessionWriter(database, sid, attribute_files=False)
    feed = writer.feed

    def slow(event: Event) -> None:
        time.sleep(0.002)
        feed(event)

    writer.feed = slow  # type: ignore[method-assign]  # the storing process inherits it
    recorder = Recorder(writer, capacity=256 * 1024, lossy=True)
    assert recorder._process is not None
    machine = Machine(SimulatedStick(DiskImage.in_memory(4 << 20)), sink=recorder).start()
    handle = machine.win32.CreateFile(DISK_PATH)
    for i in range(40):
        machine.win32.ReadFile(handle, bytearray(65536), i % 60 * 65536)
    machine.stop()
    recorder.close()
    assert recorder.dropped > 0 and recorder.waits == 0
    conn = sqlite3.connect(db)
    (gaps,), = conn.execute("SELECT sum(dropped) FROM gaps WHERE session_id = ?", (sid,))
    state, dropped, records = conn.execute(
        "SELECT state, dropped_count, record_count FROM sessions WHERE id = ?", (sid,)
    ).fetchone()
    assert state == "complete" and gaps == dropped == recorder.dropped
    assert records == recorder.writer.records > 0


def test_a_reader_rolls_back_the_journal_a_killed_writer_left(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    assert invoke("record", "--db", str(db), "--size", "4M")[0] == 0
    pid = os.fork()
    if pid == 0:  # a writer killed in the middle of a transaction that spilled to the file
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA cache_size=1")
        conn.execute("BEGIN")
        conn.execute("UPDATE urbs SET data = randomblob(length(data)) WHERE data IS NOT NULL")
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert Path(f"{db}-journal").exists()
    with pytest.raises(sqlite3.OperationalError):  # what any read-only reader meets
        sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "SELECT count(*) FROM urbs").fetchone()
    code, out, err = invoke("sessions", "--db", str(db))
    assert code == 0, err
    assert "(1 row)" in out and not Path(f"{db}-journal").exists()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_tracer_makes_no_records_without_a_sink() -> None:
    """Device replay runs the stack with no sink: the tracer still passes every IRP
    down and back (its remove lock, its power state), and learns the pipes."""
    machine = Machine(SimulatedStick(DiskImage.in_memory(4 << 20))).start()
    handle = machine.win32.CreateFile(DISK_PATH)
    machine.win32.WriteFile(handle, b"\xa5" * 4096, 8192)
    buffer = bytearray(4096)
    machine.win32.ReadFile(handle, buffer, 8192)
    assert buffer == b"\xa5" * 4096
    driver = machine.kernel.drivers["\\Driver\\usbtrace"]
    lower = next(d.device_extension for d in driver.device_objects
                 if d.device_extension.position == "lower")
    assert lower.sink is None and sorted(ep for ep, _, _ in lower.pipes.values()) == [0x02, 0x81]
    machine.stop()


@pytest.mark.parametrize("linktype", ["usbpcap", "usbmon"])
@pytest.mark.parametrize("container", ["pcap", "pcapng"])
def test_export_from_tuples_writes_what_it_writes_from_dicts(tmp_path: Path, linktype: str,
                                                             container: str) -> None:
    db = tmp_path / "u.db"
    assert invoke("record", "--db", str(db), "--size", "4M")[0] == 0
    conn = sqlite3.connect(db)
    cursor = conn.execute("SELECT * FROM urbs WHERE session_id = 1 ORDER BY seq")
    columns = [c[0] for c in cursor.description]
    rows = cursor.fetchall()
    as_dicts, as_tuples = io.BytesIO(), io.BytesIO()
    n = export([dict(zip(columns, r)) for r in rows], as_dicts, linktype, 1e9, container)
    m = export(rows, as_tuples, linktype, 1e9, container, columns=columns)
    assert n == m > 2 * len(rows) - 1 and as_dicts.getvalue() == as_tuples.getvalue()


def test_events_pass_to_the_storing_process_whole() -> None:
    """Every field of an Event survives the trip as the tracer's flat record: the fields
    pickled, the payloads apart, through a real pipe, more than the pipe holds at once."""
    import threading

    from usbtrace.records import record_from_event
    from usbtrace.store.writer import BATCH_FRAME, _receive, _ship_records

    events = [Event("C", 1.5 + i, 7, "lower", 15, 1, 0x220003, 3, 0xC0000001, 512, "x", 9, 1,
                    2, 0x81, 2, 4, 512, b"\x80\x06\0\1\0\0\x12\0",
                    bytes([i]) * (65536 if i % 3 else 0), 600, 4096, 11, 5, -32)
              for i in range(40)]
    read_fd, write_fd = os.pipe()
    records = [record_from_event(e) for e in events]
    sender = threading.Thread(target=_ship_records, args=(write_fd, records))
    sender.start()
    kind, received = _receive(read_fd)
    sender.join()
    os.close(read_fd)
    os.close(write_fd)
    assert kind == BATCH_FRAME and received == events


def test_events_from_flat_records_keep_their_payloads_when_the_buffer_is_reused() -> None:
    """The storing process turns a message's fields and its payloads, back to back in
    one buffer, into Events: each the Event the record stood for, its payload its own
    bytes (the buffer may be read into again), its time in seconds."""
    from usbtrace.records import event_from_record, events_from_flat, record_from_event

    events = [Event("S" if i % 2 else "C", 0.25 * i, 100 + i, "lower", 15, None, 0x220003,
                    None, 0, 0, None, 9, 1, 2, 0x81, 2, 0, 16, None,
                    bytes([i]) * (i % 3) * 8, None, None, None, None, None, None)
              for i in range(9)]
    records = [record_from_event(e) for e in events]
    buffer = bytearray(b"".join(payload for _, payload in records))
    made = events_from_flat([fields for fields, _ in records],
                            [len(payload) for _, payload in records], memoryview(buffer))
    buffer[:] = b"\xff" * len(buffer)
    assert made == events == [event_from_record(r) for r in records]
    assert all(type(e.data) is bytes for e in made) and made[4].ts == 1.0


def test_checkpoints_in_a_thread_keep_the_wal_bounded_and_lose_nothing(tmp_path: Path) -> None:
    """The storing process's writer leaves checkpoints to a thread of its own: its
    connection never checkpoints inside a commit, the thread copies the WAL while the
    writer goes on, the WAL restarts (its file stays near ``limit``, not the session's
    size), and every payload is in the database."""
    db = tmp_path / "u.db"
    database = Database(db)
    sid = database.new_session("simulated", "test", "now", "virtual")
    writer = SessionWriter(database, sid, attribute_files=False, batch=120)
    database.engine.dispose(close=False)
    checkpointer = database.checkpoint_apart(every=1 << 20, limit=3 << 20)
    assert checkpointer is not None
    writer.checkpointer = checkpointer
    # the connection the writer inserts with (sqlite3's own, for a file)
    assert database._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    recorder = Recorder(writer, process=False)
    stick = SimulatedStick(DiskImage.in_memory(8 << 20))
    stick.image.write(0, random.Random(2).randbytes(8 << 20))
    machine = Machine(stick, sink=recorder).start()
    handle = machine.win32.CreateFile(DISK_PATH)
    wal = Path(f"{db}-wal")
    largest = 0
    for i in range(400):  # 25 MiB of payload
        machine.win32.ReadFile(handle, bytearray(65536), i % 120 * 65536)
        if wal.exists():
            largest = max(largest, wal.stat().st_size)
    machine.stop()
    recorder.close()
    checkpointer.close()
    assert checkpointer.error is None and checkpointer.passes >= 3
    assert 0 < largest < 12 << 20
    database.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM urbs WHERE session_id = ? AND "
                        "captured_length = 65536", (sid,)).fetchone()[0] == 400
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_rollback_journal_gets_no_checkpoint_thread(tmp_path: Path) -> None:
    database = Database(tmp_path / "u.db")
    database.engine.dispose()
    sqlite3.connect(tmp_path / "u.db").execute("PRAGMA journal_mode=DELETE").close()
    assert database.checkpoint_apart() is None
    assert Database(f"sqlite:///{tmp_path / 'v.db'}").checkpoint_apart() is None


def test_the_writer_waits_for_a_checkpoint_before_the_wal_outgrows_its_limit(
        tmp_path: Path) -> None:
    """A PASSIVE checkpoint still running when the next transaction begins does not let
    the WAL restart, so a writer that never waited would grow it to the session's size.
    With passes slower than the commits (as on a busy disk), the writer waits for one
    once ``limit`` bytes went in without a restart, and the WAL stays near the limit."""
    from usbtrace.store.database import Checkpointer

    db = tmp_path / "w.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (b BLOB)")
    checkpointer = Checkpointer(db, every=1 << 20, limit=4 << 20)

    class Slow:  # each pass takes 50 ms more: the writer's commits overtake it
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, sql: str) -> sqlite3.Cursor:
            time.sleep(0.05)
            return self.conn.execute(sql)

        def close(self) -> None:
            self.conn.close()

    checkpointer._conn = Slow(checkpointer._conn)  # type: ignore[assignment]
    blob = random.Random(3).randbytes(65536)
    largest = 0
    for _ in range(48):  # 48 MiB, 1 MiB a commit
        checkpointer.begin()
        writer.execute("BEGIN")
        writer.executemany("INSERT INTO t VALUES (?)", [(blob,)] * 16)
        writer.execute("COMMIT")
        checkpointer.committed(16 * 65536)
        largest = max(largest, Path(f"{db}-wal").stat().st_size)
    checkpointer.close()
    writer.close()
    assert largest < 10 << 20  # the limit, a pass's worth and a commit, not 48 MiB
    assert checkpointer.error is None and checkpointer.waits >= 4
