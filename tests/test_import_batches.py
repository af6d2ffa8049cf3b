"""How an import's batches reach SQLite: through the forked inserter's pipe (pickled
pieces of a few hundred rows, then a commit mark) and with the columns a whole batch
leaves NULL left out of its INSERT.  Either way the rows stored are the rows given."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import shared_capture
from usbtrace.importing import import_capture
from usbtrace.store import writer
from usbtrace.store.database import Database


class Count(int):
    """An int subclass, as a row could hold."""


def frames(batches: list[list[tuple[str, Any]]], end: bool = True) -> io.BytesIO:
    """What ``ProcessInserter.put`` writes for ``batches``, as a stream to read."""
    stream = io.BytesIO()

    class Sink:
        _stream = stream

    for batch in batches:
        writer.ProcessInserter.put(Sink(), batch)  # type: ignore[arg-type]
    if end:
        stream.write(writer.PIECE_HEADER.pack(writer.PIECE_END, 0))
    stream.seek(0)
    return stream


def test_a_batch_comes_out_of_the_pipe_as_it_went_in() -> None:
    urbs = [(1, seq, "0x01", seq, 0.5, None, 1, 2, 0x81, "bulk", "in", None, "success",
             512, 512, 512, 0, None, bytes([seq % 256]) * 512, None)
            for seq in range(1, 1300)]  # three pieces of PIECE_ROWS
    cmds = [(1, 1, 1, 2, 0, Count(7), 0x28)]  # goes by pickle
    sessions = (1, {"record_count": 1299, "command_count": 1})
    first = [("urbs", urbs), ("scsi_commands", cmds), ("sessions", sessions)]
    second = [("urbs", urbs[:3])]
    stream = frames([first, second])
    assert writer._read_batch(stream) == first
    assert writer._read_batch(stream) == second
    assert writer._read_batch(stream) is None


def test_a_batch_cut_short_is_never_handed_on() -> None:
    whole = frames([[("urbs", [(1, seq, "x") for seq in range(1000)])]], end=False).getvalue()
    for cut in (len(whole) - 1, len(whole) // 2, 5):
        with pytest.raises(EOFError):
            writer._read_batch(io.BytesIO(whole[:cut]))


def stored(db_path: Path, table: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db_path)
    rows = con.execute(f"SELECT *, typeof(data) FROM {table} ORDER BY rowid").fetchall() \
        if table == "urbs" else con.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
    con.close()
    return rows


def test_columns_null_in_a_whole_batch_are_left_out_and_stored_null(tmp_path: Path) -> None:
    """The narrowed INSERT stores what the full one stores: each row's values, NULL
    where the batch had None, and a column with one value in the batch is bound."""
    def urb(seq: int, function: str | None, stream: int | None) -> tuple[Any, ...]:
        return (1, seq, "0x01", seq, 0.5, 0.75, 1, 2, 0x81, "bulk", "in", function,
                "success", 512, 512, 3, 0, None, b"abc", stream)

    batches = [[urb(1, None, None), urb(2, None, None)],
               [urb(3, "bulk_or_interrupt_transfer", None), urb(4, None, None)],
               [urb(5, None, None), urb(6, None, 7)],
               [urb(7, None, None)]]
    dbs = {}
    for name, sparse in (("narrow", True), ("full", False)):
        db = Database(tmp_path / f"{name}.db")
        db.new_session("usbmon", "x", "2020-01-01T00:00:00Z", "capture", 189, None)
        bulk = writer.bulk_inserts(db)["urbs"]
        assert bulk.sparse == tuple(writer.URB_COLUMNS.index(c) for c in (
            "record_number", "urb_function", "setup", "stream_id"))
        if not sparse:
            bulk.sparse = ()
        with db.engine.begin() as conn:
            for batch in batches:
                bulk.execute(conn, batch)
        dbs[name] = stored(tmp_path / f"{name}.db", "urbs")
    assert dbs["narrow"] == dbs["full"]
    assert [r[11] for r in dbs["narrow"]] == [None, None, "bulk_or_interrupt_transfer",
                                              None, None, None, None]
    assert [r[19] for r in dbs["narrow"]] == [None] * 5 + [7, None]
    assert {r[-1] for r in dbs["narrow"]} == {"blob"}


def test_a_forked_import_stores_what_one_process_stores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import usbtrace.importing as importing

    capture = shared_capture("ajbanjara__usb_memory_stick.pcap")
    tables = ("urbs", "scsi_commands", "file_activity")
    found = {}
    for fork in (False, True):
        monkeypatch.setattr(importing, "BACKGROUND_FROM", 0)
        monkeypatch.setattr(importing, "spare_core", lambda fork=fork: fork)
        puts: list[int] = []
        if fork:
            put = writer.ProcessInserter.put
            monkeypatch.setattr(writer.ProcessInserter, "put",
                                lambda self, batch, puts=puts, put=put:
                                (puts.append(1), put(self, batch)))
        monkeypatch.setattr(writer, "BATCH_BYTES", 64 << 10)  # several batches ...
        monkeypatch.setattr(writer, "PIECE_SIZE", 50)  # ... each in several pieces
        path = tmp_path / f"{fork}.db"
        result = import_capture(Database(path), capture)
        assert result.commands > 0
        assert (len(puts) > 2) is fork
        found[fork] = [stored(path, t) for t in tables]
    assert found[True] == found[False]
    assert all(found[True])
