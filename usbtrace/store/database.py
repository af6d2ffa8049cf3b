"""Opening a usbtrace database: a SQLite file by default, any SQLAlchemy URL otherwise.

A database is ours when it has the ``usbtrace_meta`` table with a schema
version we read; an empty file becomes ours; anything else is refused with a
message, never altered.  SQLite runs in WAL mode so readers never block the
writer thread.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, inspect, make_url, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError

from usbtrace.errors import DatabaseError
from usbtrace.store.schema import SCHEMA_VERSION, Base, Meta, SessionRow

_URL = re.compile(r"^[a-z][a-z0-9+]*://", re.IGNORECASE)


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # 64 KiB pages: a full-speed bulk payload fits one page instead of a chain of 16
    # overflow pages, which doubles the rate at which SQLite takes payloads.  It only
    # takes effect on a new, empty file.
    cursor.execute("PRAGMA page_size=4096")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    def __init__(self, target: str | Path, create: bool = True, readonly: bool = False) -> None:
        target = str(target)
        self.target = target
        self.display = target  # what messages show: no password
        if _URL.match(target):
            url = _driver(target)
            self.is_sqlite = target.startswith("sqlite")
        else:
            path = Path(target)
            if path.is_dir():
                raise DatabaseError(f"{path}: is a directory; give a database file name")
            if not path.exists():
                if not create:
                    raise DatabaseError(f"{path}: no such database (run 'usbtrace record' or "
                                        "'usbtrace import' first)")
                if not path.parent.exists():
                    raise DatabaseError(f"{path}: folder {path.parent} does not exist")
            elif path.stat().st_size and not _looks_like_sqlite(path):
                raise DatabaseError(f"{path}: not a usbtrace database (not SQLite)")
            url = f"sqlite:///{path}"
            self.is_sqlite = True
        try:
            self.display = make_url(target).render_as_string(hide_password=True) \
                if _URL.match(target) else target
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False} if self.is_sqlite else {})
        except Exception as e:  # bad URL, missing driver
            raise DatabaseError(f"cannot open {target}: {e}") from None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.readonly = readonly
        self._check_or_create(create and not readonly)

    def _check_or_create(self, create: bool) -> None:
        try:
            names = set(inspect(self.engine).get_table_names())
        except (OperationalError, SADatabaseError, sqlite3.DatabaseError) as e:
            first = (str(getattr(e, "orig", e)).strip().splitlines() or ["?"])[0]
            raise DatabaseError(f"{self.display}: cannot read database: {first}") from None
        if "usbtrace_meta" in names:
            with self.engine.connect() as conn:
                row = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).first()
            version = int(row[0]) if row else 0
            if version != SCHEMA_VERSION:
                raise DatabaseError(f"{self.target}: schema version {version}, this usbtrace "
                                    f"reads version {SCHEMA_VERSION}")
            return
        if names:
            raise DatabaseError(f"{self.target}: not a usbtrace database "
                                f"(has tables {', '.join(sorted(names)[:5])})")
        if not create:
            raise DatabaseError(f"{self.target}: empty database, nothing recorded yet")
        Base.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            conn.execute(insert(Meta), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])

    def new_session(self, source: str, source_name: str, started_at: str, clock: str,
                    linktype: int | None = None, file_sha256: str | None = None) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(insert(SessionRow).values(
                source=source, source_name=source_name, started_at=started_at, clock=clock,
                linktype=linktype, file_sha256=file_sha256, record_count=0, dropped_count=0,
                malformed_count=0, command_count=0, complete=False))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def find_import(self, sha256: str) -> int | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(SessionRow.id).where(
                SessionRow.file_sha256 == sha256, SessionRow.complete.is_(True))).first()
        return int(row[0]) if row else None

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement; rows as tuples."""
        if self.is_sqlite:
            raw = self.engine.raw_connection()
            try:
                dbapi = raw.driver_connection
                assert dbapi is not None
                dbapi.execute("PRAGMA query_only=ON")
                try:
                    cursor = dbapi.execute(sql)
                    columns = [c[0] for c in cursor.description or []]
                    rows = cursor.fetchall()
                except (sqlite3.Error, sqlite3.Warning) as e:
                    raise DatabaseError(f"query failed: {e}") from None
                finally:
                    dbapi.execute("PRAGMA query_only=OFF")
                return columns, rows
            finally:
                raw.close()
        with self.engine.connect() as conn:
            conn.execute(text("SET TRANSACTION READ ONLY"))
            try:
                result = conn.execute(text(sql))
            except SADatabaseError as e:
                raise DatabaseError(f"query failed: {e.orig}") from None
            columns = list(result.keys())
            rows = [tuple(r) for r in result]
            conn.rollback()
            return columns, rows

    def session_exists(self, session_id: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(SessionRow.id).where(SessionRow.id == session_id)
                                ).first() is not None

    def stored_commands(self, session_id: int) -> Iterator[tuple[int, int, int | None,
                                                                 int | None, bytes, str]]:
        """A session's SCSI commands with their data phase, in order, as the
        attributor takes them: (seq, opcode, lba, blocks, data, status)."""
        sql = text(
            "SELECT c.seq, c.opcode, c.lba, c.blocks, c.status, u.data FROM scsi_commands c "
            "LEFT JOIN urbs u ON u.session_id = c.session_id AND u.seq > c.cbw_seq "
            "AND u.seq < coalesce(c.csw_seq, c.cbw_seq + 1000000) "
            "AND u.bus IS NOT DISTINCT FROM c.bus AND u.device IS NOT DISTINCT FROM c.device "
            "AND u.transfer_type = 'bulk' AND u.data IS NOT NULL "
            "AND u.direction = (CASE c.data_direction WHEN 'in' THEN 'in' ELSE 'out' END) "
            "WHERE c.session_id = :sid AND c.name IN ('read_6', 'read_10', 'read_12', "
            "'read_16', 'write_6', 'write_10', 'write_12', 'write_16') ORDER BY c.seq, u.seq")
        with self.engine.connect() as conn:
            current: list[Any] | None = None
            for seq, opcode, lba, blocks, status, data in conn.execute(sql, {"sid": session_id}):
                if current is not None and current[0] != seq:
                    yield tuple(current)  # type: ignore[misc]
                    current = None
                if current is None:
                    current = [seq, opcode, lba, blocks, b"", status]
                if data:
                    current[4] += bytes(data)
            if current is not None:
                yield tuple(current)  # type: ignore[misc]

    def aggregate(self, expression: str, order: str = "id") -> str:
        """A comma-joined aggregate in this database's SQL dialect (in ``order``)."""
        if self.is_sqlite:
            return f"group_concat({expression}, ', ')"  # follows the scan, i.e. id order
        return f"string_agg({expression}, ', ' ORDER BY {order})"

    def close(self) -> None:
        self.engine.dispose()


def _driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; the ``postgres`` extra installs
    psycopg 3, so use it when psycopg2 is absent."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and \
                importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _looks_like_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\0"
