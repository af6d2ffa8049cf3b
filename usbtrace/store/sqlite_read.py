"""Reading a usbtrace SQLite file with the ``sqlite3`` module alone, no SQLAlchemy.

Importing SQLAlchemy (and the schema's mapped classes) costs about half a second of
CPU on the project's machine, as much as exporting 100,000 URBs and most of what
``usbtrace log`` or ``stats`` takes on a small session.  The commands that only read a
SQLite file (``export``, ``log``, ``files``, ``sessions``, ``query`` and the analysis
commands) read it through ``SqliteReader`` instead (``open_read_only``): the same
checks of the file as ``Database`` makes, with the same messages, the same read-only
connection, and queries under the same authorizer, Ctrl-C, timeout and error
handling.  ``Database`` takes its SQLite-only pieces from here.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from usbtrace.errors import DatabaseError

SCHEMA_VERSION = 3  # the schema this usbtrace reads and writes (see store/schema.py)
# the documented views (store/schema.py's VIEWS): a query naming one a database lacks is
# told that 'usbtrace upgrade' adds it
VIEW_NAMES = ("command_data", "file_activity_commands", "io_chain")


def version_error(display: str, version: int) -> DatabaseError:
    """What a reader says of a database of another schema version (one message for every
    command, whether it reads through SQLAlchemy or ``sqlite3`` alone)."""
    if version in (1, 2):
        return DatabaseError(f"{display}: written by an older usbtrace (schema version "
                             f"{version}); 'usbtrace upgrade --db {display}' brings it to "
                             f"version {SCHEMA_VERSION}")
    return DatabaseError(f"{display}: schema version {version}, this usbtrace reads version "
                         f"{SCHEMA_VERSION}")
_URL = re.compile(r"^[a-z][a-z0-9+]*://", re.IGNORECASE)
SQLITE_READONLY_ROLLBACK = 776  # a hot journal a read-only connection cannot roll back

# What users' SQL may do: read tables and call functions.  Every write, ATTACH,
# VACUUM (INTO), transaction control and PRAGMA that sets anything is denied.
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                 getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
_READ_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                 "index_xinfo", "foreign_key_list", "database_list", "collation_list",
                 "function_list", "pragma_list", "page_size", "page_count", "user_version",
                 "schema_version", "encoding", "journal_mode", "compile_options"}


def read_only_authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None,
                         trigger: str | None) -> int:
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 and arg1.lower() in _READ_PRAGMAS \
            and arg2 is None:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def is_url(target: str) -> bool:
    """A SQLAlchemy URL rather than a file name."""
    return bool(_URL.match(target))


def looks_like_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\0"


def connect_read_only(path: Path) -> sqlite3.Connection:
    """Open without the right to change a byte.  A WAL file in a read-only folder
    whose writer left no ``-wal`` (it was closed cleanly) is opened immutable.

    A writer killed in the middle of a commit leaves a hot ``-journal``: until it is
    rolled back nobody can read the file.  The reader then does what any SQLite client
    does on opening it, rolls it back (the file holds its last commit again, the
    journal goes), and reads; where it cannot write, it says so."""
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as e:
        if getattr(e, "sqlite_errorcode", None) == SQLITE_READONLY_ROLLBACK:
            roll_back_hot_journal(path)
            return connect_read_only(path)
        if Path(f"{path}-wal").exists() or os.access(path.parent, os.W_OK):
            raise
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)


def roll_back_hot_journal(path: Path) -> None:
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise DatabaseError(f"{path}: a writer was stopped in the middle of a commit and "
                            f"its journal ({path}-journal) must be rolled back first, which "
                            "needs write access to the file and its folder")
    conn = sqlite3.connect(str(path), timeout=10)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # rolls it back
    finally:
        conn.close()


def query_error(e: BaseException, stop: dict[str, bool], timeout: float | None,
                views: Iterable[str] = ()) -> BaseException:
    """What a failed query says to the user (``views``: the documented views, whose
    absence means an older database)."""
    if stop["interrupted"]:
        return KeyboardInterrupt()
    if stop["timed_out"]:
        return DatabaseError(f"query stopped after {timeout:g} s (--timeout)")
    message = str(e)
    missing = re.match(r"no such table: (\w+)", message)
    if missing and missing.group(1) in views:
        message += " (a view newer than this database: 'usbtrace upgrade' adds it)"
    if "not authorized" in message or "authorization denied" in message:
        message += ": usbtrace query is read-only (no writes, ATTACH, VACUUM or PRAGMA "
        message += "assignments)"
    return DatabaseError(f"query failed: {message}")


@contextmanager
def guarded(conn: sqlite3.Connection, timeout: float | None) -> Iterator[dict[str, bool]]:
    """A read-only query's guards on ``conn``: the authorizer refuses writes, and a
    progress handler stops the statement after ``timeout`` seconds or at Ctrl-C (SIGINT
    is caught while the block runs, in the main thread).  Yields what stopped it."""
    deadline = None if not timeout else time.monotonic() + timeout
    stop = {"interrupted": False, "timed_out": False}

    def progress() -> int:
        if stop["interrupted"]:
            return 1
        if deadline is not None and time.monotonic() > deadline:
            stop["timed_out"] = True
            return 1
        return 0

    def on_sigint(signum: int, frame: Any) -> None:
        stop["interrupted"] = True

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: Ctrl-C is not ours to catch
        previous = None
    conn.set_progress_handler(progress, 10_000)
    conn.set_authorizer(read_only_authorizer)
    try:
        yield stop
    finally:
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def open_read_only(target: str | Path) -> Any:
    """A database to read: a SQLite file through ``SqliteReader``, a URL (PostgreSQL,
    or ``sqlite:///``) through ``Database``, which imports SQLAlchemy."""
    if is_url(str(target)):
        from usbtrace.store.database import Database

        return Database(target, create=False, readonly=True)
    return SqliteReader(target)


class SqliteReader:
    """A usbtrace SQLite file opened read-only, checked as ``Database(target,
    create=False, readonly=True)`` checks it."""

    is_sqlite = True
    readonly = True

    def __init__(self, target: str | Path) -> None:
        path = Path(target)
        self.display = str(target)
        self.path = path
        if path.is_dir():
            raise DatabaseError(f"{path}: is a directory; give a database file name")
        if not path.exists():
            raise DatabaseError(f"{path}: no such database (run 'usbtrace record' or "
                                "'usbtrace import' first)")
        if path.stat().st_size and not looks_like_sqlite(path):
            raise DatabaseError(f"{path}: not a usbtrace database (not SQLite)")
        if not path.stat().st_size:
            raise DatabaseError(f"{path}: empty database, nothing recorded yet")
        try:
            self.conn = connect_read_only(path)
            names = {name for name, in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                "'sqlite~_%' ESCAPE '~'")}
            row = self.conn.execute("SELECT value FROM usbtrace_meta WHERE key = "
                                    "'schema_version'").fetchone() \
                if "usbtrace_meta" in names else None
        except sqlite3.DatabaseError as e:
            first = (str(e).strip().splitlines() or ["?"])[0]
            raise DatabaseError(f"{self.display}: cannot read database: {first}") from None
        if "usbtrace_meta" in names:
            version = int(row[0]) if row and str(row[0]).isdigit() else 0
            if version != SCHEMA_VERSION:
                raise version_error(self.display, version)
        elif names:
            raise DatabaseError(f"{self.display}: not a usbtrace database "
                                f"(has tables {', '.join(sorted(names)[:5])})")
        else:
            raise DatabaseError(f"{self.display}: empty database, nothing recorded yet")

    def query(self, sql: str, params: dict[str, Any] | None = None
              ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement; rows as tuples."""
        with self.stream(sql, params) as (columns, rows):
            return columns, list(rows)

    @contextmanager
    def stream(self, sql: str, params: dict[str, Any] | None = None,
               timeout: float | None = None
               ) -> Iterator[tuple[list[str], Iterable[tuple[Any, ...]]]]:
        """One read-only statement and its cursor, to iterate in the block: rows come
        as SQLite makes them, memory does not grow with the result.  Writes are refused
        by the authorizer; ``timeout`` seconds or Ctrl-C stop the statement
        (``DatabaseError`` / ``KeyboardInterrupt``), and an error is one line, as from
        ``Database.stream``."""
        with guarded(self.conn, timeout) as stop:
            try:
                cursor = self.conn.execute(sql, params or {})
                yield [c[0] for c in cursor.description or []], cursor
            except (sqlite3.Error, sqlite3.Warning) as e:
                raise query_error(e, stop, timeout, VIEW_NAMES) from None
            if stop["interrupted"]:
                raise KeyboardInterrupt

    def session_exists(self, session_id: int) -> bool:
        if not -(1 << 63) <= session_id < 1 << 63:
            return False
        return self.conn.execute("SELECT 1 FROM sessions WHERE id = ?",
                                 (session_id,)).fetchone() is not None

    def aggregate(self, expression: str, order: str = "id") -> str:
        """A comma-joined aggregate, as ``Database.aggregate`` makes it for SQLite."""
        return f"group_concat({expression}, ', ')"  # follows the scan, i.e. id order

    def close(self) -> None:
        self.conn.close()
