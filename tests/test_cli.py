"""The command line: outputs, and one-line errors for bad input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from usbtrace.cli import main


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_record_sessions_and_query(tmp_path: Path) -> None:
    db = str(tmp_path / "u.db")
    code, out, _ = invoke("record", "--db", db, "--size", "4M")
    assert code == 0 and "read back equals written" in out and "SCSI commands" in out
    code, out, _ = invoke("sessions", "--db", db)
    assert code == 0 and "simulated" in out and "(1 row)" in out
    code, out, _ = invoke("query", "SELECT name, count(*) AS n FROM scsi_commands GROUP BY name "
                          "ORDER BY name", "--db", db, "--format", "json")
    counts = {r["name"]: r["n"] for r in json.loads(out)}
    # usbstor's start-up, its CreatePDO (standard and VPD 0x80), the disk-arrival
    # pass-through and the workload's own: the Windows 10 start-up has four INQUIRYs
    assert counts["inquiry"] == 5 and counts["read_10"] > 0
    code, out, _ = invoke("query", "SELECT seq, data FROM urbs LIMIT 1", "--db", db,
                          "--format", "csv")
    assert out.splitlines()[0] == "seq,data"


def test_query_is_read_only(tmp_path: Path) -> None:
    db = str(tmp_path / "u.db")
    invoke("record", "--db", db, "--size", "4M")
    code, _, err = invoke("query", "DELETE FROM urbs", "--db", db)
    assert code == 2 and "readonly" in err.replace("-", "") and err.count("\n") == 1
    assert sqlite3.connect(db).execute("SELECT count(*) FROM urbs").fetchone()[0] > 0


def test_bad_size_is_one_line(tmp_path: Path) -> None:
    code, _, err = invoke("record", "--db", str(tmp_path / "u.db"), "--size", "12Q")
    assert code == 2 and err.startswith("usbtrace: error: bad size '12Q'")
    assert "Traceback" not in err


def test_missing_image_folder_and_database(tmp_path: Path) -> None:
    code, _, err = invoke("record", "--db", str(tmp_path / "nope" / "u.db"))
    assert code == 2 and "does not exist" in err
    code, _, err = invoke("sessions", "--db", str(tmp_path / "absent.db"))
    assert code == 2 and "no such database" in err


def test_a_database_that_is_not_ours(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE accounts (id INTEGER)")
    code, _, err = invoke("sessions", "--db", str(other))
    assert code == 2 and "not a usbtrace database" in err
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, _, err = invoke("record", "--db", str(text))
    assert code == 2 and "not a usbtrace database" in err and text.read_text() == "hello"


def test_image_file_is_created_and_reused(tmp_path: Path) -> None:
    image = tmp_path / "stick.img"
    code, _, _ = invoke("record", "--db", str(tmp_path / "u.db"), "--image", str(image),
                        "--size", "2M")
    assert code == 0 and image.stat().st_size == 2 << 20
    bad = tmp_path / "odd.img"
    bad.write_bytes(b"x" * 1000)
    code, _, err = invoke("record", "--db", str(tmp_path / "u.db"), "--image", str(bad))
    assert code == 2 and "512-byte blocks" in err


def test_log_shows_commands_with_their_files(tmp_path: Path) -> None:
    db = str(tmp_path / "u.db")
    code, _, _ = invoke("record", "--db", db, "--size", "8M", "--workload", "files")
    assert code == 0
    code, out, _ = invoke("log", "1", "--db", db, "--format", "json")
    rows = json.loads(out)
    writes = [r for r in rows if r["command"] == "write_10" and r["blocks_belong_to"]]
    assert any("/docs/report.pdf @" in r["blocks_belong_to"] for r in writes)
    assert any("created /README.TXT" in r["blocks_belong_to"] for r in writes)
    code, out, _ = invoke("log", "1", "--db", db, "--limit", "3")
    assert code == 0 and "(3 rows)" in out
    code, _, err = invoke("log", "7", "--db", db)
    assert code == 2 and "no session 7" in err
