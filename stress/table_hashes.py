"""A hash of every table's rows, ordered, after importing captures: the check that a
change to the import path stores exactly what it stored before.

Run the same command with the code before and after, and compare the lines:

  PYTHONPATH=/path/to/before python stress/table_hashes.py a.pcap b.pcapng
  PYTHONPATH=/path/to/after  python stress/table_hashes.py a.pcap b.pcapng

Each capture is imported into a fresh database in a temporary directory, in one
process (the inserter is not forked, so the run is the same whatever the load;
``--fork`` forks it for every capture of 8 MiB or more), with file attribution on;
``--no-files`` turns it off; ``--url`` stores through SQLAlchemy, as a URL does.
Per capture one line per table: its
name, its row count and the SHA-256 of its rows in primary-key order.  The
``sessions`` table is hashed without the columns that differ from run to run (the
file's path, the writing process, its command line).
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import sys
import tempfile
from pathlib import Path

VOLATILE = {"sessions": {"source_name", "writer_pid", "writer_host", "command_line"}}


def table_hashes(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    lines = []
    names = [r[0] for r in con.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    for name in names:
        columns = [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')
                   if r[1] not in VOLATILE.get(name, set())]
        keys = [r[1] for r in sorted(con.execute(f'PRAGMA table_info("{name}")'),
                                     key=lambda r: r[5]) if r[5]] or ["rowid"]
        digest = hashlib.sha256()
        count = 0
        select = ", ".join(f'"{c}"' for c in columns)
        order = ", ".join(f'"{k}"' for k in keys)
        for row in con.execute(f'SELECT {select} FROM "{name}" ORDER BY {order}'):
            digest.update(repr(row).encode())
            count += 1
        lines.append(f"{name} {count} {digest.hexdigest()[:16]}")
    con.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("captures", nargs="+", type=Path)
    parser.add_argument("--no-files", action="store_true")
    parser.add_argument("--fork", action="store_true", help="store in a forked inserter")
    parser.add_argument("--url", action="store_true",
                        help="open the database by a sqlite:/// URL, through SQLAlchemy")
    args = parser.parse_args()
    import usbtrace.importing
    from usbtrace.importing import import_capture
    from usbtrace.store.database import Database

    fork = args.fork
    usbtrace.importing.spare_core = lambda: fork  # type: ignore[assignment]
    for capture in args.captures:
        if not capture.exists():
            print(f"{capture}: not found", file=sys.stderr)
            sys.exit(2)
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "h.db"
            # a plain path: the sqlite3 writer import and record use (``--url`` for
            # the SQLAlchemy one a URL takes)
            database = Database(f"sqlite:///{db}" if args.url else db)
            import_capture(database, capture, attribute_files=not args.no_files)
            database.engine.dispose()
            print(f"== {capture.name}")
            for line in table_hashes(db):
                print(f"  {line}")


if __name__ == "__main__":
    main()
