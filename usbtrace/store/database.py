"""Opening a usbtrace database: a SQLite file by default, any SQLAlchemy URL otherwise.

A database is ours when it has the ``usbtrace_meta`` table with a schema
version we read; an empty file becomes ours; anything else is refused with a
message, never altered.

Readers open SQLite read-only (``mode=ro``): they change no byte, leave no
``-wal``/``-shm`` files and work in a read-only folder.  Writers use WAL and
64 KiB pages (see ``_sqlite_pragmas``), so readers watch a session grow, commit by
commit, without ever holding up the writer; the last writer to close turns the
file back into rollback-journal mode, one self-contained file again.
``query`` runs users' SQL under an authorizer that allows reading only, with a
deadline and Ctrl-C checked from SQLite's progress handler.

A SQLite file is created, checked and written with the ``sqlite3`` module alone
(``store/sqlite_schema.py``, generated from the models): importing SQLAlchemy and the
mapped classes costs about 0.4 s of CPU, most of a small import's and a good part of
tshark's whole run.  A URL goes through SQLAlchemy, and so does what only the rarer
commands need (an upgrade, ``delete``, ``stream``): ``Database.engine`` makes
SQLAlchemy's engine for a file when first asked for it.
"""

from __future__ import annotations

import logging
import os
import shlex
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import usbtrace
from usbtrace.errors import DatabaseError
from usbtrace.store import COMMAND_ARGS
from usbtrace.store.liveness import HOST, effective_state, pid_alive  # noqa: F401 (API)
from usbtrace.store.sqlite_read import (  # noqa: F401 (is_url: API)
    _URL,
    SCHEMA_VERSION,
    VIEW_NAMES,
    guarded,
    is_url,
    query_error,
    version_error,
)
from usbtrace.store.sqlite_read import connect_read_only as _connect_read_only
from usbtrace.store.sqlite_read import looks_like_sqlite as _looks_like_sqlite
from usbtrace.store.sqlite_schema import CREATE_STATEMENTS

