"""A database changed by hand, or damaged, may hold a value no capture format can carry
(a bus number past 16 bits, an endpoint past 8, a time past any timestamp): export says
so on one line, exits 2, and leaves no output file behind."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main


@pytest.mark.parametrize("linktype,output", [("usbpcap", "o.pcapng"), ("usbmon", "o.pcapng"),
                                             ("usbmon", "o.pcap")])
@pytest.mark.parametrize("damage", ["bus = 70000", "endpoint = 999",
                                    "submitted_at = 1e300"])
def test_a_value_no_format_carries_is_one_line_and_no_file(recorded_4m: Path, tmp_path: Path,
                                                           linktype: str, output: str,
                                                           damage: str) -> None:
    db = tmp_path / "d.db"
    shutil.copy(recorded_4m, db)
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE urbs SET {damage} WHERE seq = (SELECT min(seq) + 5 FROM urbs)")
    out = tmp_path / output
    result = CliRunner().invoke(main, ["export", "1", "--db", str(db), "-o", str(out),
                                       "--linktype", linktype])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot carry" in lines[0] and "damaged" in lines[0]
    assert "internal error" not in lines[0] and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d.db"]  # no temporary file left


def test_the_undamaged_session_still_exports(recorded_4m: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.pcapng"
    result = CliRunner().invoke(main, ["export", "1", "--db", str(recorded_4m), "-o", str(out)])
    assert result.exit_code == 0 and out.stat().st_size > 0
