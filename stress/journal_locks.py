"""What a reader holding a read transaction does to a writer's commit, layout by layout.

The facts behind the live store's design (README, "Architecture"; benchmarks/RESULTS.md,
round 10): one SQLite file in WAL mode lets the writer commit past a reader; with a
rollback journal (the only mode that writes an appended page once) the commit waits for
the reader and fails after the busy timeout, and so it does on a payload file attached
in rollback mode; a view stored in the main file cannot name the attached file; and a
payload segment the writer holds in exclusive locking mode makes the reader fail
instead of the writer.  Each line: the layout, and what happened.

Run:  python stress/journal_locks.py [--busy-ms 1000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BLOB = os.urandom(64 * 1024)


def held_read(path: Path, table: str) -> sqlite3.Connection:
    """A connection in the middle of a read transaction, as a long query keeps one."""
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute(f"SELECT count(*) FROM {table}").fetchone()
    return reader


def commit_past(writer: sqlite3.Connection, table: str, busy_ms: int) -> str:
    writer.execute(f"PRAGMA busy_timeout={busy_ms}")
    start = time.perf_counter()
    try:
        writer.execute("BEGIN")
        writer.executemany(f"INSERT INTO {table} VALUES (?)", [(BLOB,)] * 16)
        writer.execute("COMMIT")
        return f"commit ok after {time.perf_counter() - start:.3f} s"
    except sqlite3.Error as e:
        writer.execute("ROLLBACK")
        return f"commit FAILED after {time.perf_counter() - start:.3f} s: {e}"


def one_file(folder: Path, journal: str) -> Callable[[], tuple[sqlite3.Connection, Path, str]]:
    def make() -> tuple[sqlite3.Connection, Path, str]:
        path = folder / f"one-{journal}.db"
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute(f"PRAGMA journal_mode={journal}")
        writer.execute("CREATE TABLE t (b BLOB)")
        writer.execute("INSERT INTO t VALUES (x'00')")
        return writer, path, "t"
    return make


def split(folder: Path) -> tuple[sqlite3.Connection, Path, str]:
    writer = sqlite3.connect(folder / "meta.db", isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute(f"ATTACH '{folder / 'payloads.db'}' AS pl")
    writer.execute("PRAGMA pl.journal_mode=TRUNCATE")
    writer.execute("CREATE TABLE pl.p (b BLOB)")
    writer.execute("INSERT INTO pl.p VALUES (x'00')")
    return writer, folder / "payloads.db", "pl.p"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy-ms", type=int, default=1000, help="the writer's busy timeout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, make in (("one file, WAL (the application's)", one_file(folder, "WAL")),
                            ("one file, rollback journal", one_file(folder, "TRUNCATE")),
                            ("metadata WAL + payload file (rollback), reader on payloads",
                             lambda: split(folder))):
            writer, path, table = make()
            reader = held_read(path, table.split(".")[-1])
            print(f"  {label:60} {commit_past(writer, table, args.busy_ms)}")
            reader.execute("COMMIT")
            reader.close()
            writer.close()
        main_db = sqlite3.connect(folder / "meta.db")
        main_db.execute(f"ATTACH '{folder / 'payloads.db'}' AS pl")
        try:
            main_db.execute("CREATE VIEW v AS SELECT * FROM pl.p")
            outcome = "created"
        except sqlite3.Error as e:
            outcome = f"refused: {e}"
        print(f"  {'a view stored in meta.db over the attached payloads':60} {outcome}")
        main_db.execute("CREATE TEMP VIEW v AS SELECT * FROM pl.p")
        rows = main_db.execute("SELECT count(*) FROM v").fetchone()[0]
        print(f"  {'a TEMP view (this connection only)':60} ok, {rows} rows")
        main_db.close()
        segment = folder / "segment-1.db"
        writer = sqlite3.connect(segment, isolation_level=None)
        writer.execute("PRAGMA journal_mode=TRUNCATE")
        writer.execute("PRAGMA locking_mode=EXCLUSIVE")
        writer.execute("CREATE TABLE p (b BLOB)")
        print(f"  {'a payload segment the writer holds EXCLUSIVE: the writer':60} "
              f"{commit_past(writer, 'p', args.busy_ms)}")
        reader = sqlite3.connect(segment, timeout=args.busy_ms / 1000)
        start = time.perf_counter()
        try:
            reader.execute("SELECT count(*) FROM p").fetchone()
            outcome = "read it"
        except sqlite3.Error as e:
            outcome = f"FAILED after {time.perf_counter() - start:.3f} s: {e}"
        print(f"  {'... a reader of that segment':60} {outcome}")
        print(f"  {'... and the next commit':60} "
              f"{commit_past(writer, 'p', args.busy_ms)}")
        writer.close()
        rows = reader.execute("SELECT count(*) FROM p").fetchone()[0]
        print(f"  {'... the reader, once the writer closed the segment':60} {rows} rows")
        reader.close()


if __name__ == "__main__":
    main()
