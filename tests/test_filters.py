"""Filters on log, files, stats, export and extract, each on a shared capture.

Each expectation is computed here in Python from the unfiltered rows, and the
command's SQL filter must keep exactly those."""

from __future__ import annotations

import fnmatch
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from usbtrace.analysis.filters import Filter, TimeFormat, build_filter, parse_range
from usbtrace.cli import main
from usbtrace.errors import InputError
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .conftest import shared_capture

FAT16, READERS = 1, 2  # sessions of the module's database


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("filters") / "f.db"
    database = Database(path)
    # the FAT16 run: files and LBAs; the card readers and modem: devices, LUNs, errors
    assert import_capture(database, shared_capture("linux-qemu-fat16-xhci.usbmon.pcap")
                          ).session_id == FAT16
    assert import_capture(database, shared_capture(
        "ajbanjara__BT_USB_LinCooked_Eth_80211_RT.ntar")).session_id == READERS
    database.close()
    return str(path)


def commands(db: str, session: int) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT c.*, d.vid, d.pid FROM scsi_commands c LEFT JOIN devices d "
                        "ON d.session_id = c.session_id AND d.bus = c.bus AND "
                        "d.device = c.device WHERE c.session_id = ? ORDER BY c.cbw_seq, c.seq",
                        (session,)).fetchall()
    return [dict(r) for r in rows]


def logged(db: str, session: int, *options: str) -> list[int]:
    code, out, err = invoke("log", str(session), "--db", db, "--format", "json", *options)
    assert code == 0, err
    return [r["seq"] for r in json.loads(out)]


def stats_count(db: str, session: int, *options: str) -> int:
    code, out, err = invoke("stats", str(session), "--db", db, "--format", "json",
                            "--section", "srt", *options)
    assert code == 0, err
    return sum(r["commands"] for r in json.loads(out)["srt"])


def check(db: str, session: int, options: list[str], keep: Any) -> list[int]:
    """log and stats keep exactly the commands ``keep`` accepts, and some but not all."""
    rows = commands(db, session)
    expected = [r["seq"] for r in rows if keep(r)]
    assert 0 < len(expected) < len(rows), options  # a filter that filters
    assert logged(db, session, *options) == expected, options
    assert stats_count(db, session, *options) == len(expected), options
    return expected


def test_device_by_vid_pid_and_by_bus_address(db: str) -> None:
    rows = commands(db, READERS)
    some = next(r for r in rows if r["vid"] is not None)
    vidpid = f"{some['vid']:04x}:{some['pid']:04x}"
    by_id = check(db, READERS, ["--device", vidpid],
                  lambda r: (r["vid"], r["pid"]) == (some["vid"], some["pid"]))
    by_address = check(db, READERS, ["--device", f"{some['bus']}.{some['device']}"],
                       lambda r: (r["bus"], r["device"]) == (some["bus"], some["device"]))
    assert by_id == by_address


def test_lun(db: str) -> None:
    check(db, READERS, ["--lun", "1"], lambda r: r["lun"] == 1)


def test_opcode_by_name_and_number(db: str) -> None:
    by_name = check(db, READERS, ["--opcode", "TEST UNIT READY"], lambda r: r["opcode"] == 0)
    assert logged(db, READERS, "--opcode", "0x00") == by_name
    check(db, FAT16, ["--opcode", "read_10", "--opcode", "42"],
          lambda r: r["opcode"] in (0x28, 0x2A))


def test_lba_range_keeps_commands_that_touch_it(db: str) -> None:
    def touches(r: dict[str, Any]) -> bool:
        return r["lba"] is not None and r["lba"] <= 400 and \
            r["lba"] + max(r["blocks"] or 0, 1) - 1 >= 300
    check(db, FAT16, ["--lba", "300-400"], touches)
    check(db, FAT16, ["--lba", "6000-"], lambda r: r["lba"] is not None and
          r["lba"] + max(r["blocks"] or 0, 1) - 1 >= 6000)


def test_status(db: str) -> None:
    check(db, READERS, ["--status", "check_condition"], lambda r: r["status"] == "check_condition")


def test_file_glob(db: str) -> None:
    conn = sqlite3.connect(db)
    owners = {seq for seq, path in conn.execute(
        "SELECT scsi_seq, path FROM file_activity WHERE session_id = ? AND path IS NOT NULL",
        (FAT16,)) if fnmatch.fnmatchcase(path, "/docs/*")}
    check(db, FAT16, ["--file", "/docs/*"], lambda r: r["seq"] in owners)
    code, out, _ = invoke("files", str(FAT16), "--db", db, "--format", "json", "--file",
                          "/docs/*")
    assert code == 0 and {r["path"] for r in json.loads(out)} == \
        {"/docs/medium.bin", "/docs/sub/nested.txt", "/docs/nested-moved.txt", "/docs/sub"}


def test_time_range(db: str) -> None:
    check(db, FAT16, ["--time", "9-10.5"], lambda r: r["submitted_at"] <= 10.5 and
          (r["completed_at"] if r["completed_at"] is not None else r["submitted_at"]) >= 9)


def test_where(db: str) -> None:
    check(db, FAT16, ["--where", "c.data_length > 65536"], lambda r: r["data_length"] > 65536)
    code, _, err = invoke("log", str(FAT16), "--db", db, "--where", "c.nothing = 1")
    assert code == 2 and err.count("\n") == 1 and "nothing" in err
    code, _, err = invoke("log", str(FAT16), "--db", db, "--where", "1); DELETE FROM urbs; --")
    assert code == 2 and err.count("\n") == 1


