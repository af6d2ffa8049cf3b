"""A SQLite file is created and written with the ``sqlite3`` module alone (no
SQLAlchemy: its import is most of a small import's CPU), and what it makes is what
SQLAlchemy made: the same schema objects, the same rows."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import usbtrace
from tests.conftest import shared_capture
from usbtrace.importing import import_capture
from usbtrace.store import ddl, sqlite_schema
from usbtrace.store.database import Database

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_MODULE = ROOT / "usbtrace" / "store" / "sqlite_schema.py"


def test_the_sqlite_schema_module_is_generated_from_the_models() -> None:
    assert SCHEMA_MODULE.read_text() == ddl.render_python(), (
        "usbtrace/store/sqlite_schema.py is stale: run 'python -m usbtrace.store.ddl "
        "--python > usbtrace/store/sqlite_schema.py'")
    assert list(sqlite_schema.CREATE_STATEMENTS) == ddl.sqlite_statements()


def schema_of(path: Path) -> list[tuple[Any, ...]]:
    """Every schema object as SQLite keeps it, and the settings a writer gives a file."""
    con = sqlite3.connect(path)
    try:
        objects = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                              "ORDER BY type, name").fetchall()
        meta = con.execute("SELECT * FROM usbtrace_meta").fetchall()
        page = con.execute("PRAGMA page_size").fetchall()
        return [*objects, ("meta", *meta), ("page_size", *page)]
    finally:
        con.close()


def rows_of(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Each table's rows in rowid order, each value with its SQLite type."""
    con = sqlite3.connect(path)
    try:
        found = {}
        for table, in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                  "ORDER BY name").fetchall():
            columns = [f'"{c[1]}"' for c in con.execute(f'PRAGMA table_info("{table}")')]
            types = ", ".join(f"typeof({c})" for c in columns)
            found[table] = con.execute(f'SELECT *, {types} FROM "{table}" '
                                       "ORDER BY rowid").fetchall()
        return found
    finally:
        con.close()


def test_a_new_file_has_the_schema_sqlalchemy_made(tmp_path: Path) -> None:
    """Made by sqlite3 (a path) and by SQLAlchemy's ``create_all`` (a URL): the same
    tables, indexes and views, with the same SQL text, the same version row and page
    size."""
    Database(tmp_path / "plain.db").close()
    Database(f"sqlite:///{tmp_path / 'orm.db'}").close()
    plain, orm = schema_of(tmp_path / "plain.db"), schema_of(tmp_path / "orm.db")
    assert plain == orm
    assert {(kind, name) for kind, name, *_ in plain if kind in ("table", "view")} >= {
        ("table", "urbs"), ("table", "file_activity"), ("view", "io_chain")}


@pytest.mark.parametrize("fork", [False, True])
def test_an_import_stores_what_it_stored_through_sqlalchemy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool) -> None:
    """Every table, every column, and each value's SQLite type, equal: the session's
    bookkeeping (new, counts by batch, devices, final state) and every row."""
    import usbtrace.importing as importing

    monkeypatch.setattr(importing, "BACKGROUND_FROM", 0)
    monkeypatch.setattr(importing, "spare_core", lambda: fork)
    capture = shared_capture("ajbanjara__usb_memory_stick.pcap")
    found = {}
    for name, target in (("plain", str(tmp_path / "plain.db")),
                         ("orm", f"sqlite:///{tmp_path / 'orm.db'}")):
        database = Database(target)
        result = import_capture(database, capture)
        assert result.session_id == 1
        database.close()
        found[name] = rows_of(tmp_path / f"{name}.db")
    assert found["plain"]["urbs"] and found["plain"]["file_activity"]
    assert found["plain"]["devices"]
    assert found["plain"] == found["orm"]


def test_a_second_import_finds_the_first_and_a_dead_writer_is_closed(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    capture = shared_capture("ajbanjara__usb_memory_stick_create_file.pcap")
    database = Database(db)
    first = import_capture(database, capture)
    again = import_capture(database, capture)
    assert again.duplicate_of == first.session_id and again.session_id is None
    # a session whose writer is gone (pid 0 is never ours) is interrupted at the next open
    stale = database.new_session("usbmon", "x", "2020-01-01T00:00:00Z", "capture")
    database.update_session(stale, writer_pid=2 ** 22 + 1, notes="kept")
    database.close()
    Database(db).close()
    con = sqlite3.connect(db)
    state, notes = con.execute("SELECT state, notes FROM sessions WHERE id = ?",
                               (stale,)).fetchone()
    con.close()
    assert state == "interrupted"
    assert notes.startswith("kept; its writer (pid 4194305) ended")


@pytest.mark.parametrize("command", ["import", "record"])
def test_writing_commands_do_not_load_sqlalchemy(tmp_path: Path, command: str) -> None:
    """``import`` and ``record`` (with its forked storing process) on a SQLite file."""
    db = str(tmp_path / "i.db")
    args = ["import", "-q", "--db", db,
            str(shared_capture("ajbanjara__usb_memory_stick_create_file.pcap"))] \
        if command == "import" else ["record", "--db", db, "--size", "4M"]
    code = ("import sys\n"
            "from usbtrace.cli import main\n"
            f"sys.argv = ['usbtrace', *{args!r}]\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    con = sqlite3.connect(db)
    state, commands = con.execute("SELECT state, command_count FROM sessions").fetchone()
    stored = con.execute("SELECT count(*) FROM scsi_commands").fetchone()[0]
    con.close()
    assert state == "complete" and commands == stored > 0


def test_a_small_import_loads_only_what_it_uses(tmp_path: Path) -> None:
    """Start-up is most of a small capture's import: the installed metadata (the release
    is ``usbtrace.__version__``), ``multiprocessing`` (only for a forked inserter) and
    click's terminal code (only for a progress bar) stay unloaded."""
    db = str(tmp_path / "s.db")
    capture = str(shared_capture("ajbanjara__usb_memory_stick_create_file.pcap"))
    unwanted = ["importlib.metadata", "multiprocessing", "click._termui_impl", "sqlalchemy"]
    code = ("import sys\n"
            "from usbtrace.cli import main\n"
            f"sys.argv = ['usbtrace', 'import', '-q', '--db', {db!r}, {capture!r}]\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            f"print(sorted(m for m in {unwanted!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    version, = sqlite3.connect(db).execute("SELECT usbtrace_version FROM sessions").fetchone()
    assert version == usbtrace.__version__


def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    with pytest.raises(Exception) as caught:
        Database(bad)
    assert str(caught.value).startswith(f"{bad}: cannot read database:")


def test_the_engine_of_a_file_is_made_when_asked_for(tmp_path: Path) -> None:
    """What still needs SQLAlchemy (an upgrade, ``delete``) gets an engine on the same
    file; ``dispose`` alone makes none."""
    database = Database(tmp_path / "e.db")
    sid = database.new_session("usbmon", "x", "2020-01-01T00:00:00Z", "capture")
    database.engine.dispose(close=False)  # as a forked storing process does
    assert database._sa is None
    assert database.session_exists(sid)  # a connection of its own again
    assert database.delete_sessions([sid]) == 1  # through SQLAlchemy
    assert database._sa is not None
    assert not database.session_exists(sid)
    database.close()