logger = logging.getLogger(__name__)
PAGE_SIZE = 65536  # SQLite's largest page: see _sqlite_pragmas


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    """A writer's connection: 64 KiB pages and WAL.

    WAL because a reader must never stop a writer: ``usbtrace log`` or a user's
    ``query`` on a session that is still growing (a live ``import -``, a ``record``)
    holds its read for as long as it streams, and with a rollback journal the writer's
    next commit would wait for it, then fail after the busy timeout and lose the
    capture.  The price is that each payload page reaches the disk twice (the WAL, then
    the checkpoint); a rollback journal would write an appended page once.  64 KiB
    pages (SQLite's largest) cost less CPU per payload than 4 KiB ones; the page size
    takes effect only on a new, empty file, and an existing database keeps its own.
    ``synchronous=NORMAL`` with commits by batch: a killed writer loses at most the
    batch it was writing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")  # first: switching to WAL may wait too
    cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()



# A live session's writer leaves checkpoints to a thread of its own (``Checkpointer``): it
# wakes it every WAL_CHECKPOINT_EVERY bytes of payload committed, and waits for it only
# when WAL_CHECKPOINT_LIMIT bytes are still waiting to be copied, so the WAL stays bounded.
WAL_CHECKPOINT_EVERY = 32 << 20
WAL_CHECKPOINT_LIMIT = 96 << 20


class Checkpointer:
    """Copies a writer's WAL into the database file from a thread and connection of its
    own, so the copy and its two fsyncs leave the writer's path.

    SQLite's automatic checkpoint runs inside the commit that crosses its threshold: the
    writer stops for the copy and both fsyncs (about 50 ms per 32 MiB on the build
    machine), and so does a lossless tracer behind it.  Here the writer's connection has
    ``wal_autocheckpoint=0``; each commit tells the thread, which runs a PASSIVE
    checkpoint (it takes no lock a reader or the writer needs, and copies what no
    reader still uses; https://www.sqlite.org/c3ref/wal_checkpoint_v2.html) while the
    writer decodes and inserts the next batches.  Each page is still written twice (the
    WAL, then the database file): this moves the second write, it does not save it.  On
    the idle build machine the stored stage ran a sixth faster for 6% more CPU in the
    storing process (benchmarks/RESULTS.md, round 10).

    The WAL restarts from its beginning only when a write transaction begins with every
    frame copied, so a writer that never waited would grow it without end.  Before a
    transaction, ``begin`` waits for a pass that started after the last commit once
    ``limit`` bytes are waiting; a reader that pins the WAL keeps it growing, as with
    the automatic checkpoint, and never makes the writer wait more than that pass.
    """

    def __init__(self, path: Path, every: int = WAL_CHECKPOINT_EVERY,
                 limit: int = WAL_CHECKPOINT_LIMIT) -> None:
        self.every, self.limit = every, limit
        self._conn = sqlite3.connect(str(path), timeout=10, isolation_level=None,
                                     check_same_thread=False)
        mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
        self.wal = str(mode).lower() == "wal"  # a rollback journal has nothing to copy
        self._cond = threading.Condition()
        self._committed = 0  # payload bytes committed, in all
        self._copied = 0  # ... of which a complete pass copied to the database file
        self._woken = 0  # ... when the thread was last woken
        self._unrestarted = 0  # ... since a transaction last began with every frame copied
        self.waits = 0  # times the writer waited for a pass
        self._wanted = False
        self._started = self._finished = 0  # passes
        self._stop = False
        self.passes = 0  # complete passes: every frame in the WAL copied
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="usbtrace-checkpoint",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def writer_pragmas(dbapi_connection: Any, record: Any) -> None:
        """The writer's connections: no checkpoint inside a commit."""
        dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    def begin(self) -> None:
        """Before the writer's next transaction: after ``limit`` bytes without a restart
        of the WAL, wait for a pass that copies every commit, so that this transaction
        restarts it."""
        if self._copied == self._committed:  # every frame copied: this one restarts it
            self._unrestarted = 0
        if self._unrestarted < self.limit or self.error is not None:
            return
        with self._cond:
            need = self._started + 1  # a pass that starts from now on sees every commit
            self._wanted = True
            self._cond.notify_all()
            while self._finished < need and self.error is None:
                self._cond.wait()
        self.waits += 1
        if self._copied == self._committed:
            self._unrestarted = 0

    def committed(self, payload: int) -> None:
        """The writer committed a batch of ``payload`` bytes."""
        self._committed += payload
        self._unrestarted += payload
        if self._committed - self._woken >= self.every:
            with self._cond:
                self._woken = self._committed
                self._wanted = True
                self._cond.notify_all()

    def _run(self) -> None:
        cond = self._cond
        try:
            while True:
                with cond:
                    while not self._wanted and not self._stop:
                        cond.wait()
                    if self._stop:
                        return
                    self._wanted = False
                    self._started += 1
                    upto = self._committed
                busy, frames, copied = self._conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                with cond:
                    if not busy and frames == copied:
                        self._copied = max(self._copied, upto)
                        self.passes += 1
                    self._finished += 1
                    cond.notify_all()
        except BaseException as e:  # the writer stops waiting; the close says why
            with cond:
                self.error = e
                cond.notify_all()

    def close(self) -> None:
        """Stop the thread.  What is left in the WAL is copied by the last writer's
        close (``Database.close``), or by the next connection after a crash."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._conn.close()


def current_command_line() -> str:
    """``usbtrace ARGS...`` when a usbtrace command runs, else the process's own
    command line; shell-quoted, so ``shlex.split`` gives the arguments back."""
    args = COMMAND_ARGS.get()
    if args is not None:
        return shlex.join(["usbtrace", *args])
    return shlex.join(sys.argv)


# the views a writer adds to a database made before them: name -> CREATE VIEW
_VIEW_SQL = {statement.split(None, 3)[2]: statement for statement in CREATE_STATEMENTS
             if statement.startswith("CREATE VIEW ")}
# the session columns ``new_session`` fills, in the order SQLAlchemy's INSERT named them
_NEW_SESSION = ("source", "source_name", "started_at", "record_count", "dropped_count",
                "malformed_count", "command_count", "clock", "linktype", "file_sha256",
                "state", "writer_host", "writer_pid", "usbtrace_version", "command_line")
_DEVICE_COLUMNS = ("session_id", "bus", "device", "vid", "pid", "device_class",
                   "manufacturer", "product", "serial", "mass_storage_interfaces")


class _FileEngine:
    """``Database.engine`` for a SQLite file: SQLAlchemy's engine, made (and SQLAlchemy
    imported) only when something asks for more than ``dispose``.  ``dispose`` also lets
    go of the database's own ``sqlite3`` connection: a forked process calls
    ``dispose(close=False)`` to leave its parent's connection alone and open its own."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def dispose(self, close: bool = True) -> None:
        self._database._drop_connection(close)
        engine = self._database._sa
        if engine is not None:
            engine.dispose(close=close)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database._sa_engine(), name)