def test_filters_combine_and_reach_files_export_and_extract(db: str, tmp_path: Path) -> None:
    expected = check(db, FAT16, ["--opcode", "write_10", "--file", "/docs/*"],
                     lambda r: r["opcode"] == 0x2A and r["seq"] in {
                         s for (s,) in sqlite3.connect(db).execute(
                             "SELECT scsi_seq FROM file_activity WHERE path GLOB '/docs/*'")})
    code, out, _ = invoke("files", str(FAT16), "--db", db, "--format", "json",
                          "--opcode", "write_10", "--time", "0-10")
    reads = {r["path"]: r["bytes_read"] for r in json.loads(out)}
    assert code == 0 and reads and not any(reads.values())
    pcap = tmp_path / "w.pcapng"
    code, out, err = invoke("export", str(FAT16), "--db", db, "-o", str(pcap),
                            "--opcode", "write_10", "--file", "/docs/*")
    assert code == 0, err
    # every command's CBW, data and CSW URBs, nothing else
    conn = sqlite3.connect(db)
    urbs = sum(conn.execute("SELECT count(*) FROM urbs u JOIN scsi_commands c ON "
                            "c.session_id = u.session_id AND u.seq BETWEEN c.cbw_seq AND "
                            "c.csw_seq AND u.bus = c.bus AND u.device = c.device WHERE "
                            "c.session_id = ? AND c.seq = ?", (FAT16, s)).fetchone()[0]
               for s in expected)
    assert f"from {urbs} URBs" in out
    out_dir = tmp_path / "x"
    for glob in ("/big*", "/big.bin", "*renamed*"):  # any of the file's names
        code, _, err = invoke("extract", str(FAT16), "--db", db, "-o", str(out_dir),
                              "--file", glob, "--force")
        assert code == 0, err
        (only,) = json.loads((out_dir / "manifest.json").read_text())["files"]
        assert only["path"] == "/big-renamed.bin" and only["complete"], glob


def test_time_formats(db: str) -> None:
    _, out, _ = invoke("log", str(FAT16), "--db", db, "--format", "json", "--limit", "3")
    relative = [r["time"] for r in json.loads(out)]
    _, out, _ = invoke("log", str(FAT16), "--db", db, "--format", "json", "--limit", "3",
                       "-t", "d")
    assert [r["time"] for r in json.loads(out)] == \
        [0.0] + [round(b - a, 6) for a, b in zip(relative, relative[1:])]
    _, out, _ = invoke("log", str(FAT16), "--db", db, "--format", "json", "--limit", "1",
                       "-t", "a")
    (row,) = json.loads(out)
    assert row["time"].startswith("2026-11-21T04:45:") and row["time"].endswith("Z")
    assert TimeFormat("a", 0.0).value(1.5, None) == "1970-01-01T00:00:01.500000Z"


def test_bad_filters_are_one_line(db: str) -> None:
    for option in (["--device", "nope"], ["--lba", "9-3"], ["--lba", "a-b"],
                   ["--time", "x"], ["--opcode", "300"], ["--status", "no good"],
                   ["--where", " "]):
        code, _, err = invoke("log", str(FAT16), "--db", db, *option)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, option
    with pytest.raises(InputError):
        parse_range("-", "--lba")
    assert build_filter().empty and Filter().commands_sql() == ("1=1", {})


def test_urb_condition_listed_once_equals_searched_per_urb(db: str) -> None:
    database = Database(db, create=False, readonly=True)
    flt = build_filter(status=["check_condition"], lun=[1])
    seen = []
    for session in (None, READERS):
        cond, params = flt.urbs_sql("u", session)
        _, rows = database.query(f"SELECT u.seq FROM urbs u WHERE u.session_id = :s AND "
                                 f"{cond} ORDER BY u.seq", {**params, "s": READERS})
        seen.append([r[0] for r in rows])
    assert seen[0] == seen[1] and len(seen[0]) > 0


def test_glob_regex_means_what_sqlite_glob_means() -> None:
    import re

    from usbtrace.analysis.filters import glob_regex

    names = ["/docs/a.txt", "/docs/sub/b.TXT", "/doc", "/big.bin", "/big-renamed.bin",
             "/x(1)+.bin", "/A long file name – ü.txt", "/a]b", "/c"]
    conn = sqlite3.connect(":memory:")
    for pattern in ("/docs/*", "*.txt", "/big?bin", "/[ab]*", "/[^ab]*", "/x(1)+.bin",
                    "*ü*", "/[]a]*", "*"):
        sqlite = [n for n in names if conn.execute("SELECT ? GLOB ?", (n, pattern)
                                                   ).fetchone()[0]]
        regex = [n for n in names if re.search(glob_regex(pattern), n)]
        assert regex == sqlite, pattern


def test_log_is_one_timeline_across_devices_and_luns(db: str) -> None:
    """Commands of several devices and LUNs come in the order they were sent, each
    with its device (bus.address) and LUN: the log never goes back in time."""
    code, out, err = invoke("log", str(READERS), "--db", db, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    assert len({(r["device"], r["lun"]) for r in rows}) >= 4
    code, out, _ = invoke("files", str(FAT16), "--db", db, "--format", "json")
    files = json.loads(out)
    assert len({(r["device"], r["lun"]) for r in files}) == 1 and files[0]["lun"] == 0
