"""``usbtrace replay`` exit codes: 0 identical, 1 divergence, 2 bad input or error,
130 interrupted; every error is one line on stderr, never a traceback."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import usbtrace.replay.run
import usbtrace.replay.spill
from usbtrace.cli import main

CAPTURE = Path(__file__).resolve().parent.parent / "captures" / "raw-workload-4M.pcapng"


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_error_line(result: tuple[int, str, str], text: str) -> None:
    code, _, err = result
    assert code == 2, err
    assert err.startswith("usbtrace: error: ") and err.count("\n") == 1, err
    assert text in err


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "u.db"
    assert cli("import", str(CAPTURE), "--db", str(path), "-q")[0] == 0
    return path


def test_identical_is_0_and_divergence_is_1(tmp_path: Path) -> None:
    assert cli("replay", str(CAPTURE))[0] == 0
    bigger = tmp_path / "bigger.img"  # READ CAPACITY answers 8M, not the recorded 4M
    bigger.write_bytes(bytes(8 << 20))
    code, out, _ = cli("replay", str(CAPTURE), "--mode", "host", "--against", str(bigger))
    assert code == 1 and "read_capacity_10" in out


def test_a_directory_as_source(tmp_path: Path) -> None:
    one_error_line(cli("replay", str(tmp_path)), "is a directory")


def test_an_unreadable_source() -> None:
    # /proc/self/mem opens but fails on read at offset 0 (EIO), as a bad medium would
    if not Path("/proc/self/mem").exists():
        pytest.skip("no /proc")
    one_error_line(cli("replay", "/proc/self/mem"), "/proc/self/mem")


def test_json_into_a_missing_folder_fails_before_replaying(tmp_path: Path) -> None:
    result = cli("replay", str(CAPTURE), "--json", str(tmp_path / "no" / "r.json"))
    one_error_line(result, "does not exist")
    assert "identical" not in result[1]  # nothing was replayed, so nothing claimed


def test_json_onto_the_database_is_refused(db: Path) -> None:
    before = db.read_bytes()
    one_error_line(cli("replay", "session:1", "--db", str(db), "--json", str(db)),
                   "is the database")
    assert db.read_bytes() == before


def test_json_onto_the_capture_is_refused(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcapng"
    shutil.copy(CAPTURE, capture)
    one_error_line(cli("replay", str(capture), "--json", str(capture)), "is the recording")
    assert capture.read_bytes() == CAPTURE.read_bytes()


def test_json_onto_a_directory_is_refused(tmp_path: Path) -> None:
    one_error_line(cli("replay", str(CAPTURE), "--json", str(tmp_path)), "is a directory")


def test_json_is_written_whole_with_nothing_left_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    one_error_line(cli("replay", str(CAPTURE), "--json", str(target)), "--force")
    assert target.read_text() == "old"
    assert cli("replay", str(CAPTURE), "--json", str(target), "--force")[0] == 0
    body = json.loads(target.read_text())
    assert body["identical"] is True and body["replayed"] == body["commands"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("option, value, text", [
    ("--max-gap", "-5", "--max-gap"), ("--max-gap", "nan", "--max-gap"),
    ("--speed", "0", "--speed"), ("--speed", "-1", "--speed"), ("--speed", "nan", "--speed"),
    ("--speed", "inf", "--speed"),
])
def test_bad_timing_options(option: str, value: str, text: str) -> None:
    extra = ["--speed", "1"] if option == "--max-gap" else []
    one_error_line(cli("replay", str(CAPTURE), "--mode", "host", *extra, option, value), text)


@pytest.mark.parametrize("source", ["session:9223372036854775808",
                                    "session:99999999999999999999", "session:0",
                                    "18446744073709551616"])
def test_session_numbers_out_of_range(db: Path, source: str) -> None:
    one_error_line(cli("replay", source, "--db", str(db)), "no such session")


def test_ctrl_c_is_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(usbtrace.replay.run, "replay_device", interrupted)
    code, _, err = cli("replay", str(CAPTURE))
    assert code == 130 and err == "usbtrace: interrupted\n"


@pytest.mark.parametrize("state", ["interrupted", "failed", "running"])
def test_an_incomplete_session_is_refused(db: Path, state: str) -> None:
    with sqlite3.connect(db) as conn:  # "running" by a writer that is gone: interrupted
        conn.execute("UPDATE sessions SET state = ?, writer_pid = 999999999", (state,))
    shown = "interrupted" if state == "running" else state
    one_error_line(cli("replay", "session:1", "--db", str(db)), f"session 1 is {shown}")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sessions SET state = 'complete'")
    assert cli("replay", "1", "--db", str(db))[0] == 0


def test_host_replay_against_an_image_never_writes_it(tmp_path: Path) -> None:
    image = tmp_path / "start.img"
    image.write_bytes(bytes(4 << 20))
    code, out, _ = cli("replay", str(CAPTURE), "--mode", "host", "--against", str(image))
    assert code == 0, out
    assert image.read_bytes() == bytes(4 << 20)  # the recording's writes stayed in memory


def test_a_pipe_as_source_is_refused_not_read_twice(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    one_error_line(cli("replay", str(fifo)), "not a regular file")


@pytest.mark.parametrize("kept", [True, False], ids=["commands kept", "no room to keep"])
def test_a_capture_cut_after_the_survey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        kept: bool) -> None:
    """The survey keeps its commands for the replay, so cutting the capture after it
    changes nothing.  Where it could keep none (no room on disk), the replay decodes the
    capture again, and the cut is found out."""
    if not kept:
        monkeypatch.setattr(usbtrace.replay.spill, "SPILL_LIMIT", 0)
    capture = tmp_path / "c.pcapng"
    shutil.copy(CAPTURE, capture)
    surveyed = usbtrace.replay.run.load

    def load_then_cut(source: str, db: str | None = None,
                      device: tuple[int, int] | None = None) -> object:
        recording = surveyed(source, db, device)
        capture.write_bytes(CAPTURE.read_bytes()[: CAPTURE.stat().st_size // 2])
        return recording

    monkeypatch.setattr(usbtrace.replay.run, "load", load_then_cut)
    if kept:
        assert cli("replay", str(capture))[0] == 0
    else:
        one_error_line(cli("replay", str(capture)), "changed while it was replayed")
