"""The commands that only read a SQLite file read it with ``sqlite3`` alone.

Importing SQLAlchemy and the schema's mapped classes is most of a short command's
CPU (about half a second on the project's machine, against 0.1 s for ``usbtrace log``
of a small session without it), so ``store.sqlite_read.open_read_only`` gives them a
``SqliteReader`` for a file and a ``Database`` only for a URL.  Both must answer alike.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import shared_capture
from usbtrace.cli import main
from usbtrace.store.database import Database
from usbtrace.store.schema import VIEWS
from usbtrace.store.sqlite_read import VIEW_NAMES, SqliteReader, open_read_only

READ_COMMANDS = [["sessions"], ["log", "1"], ["files", "1"], ["stats", "1"],
                 ["query", "SELECT count(*) FROM urbs"]]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("read") / "u.db"
    result = CliRunner().invoke(main, ["import", "-q", "--db", str(db),
                                       str(shared_capture("ajbanjara__usb_memory_stick.pcap"))])
    assert result.exit_code == 0, result.output
    return db


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: a[0])
def test_a_read_command_does_not_import_sqlalchemy(imported: Path, args: list[str]) -> None:
    script = ("import sys\nfrom usbtrace.cli import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
              "print('exit', code, 'sqlalchemy' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script, *args, "--db", str(imported)],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "exit 0 False", done.stdout + done.stderr


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: a[0])
def test_a_url_reads_the_same_through_sqlalchemy(imported: Path, args: list[str]) -> None:
    by_file = CliRunner().invoke(main, [*args, "--db", str(imported), "--format", "json"])
    by_url = CliRunner().invoke(main, [*args, "--db", f"sqlite:///{imported}",
                                       "--format", "json"])
    assert by_file.exit_code == by_url.exit_code == 0, by_file.output + by_url.output
    assert by_file.stdout == by_url.stdout


def test_open_read_only_picks_by_target(imported: Path) -> None:
    reader = open_read_only(imported)
    database = open_read_only(f"sqlite:///{imported}")
    try:
        assert isinstance(reader, SqliteReader) and isinstance(database, Database)
        for sid in (1, 2, 0, -1, 1 << 63):
            assert reader.session_exists(sid) == database.session_exists(sid)
        assert reader.aggregate("x") == database.aggregate("x")
    finally:
        reader.close()
        database.close()


def test_the_reader_knows_the_documented_views() -> None:
    assert sorted(VIEW_NAMES) == sorted(VIEWS)


def test_a_view_the_database_lacks_is_named_on_one_line(imported: Path, tmp_path: Path
                                                        ) -> None:
    older = tmp_path / "older.db"
    older.write_bytes(imported.read_bytes())
    with sqlite3.connect(older) as conn:
        conn.execute("DROP VIEW command_data")
    result = CliRunner().invoke(main, ["query", "SELECT * FROM command_data",
                                       "--db", str(older)])
    assert result.exit_code == 2
    assert "'usbtrace upgrade' adds it" in result.stderr
