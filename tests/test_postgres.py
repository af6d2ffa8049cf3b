"""The same tables in PostgreSQL, by URL (runs where USBTRACE_TEST_POSTGRES names one;
.ci/run starts a local server for it)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from usbtrace.cli import main

from .conftest import shared_capture

URL = os.environ.get("USBTRACE_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not URL, reason="USBTRACE_TEST_POSTGRES is not set "
                                "(.ci/run sets it after starting PostgreSQL)")


@pytest.fixture
def pg() -> str:
    assert URL is not None
    engine = create_engine(URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return URL


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_record_import_files_replay_in_postgres(pg: str, tmp_path: Path) -> None:
    code, out, err = cli("record", "--db", pg, "--size", "8M")
    assert code == 0 and "read back equals written" in out, err
    database_line = next(line for line in out.splitlines() if "database" in line)
    assert "***" in database_line  # the password is not printed
    capture = str(shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"))
    assert cli("import", capture, "--db", pg)[0] == 0
    assert cli("import", capture, "--db", str(tmp_path / "lite.db"))[0] == 0
    q = ("SELECT seq, tag, opcode, lba, blocks, status, residue FROM scsi_commands "
         "WHERE session_id = {} ORDER BY seq")
    engine = create_engine(pg)
    with engine.connect() as conn:
        in_pg = [tuple(r) for r in conn.execute(text(q.format(2)))]
        files = [tuple(r) for r in conn.execute(text(
            "SELECT path, operation FROM file_activity WHERE session_id = 2 AND kind = 'event' "
            "ORDER BY id"))]
    engine.dispose()
    in_sqlite = sqlite3.connect(tmp_path / "lite.db").execute(q.format(1)).fetchall()
    assert in_pg == in_sqlite and len(in_pg) == 206
    assert ("/big-renamed.bin", "renamed") in files
    code, out, _ = cli("files", "2", "--db", pg)
    assert code == 0 and "/docs/medium.bin" in out
    code, out, err = cli("log", "2", "--db", pg, "--format", "json")
    assert code == 0 and any(r["blocks_belong_to"] == "/docs/medium.bin @0"
                             for r in json.loads(out)), err
    assert cli("replay", "session:1", "--db", pg)[0] == 0
    code, _, err = cli("query", "DELETE FROM urbs", "--db", pg)
    assert code == 2 and "read-only" in err
