"""stats, extract, timeline, report and the filters on PostgreSQL give what they give
on SQLite (runs where USBTRACE_TEST_POSTGRES names a server; .ci/run starts one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from usbtrace.cli import main

from .conftest import shared_capture

URL = os.environ.get("USBTRACE_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not URL, reason="USBTRACE_TEST_POSTGRES is not set "
                                "(.ci/run sets it after starting PostgreSQL)")


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _packets(path: Path) -> list[tuple[float, int, bytes]]:
    """The export's packets: its section header also names the command line that made
    the session, which differs with the database's name."""
    from usbtrace.capture.pcap import CaptureReader

    with open(path, "rb") as stream:
        return [(ts, linktype, data) for _, ts, linktype, data, *_ in
                CaptureReader(stream).records()]


def test_analysis_agrees_between_databases(tmp_path: Path) -> None:
    assert URL is not None
    engine = create_engine(URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    capture = str(shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"))
    lite = str(tmp_path / "l.db")
    outputs = {}
    for name, db in (("pg", URL), ("lite", lite)):
        code, _, err = cli("import", "--db", db, "-q", capture)
        assert code == 0, err
        code, stats, err = cli("stats", "1", "--db", db, "--format", "json", "--interval", "1",
                               "--opcode", "read_10", "--opcode", "write_10", "--lba", "300-",
                               "--file", "/[bd]*")
        assert code == 0, err
        code, _, err = cli("extract", "1", "--db", db, "-o", str(tmp_path / f"x-{name}"),
                           "--file", "/docs/*")
        assert code == 0, err
        code, _, err = cli("timeline", "1", "--db", db, "-o", str(tmp_path / f"{name}.json"))
        assert code == 0, err
        code, _, err = cli("report", "1", "--db", db, "-o", str(tmp_path / f"{name}.html"))
        assert code == 0, err
        code, _, err = cli("export", "1", "--db", db, "-o", str(tmp_path / f"{name}.pcapng"),
                           "--status", "good", "--opcode", "write_10", "--file", "/docs/*")
        assert code == 0, err
        outputs[name] = (json.loads(stats),
                         (tmp_path / f"x-{name}" / "SHA256SUMS").read_text(),
                         json.loads((tmp_path / f"{name}.json").read_text())["traceEvents"],
                         _packets(tmp_path / f"{name}.pcapng"))
    assert outputs["lite"][3], "the filtered export holds packets"
    assert outputs["pg"] == outputs["lite"]