# connections a forked process let go of without closing (closing one there would
# touch the parent's file locks and WAL index); referenced so that they are never
# finalized in the child
_LEFT_OPEN: list[sqlite3.Connection] = []


class Database:
    def __init__(self, target: str | Path, create: bool = True, readonly: bool = False) -> None:
        target = str(target)
        self.target = target
        self.display = target  # what messages show: no password
        self.path: Path | None = None
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None  # a file's own connection
        self._sa: Any = None  # SQLAlchemy's engine: a URL's, or a file's once asked for
        # run on each new writing connection to a file, after its pragmas
        self._connect_hooks: list[Callable[[Any, Any], None]] = []
        if _URL.match(target):
            self.is_sqlite = target.startswith("sqlite")
            self._sa = self._url_engine(target)
        else:
            path = Path(target)
            if path.is_dir():
                raise DatabaseError(f"{path}: is a directory; give a database file name")
            if not path.exists():
                if not create or readonly:
                    raise DatabaseError(f"{path}: no such database (run 'usbtrace record' or "
                                        "'usbtrace import' first)")
                if not path.parent.exists():
                    raise DatabaseError(f"{path}: folder {path.parent} does not exist")
            elif path.stat().st_size and not _looks_like_sqlite(path):
                raise DatabaseError(f"{path}: not a usbtrace database (not SQLite)")
            elif not path.stat().st_size and readonly:
                raise DatabaseError(f"{path}: empty database, nothing recorded yet")
            self.path = path
            self.is_sqlite = True
        self._file_engine = _FileEngine(self) if self.path is not None else None
        self._check_or_create(create and not readonly)
        if not readonly:
            self._close_dead_sessions()

    # ---- connections -------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        """SQLAlchemy's engine (for a file, made on first use: see ``_FileEngine``)."""
        return self._file_engine if self._file_engine is not None else self._sa

    def _url_engine(self, target: str) -> Any:
        from sqlalchemy import create_engine, event, make_url

        try:
            self.display = make_url(target).render_as_string(hide_password=True)
            engine = create_engine(_driver(target), connect_args={"check_same_thread": False}
                                   if self.is_sqlite else {})
        except Exception as e:  # bad URL, missing driver
            raise DatabaseError(f"cannot open {target}: {e}") from None
        if self.is_sqlite and not self.readonly:
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _sa_engine(self) -> Any:
        """A file's SQLAlchemy engine, on the same file with the same pragmas."""
        if self._sa is None:
            from sqlalchemy import create_engine, event

            path = self.path
            assert path is not None
            creator = (lambda: _connect_read_only(path)) if self.readonly else \
                (lambda: sqlite3.connect(str(path), check_same_thread=False))
            self._sa = create_engine("sqlite://", creator=creator)
            if not self.readonly:
                event.listen(self._sa, "connect", _sqlite_pragmas)
                for hook in self._connect_hooks:
                    event.listen(self._sa, "connect", hook)
        return self._sa

    def _connection(self) -> sqlite3.Connection:
        """A file's own connection, in autocommit mode (transactions are ``_begin``'s),
        with a writer's pragmas."""
        if self._conn is None:
            assert self.path is not None
            if self.readonly:
                conn = _connect_read_only(self.path)
            else:
                conn = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None)
                try:
                    _sqlite_pragmas(conn, None)
                    for hook in self._connect_hooks:
                        hook(conn, None)
                except BaseException:
                    conn.close()
                    raise
            self._conn = conn
        return self._conn

    def _drop_connection(self, close: bool = True) -> None:
        if self._conn is not None:
            if close:
                self._conn.close()
            else:
                _LEFT_OPEN.append(self._conn)
            self._conn = None

    @contextmanager
    def _begin(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on a file's connection.  IMMEDIATE: the write lock is
        taken (or waited for, up to the busy timeout) before the first read, so a
        read-then-write never fails on a snapshot another writer made stale."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ---- the schema --------------------------------------------------------------------

    def _check_or_create(self, create: bool) -> None:
        if self.path is None:
            self._check_or_create_url(create)
            return
        try:
            conn = self._connection()
            names = _table_names(conn)
            if not names and create:
                with self._begin():  # made here unless another writer just made it
                    names = _table_names(conn)
                    if not names:
                        for statement in CREATE_STATEMENTS:
                            conn.execute(statement)
                        conn.execute('INSERT INTO usbtrace_meta ("key", value) VALUES (?, ?)',
                                     ("schema_version", str(SCHEMA_VERSION)))
                        return
            row = conn.execute("SELECT value FROM usbtrace_meta WHERE \"key\" = "
                               "'schema_version'").fetchone() \
                if "usbtrace_meta" in names else None
        except sqlite3.DatabaseError as e:
            first = (str(e).strip().splitlines() or ["?"])[0]
            raise DatabaseError(f"{self.display}: cannot read database: {first}") from None
        self._check_version(names, row, create)

    def _check_or_create_url(self, create: bool) -> None:
        from sqlalchemy import insert, inspect, select
        from sqlalchemy.exc import DatabaseError as SADatabaseError
        from sqlalchemy.exc import OperationalError

        from usbtrace.store.schema import Base, Meta

        try:
            names = set(inspect(self.engine).get_table_names())
        except (OperationalError, SADatabaseError, sqlite3.DatabaseError) as e:
            first = (str(getattr(e, "orig", e)).strip().splitlines() or ["?"])[0]
            raise DatabaseError(f"{self.display}: cannot read database: {first}") from None
        row = None
        if "usbtrace_meta" in names:
            with self.engine.connect() as conn:
                row = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).first()
        elif not names and create:
            Base.metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                conn.execute(insert(Meta), [{"key": "schema_version",
                                             "value": str(SCHEMA_VERSION)}])
            return
        self._check_version(names, row, create)

    def _check_version(self, names: set[str], row: Any, create: bool) -> None:
        """A database with tables: ours at this version, ours but older (a writer upgrades
        it), or refused."""
        if "usbtrace_meta" in names:
            version = int(row[0]) if row and str(row[0]).isdigit() else 0
            if version in (1, 2) and not self.readonly:
                if version == 1:
                    self._upgrade_from_1()
                self._upgrade_from_2()
            elif version != SCHEMA_VERSION:
                raise version_error(self.display, version)
            elif not self.readonly:
                self._create_missing_views()
            return
        if names:
            raise DatabaseError(f"{self.display}: not a usbtrace database "
                                f"(has tables {', '.join(sorted(names)[:5])})")
        raise DatabaseError(f"{self.display}: empty database, nothing recorded yet")

    def _upgrade_from_1(self) -> None:
        """Schema 1 -> 2: a session state instead of a ``complete`` flag, the writer's
        identity, the release and command line (NULL for old sessions), the ``gaps``
        table and the index ``log`` needs, in one transaction; then the views.  (Once in
        a database's life: through SQLAlchemy, whose models make the new table.)"""
        from sqlalchemy import Index, text
        from sqlalchemy import update as sql_update

        from usbtrace.store.schema import FileActivityRow, GapRow, Meta, ScsiCommandRow

        with self.engine.begin() as conn:
            conn.execute(text("ALTER TABLE sessions ADD COLUMN state VARCHAR(12) NOT NULL "
                              "DEFAULT 'running'"))
            conn.execute(text("UPDATE sessions SET state = CASE WHEN complete THEN 'complete' "
                              "ELSE 'interrupted' END"))
            conn.execute(text("ALTER TABLE sessions DROP COLUMN complete"))
            conn.execute(text("ALTER TABLE sessions ADD COLUMN writer_host VARCHAR(255)"))
            conn.execute(text("ALTER TABLE sessions ADD COLUMN writer_pid INTEGER"))
            conn.execute(text("ALTER TABLE sessions ADD COLUMN usbtrace_version VARCHAR(40)"))
            conn.execute(text("ALTER TABLE sessions ADD COLUMN command_line TEXT"))
            GapRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
            for row in (FileActivityRow, ScsiCommandRow):
                for index in row.__table__.indexes:  # type: ignore[attr-defined]
                    assert isinstance(index, Index)
                    index.create(conn, checkfirst=True)
            conn.execute(sql_update(Meta).where(Meta.key == "schema_version")
                         .values(value="2"))
        self._create_missing_views()

    def _upgrade_from_2(self) -> None:
        """Schema 2 -> 3: ``urbs.stream_id``, the USB 3 bulk stream of a live record
        (NULL for every row before: no capture format records it)."""
        if self.path is not None:
            with self._begin() as conn:
                conn.execute("ALTER TABLE urbs ADD COLUMN stream_id INTEGER")
                conn.execute("UPDATE usbtrace_meta SET value = ? WHERE \"key\" = "
                             "'schema_version'", (str(SCHEMA_VERSION),))
            return
        from sqlalchemy import text
        from sqlalchemy import update as sql_update

        from usbtrace.store.schema import Meta

        with self.engine.begin() as conn:
            conn.execute(text("ALTER TABLE urbs ADD COLUMN stream_id INTEGER"))
            conn.execute(sql_update(Meta).where(Meta.key == "schema_version")
                         .values(value=str(SCHEMA_VERSION)))

    def _create_missing_views(self) -> None:
        """The documented views, in a database made before they existed (a writer adds
        them; a reader cannot, and the tables are all there)."""
        if self.path is not None:
            conn = self._connection()
            present = {name for name, in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'view'")}
            missing = [name for name in _VIEW_SQL if name not in present]
            if missing:
                with self._begin():
                    for name in missing:
                        conn.execute(_VIEW_SQL[name])
            return
        from sqlalchemy import inspect, text

        with self.engine.begin() as conn:
            present = set(inspect(conn).get_view_names())
            for name, sql in _VIEW_SQL.items():
                if name not in present:
                    conn.execute(text(sql))

    # ---- sessions ----------------------------------------------------------------------

    def _close_dead_sessions(self) -> None:
        """Sessions left ``running`` by a writer on this host that no longer lives
        were interrupted: say so, with the counts their last stored batch left."""
        def closed(rows: list[Any]) -> list[tuple[str, int]]:
            why = "its writer (pid {}) ended without closing the session"
            return [("; ".join(n for n in (notes, why.format(pid)) if n), sid)
                    for sid, host, pid, notes in rows
                    if effective_state("running", host, pid) == "interrupted"]

        running = "SELECT id, writer_host, writer_pid, notes FROM sessions " \
            "WHERE state = 'running'"
        if self.path is not None:
            conn = self._connection()
            if not conn.execute(running).fetchone():  # most often: no transaction at all
                return
            with self._begin():
                conn.executemany("UPDATE sessions SET state = 'interrupted', notes = ? "
                                 "WHERE id = ?", closed(conn.execute(running).fetchall()))
            return
        from sqlalchemy import select
        from sqlalchemy import update as sql_update

        from usbtrace.store.schema import SessionRow

        with self.engine.begin() as conn:
            rows = conn.execute(select(SessionRow.id, SessionRow.writer_host,
                                       SessionRow.writer_pid, SessionRow.notes)
                                .where(SessionRow.state == "running")).all()
            for notes, sid in closed(list(rows)):
                conn.execute(sql_update(SessionRow).where(SessionRow.id == sid).values(
                    state="interrupted", notes=notes))

    def new_session(self, source: str, source_name: str, started_at: str, clock: str,
                    linktype: int | None = None, file_sha256: str | None = None,
                    command_line: str | None = None) -> int:
        """A ``running`` session owned by this process.  It records this usbtrace's
        version and the command line that made it (``command_line``, else the
        current one) so that a session can be traced to, and remade by, its command.
        The version is ``usbtrace.__version__``, which pyproject.toml reads, so it is
        what ``pip`` knows; not the installed metadata, whose import and lookup cost
        about 20 ms of CPU, nearly a tenth of importing a small capture."""
        values = (source, source_name, started_at, 0, 0, 0, 0, clock, linktype, file_sha256,
                  "running", HOST, os.getpid(), usbtrace.__version__,
                  command_line if command_line is not None else current_command_line())
        if self.path is not None:
            with self._begin() as conn:
                cursor = conn.execute(
                    f"INSERT INTO sessions ({', '.join(_NEW_SESSION)}) "
                    f"VALUES ({', '.join('?' for _ in _NEW_SESSION)})", values)
                session_id = cursor.lastrowid
                assert session_id is not None
        else:
            from sqlalchemy import insert

            from usbtrace.store.schema import SessionRow

            with self.engine.begin() as conn:
                result = conn.execute(insert(SessionRow).values(
                    **dict(zip(_NEW_SESSION, values))))
                session_id = int(result.inserted_primary_key[0])
        logger.info("session %d: %s %s", session_id, source, source_name)
        return session_id

    def end_session(self, session_id: int, state: str, note: str | None = None) -> None:
        """Give a session its final state, keeping what it already holds."""
        if self.path is not None:
            with self._begin() as conn:
                row = conn.execute("SELECT notes FROM sessions WHERE id = ?",
                                   (session_id,)).fetchone()
                notes = "; ".join(n for n in ((row[0] if row else None), note) if n) or None
                conn.execute("UPDATE sessions SET state = ?, notes = ? WHERE id = ?",
                             (state, notes, session_id))
            return
        from sqlalchemy import select
        from sqlalchemy import update as sql_update

        from usbtrace.store.schema import SessionRow

        with self.engine.begin() as conn:
            row = conn.execute(select(SessionRow.notes).where(SessionRow.id == session_id)
                               ).first()
            notes = "; ".join(n for n in ((row[0] if row else None), note) if n) or None
            conn.execute(sql_update(SessionRow).where(SessionRow.id == session_id)
                         .values(state=state, notes=notes))

    def finish_session(self, session_id: int, devices: list[dict[str, Any]],
                       **values: Any) -> None:
        """A session's devices and its final columns (counts, state, notes), in one
        transaction: the last thing a writer stores."""
        if self.path is not None:
            with self._begin() as conn:
                if devices:
                    conn.executemany(
                        f"INSERT INTO devices ({', '.join(_DEVICE_COLUMNS)}) "
                        f"VALUES ({', '.join('?' for _ in _DEVICE_COLUMNS)})",
                        [tuple(d[c] for c in _DEVICE_COLUMNS) for d in devices])
                self._update_session(conn, session_id, values)
            return
        from sqlalchemy import insert
        from sqlalchemy import update as sql_update

        from usbtrace.store.schema import DeviceRow, SessionRow

        with self.engine.begin() as conn:
            if devices:
                conn.execute(insert(DeviceRow), devices)
            conn.execute(sql_update(SessionRow).where(SessionRow.id == session_id)
                         .values(**values))

    def update_session(self, session_id: int, **values: Any) -> None:
        """Set some of a session's columns (``insert_batch`` sets its counts in the
        batch's own transaction instead)."""
        if self.path is not None:
            with self._begin() as conn:
                self._update_session(conn, session_id, values)
            return
        from sqlalchemy import update as sql_update

        from usbtrace.store.schema import SessionRow

        with self.engine.begin() as conn:
            conn.execute(sql_update(SessionRow).where(SessionRow.id == session_id)
                         .values(**values))

    @staticmethod
    def _update_session(conn: sqlite3.Connection, session_id: int,
                        values: dict[str, Any]) -> None:
        if values:
            assert all(name.isidentifier() for name in values)  # column names, not input
            conn.execute(f"UPDATE sessions SET {', '.join(f'{n} = ?' for n in values)} "
                         "WHERE id = ?", (*values.values(), session_id))

    def find_import(self, sha256: str) -> int | None:
        """An earlier complete import of the same bytes; interrupted or failed ones
        do not count."""
        if self.path is not None:
            row = self._connection().execute(
                "SELECT id FROM sessions WHERE file_sha256 = ? AND state = 'complete'",
                (sha256,)).fetchone()
            return int(row[0]) if row else None
        from sqlalchemy import select

        from usbtrace.store.schema import SessionRow

        with self.engine.connect() as conn:
            row = conn.execute(select(SessionRow.id).where(
                SessionRow.file_sha256 == sha256, SessionRow.state == "complete")).first()
        return int(row[0]) if row else None

    def delete_sessions(self, session_ids: list[int]) -> int:
        """Remove sessions and every row that belongs to them, in one transaction."""
        from sqlalchemy import text

        from usbtrace.store.schema import PUBLIC_TABLES

        tables = [t for t in PUBLIC_TABLES if t != "sessions"]
        with self.engine.begin() as conn:
            for sid in session_ids:
                for table in tables:
                    conn.execute(text(f"DELETE FROM {table} WHERE session_id = :sid"),
                                 {"sid": sid})
            deleted = 0
            for sid in session_ids:
                deleted += conn.execute(text("DELETE FROM sessions WHERE id = :sid"),
                                        {"sid": sid}).rowcount or 0
        return deleted

    def query(self, sql: str, params: dict[str, Any] | None = None
              ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement; rows as tuples."""
        with self.stream(sql, params) as (columns, rows):
            return columns, list(rows)

    @contextmanager
    def stream(self, sql: str, params: dict[str, Any] | None = None,
               timeout: float | None = None
               ) -> Iterator[tuple[list[str], Iterator[tuple[Any, ...]]]]:
        """One read-only statement, its rows as they come: memory does not grow with
        the result.  Writes are refused by an authorizer; ``timeout`` seconds or
        Ctrl-C stop it (``DatabaseError`` / ``KeyboardInterrupt``)."""
        if not self.is_sqlite:
            with self._stream_other(sql, params, timeout) as result:
                yield result
            return
        raw = self.engine.raw_connection()
        dbapi = raw.driver_connection
        assert isinstance(dbapi, sqlite3.Connection)
        try:
            with guarded(dbapi, timeout) as stop:
                try:
                    cursor = dbapi.execute(sql, params or {})
                except (sqlite3.Error, sqlite3.Warning) as e:
                    raise _query_error(e, stop, timeout) from None
                columns = [c[0] for c in cursor.description or []]

                def rows() -> Iterator[tuple[Any, ...]]:
                    try:
                        while chunk := cursor.fetchmany(1000):
                            yield from chunk
                            if stop["interrupted"]:
                                raise KeyboardInterrupt
                    except (sqlite3.Error, sqlite3.Warning) as e:
                        raise _query_error(e, stop, timeout) from None
                yield columns, rows()
                if stop["interrupted"]:
                    raise KeyboardInterrupt
        finally:
            raw.close()

    @contextmanager
    def _stream_other(self, sql: str, params: dict[str, Any] | None, timeout: float | None
                      ) -> Iterator[tuple[list[str], Iterator[tuple[Any, ...]]]]:
        from sqlalchemy import text
        from sqlalchemy.exc import DatabaseError as SADatabaseError

        with self.engine.connect() as conn:
            conn.execute(text("SET TRANSACTION READ ONLY"))
            if timeout and self.engine.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout * 1000)}"))
            # a server-side cursor streams a SELECT; anything else runs as it is, and the
            # read-only transaction refuses it
            streams = sql.lstrip().split(None, 1)[0].lower() in ("select", "with", "values",
                                                                 "table") if sql.strip() \
                else False
            try:
                result = conn.execution_options(stream_results=streams).execute(
                    text(sql), params or {})
            except SADatabaseError as e:
                raise DatabaseError(f"query failed: {e.orig}") from None
            columns = list(result.keys())
            yield columns, (tuple(r) for r in result)
            conn.rollback()

    def session_exists(self, session_id: int) -> bool:
        if not -(1 << 63) <= session_id < 1 << 63:
            return False
        if self.path is not None:
            return self._connection().execute("SELECT 1 FROM sessions WHERE id = ?",
                                              (session_id,)).fetchone() is not None
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1 FROM sessions WHERE id = :sid"),
                                {"sid": session_id}).first() is not None

    def stored_commands(self, session_id: int) -> Iterator[tuple[int, int, int | None,
                                                                 int | None, bytes, str]]:
        """A session's SCSI commands with their data phase, in order, as the
        attributor takes them: (seq, opcode, lba, blocks, data, status)."""
        sql = (
            "SELECT c.seq, c.opcode, c.lba, c.blocks, c.status, u.data FROM scsi_commands c "
            "LEFT JOIN urbs u ON u.session_id = c.session_id AND u.seq > c.cbw_seq "
            "AND u.seq < coalesce(c.csw_seq, c.cbw_seq + 1000000) "
            "AND u.bus IS NOT DISTINCT FROM c.bus AND u.device IS NOT DISTINCT FROM c.device "
            "AND u.transfer_type = 'bulk' AND u.data IS NOT NULL "
            "AND u.direction = (CASE c.data_direction WHEN 'in' THEN 'in' ELSE 'out' END) "
            "WHERE c.session_id = :sid AND c.name IN ('read_6', 'read_10', 'read_12', "
            "'read_16', 'write_6', 'write_10', 'write_12', 'write_16') ORDER BY c.seq, u.seq")
        if self.path is not None:
            yield from _joined(self._connection().execute(sql, {"sid": session_id}))
            return
        from sqlalchemy import text

        with self.engine.connect() as conn:
            yield from _joined(conn.execute(text(sql), {"sid": session_id}))

    def aggregate(self, expression: str, order: str = "id") -> str:
        """A comma-joined aggregate in this database's SQL dialect (in ``order``)."""
        if self.is_sqlite:
            return f"group_concat({expression}, ', ')"  # follows the scan, i.e. id order
        return f"string_agg({expression}, ', ' ORDER BY {order})"

    def checkpoint_apart(self, every: int = WAL_CHECKPOINT_EVERY,
                         limit: int = WAL_CHECKPOINT_LIMIT) -> Checkpointer | None:
        """From now on, this process's new connections leave checkpoints to a
        ``Checkpointer`` (returned; None for a database that is not a SQLite file in
        WAL mode).  Call it with no connection open (after ``engine.dispose``)."""
        if not self.is_sqlite or self.readonly or self.path is None:
            return None
        checkpointer = Checkpointer(self.path, every, limit)
        if not checkpointer.wal:
            checkpointer.close()
            return None
        self._connect_hooks.append(Checkpointer.writer_pragmas)
        if self._sa is not None:  # a file's SQLAlchemy engine, already made
            from sqlalchemy import event

            event.listen(self._sa, "connect", Checkpointer.writer_pragmas)
        return checkpointer

    def close(self) -> None:
        """Let go of the file.  The last writer to close turns WAL back into a
        rollback journal, so readers need no ``-shm`` file and a read-only folder
        works; while others still have it open, it stays in WAL."""
        self._drop_connection()
        if self._sa is not None:
            self._sa.dispose()
        if self.is_sqlite and not self.readonly and self.path is not None:
            try:
                conn = sqlite3.connect(str(self.path), timeout=0.1)
                try:
                    conn.execute("PRAGMA journal_mode=DELETE")
                finally:
                    conn.close()
            except sqlite3.Error:
                pass  # another process still writes: it will do this when it closes


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {name for name, in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
        "'sqlite~_%' ESCAPE '~'")}


def _joined(rows: Any) -> Iterator[tuple[int, int, int | None, int | None, bytes, str]]:
    """``stored_commands``' rows, one per command with its data URBs' bytes joined."""
    current: list[Any] | None = None
    for seq, opcode, lba, blocks, status, data in rows:
        if current is not None and current[0] != seq:
            yield tuple(current)  # type: ignore[misc]
            current = None
        if current is None:
            current = [seq, opcode, lba, blocks, b"", status]
        if data:
            current[4] += bytes(data)
    if current is not None:
        yield tuple(current)  # type: ignore[misc]


def _driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; the ``postgres`` extra installs
    psycopg 3, so use it when psycopg2 is absent."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and \
                importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _query_error(e: BaseException, stop: dict[str, bool], timeout: float | None
                 ) -> BaseException:
    return query_error(e, stop, timeout, VIEW_NAMES)
