"""``ix_file_activity_path`` holds only rows with a path (a partial index): most
``file_activity`` rows are metadata with no path, and every index a row goes into costs
the import.  Queries on a path still use it, and queries by command use
``ix_file_activity_command``, in SQLite as before (the plans below are SQLite's
``EXPLAIN QUERY PLAN``; https://www.sqlite.org/partialindex.html, "Queries Using Partial
Indexes": a term ``path = ...``, ``GLOB`` or ``IS NOT NULL`` implies ``path IS NOT NULL``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from usbtrace.store.database import Database


@pytest.fixture()
def db(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "i.db"
    database = Database(f"sqlite:///{path}")
    assert database.new_session("usbmon", "x", "now", "capture", 189, None) == 1
    database.engine.dispose()
    return sqlite3.connect(path)


def plan(con: sqlite3.Connection, sql: str) -> str:
    return " | ".join(row[-1] for row in con.execute("EXPLAIN QUERY PLAN " + sql))


def test_the_path_index_holds_only_rows_with_a_path(db: sqlite3.Connection) -> None:
    sql, = db.execute("SELECT sql FROM sqlite_master WHERE name = 'ix_file_activity_path'"
                      ).fetchone()
    assert sql.endswith("(session_id, path) WHERE path IS NOT NULL")
    rows = [(1, i, i, None if i % 3 else f"/f{i % 2}", "read", "fat" if i % 3 else "data",
             None, 512, i, 0, None) for i in range(1, 301)]
    db.executemany("INSERT INTO file_activity VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    entries, = db.execute("SELECT count(*) FROM file_activity INDEXED BY "
                          "ix_file_activity_path WHERE session_id = 1 AND path IS NOT NULL"
                          ).fetchone()
    assert entries == 100  # one row in three has a path


@pytest.mark.parametrize("where", [
    "path = '/a'", "path GLOB '/docs/*'", "path IS NOT NULL AND kind = 'data'",
    "path IN ('/a', '/b')",
])
def test_queries_on_a_path_use_the_path_index(db: sqlite3.Connection, where: str) -> None:
    assert "ix_file_activity_path" in plan(
        db, f"SELECT count(*) FROM file_activity WHERE session_id = 1 AND {where}")


def test_queries_by_command_use_the_command_index(db: sqlite3.Connection) -> None:
    assert "ix_file_activity_command" in plan(
        db, "SELECT c.seq, (SELECT group_concat(f.kind) FROM file_activity f WHERE "
            "f.session_id = c.session_id AND f.scsi_seq = c.seq) FROM scsi_commands c "
            "WHERE c.session_id = 1")
    assert "ix_file_activity_path" in plan(
        db, "SELECT operation, count(*) FROM file_activity_commands WHERE session_id = 1 "
            "AND path = '/docs/report.pdf' GROUP BY operation")
