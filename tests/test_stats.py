"""usbtrace stats: the same service response times as Wireshark's SCSI SRT table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.analysis.stats import nearest_rank, pick_percentiles
from usbtrace.cli import main
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from . import tshark
from .conftest import STORAGE_CAPTURES, shared_capture


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def storage_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    """Every shared storage capture imported once: (database, session by capture)."""
    db = tmp_path_factory.mktemp("stats") / "s.db"
    database = Database(db)
    sessions = {}
    for name in STORAGE_CAPTURES:
        path = shared_capture(name)
        sessions[name] = import_capture(database, path, attribute_files=False).session_id
    database.close()
    return str(db), sessions


@pytest.mark.skipif(not tshark.available(), reason="tshark is not installed")
@pytest.mark.parametrize("name", STORAGE_CAPTURES)
def test_stats_equal_wiresharks_srt_table(storage_db: tuple[str, dict[str, int]],
                                          name: str) -> None:
    db, sessions = storage_db
    code, out, err = invoke("stats", str(sessions[name]), "--db", db, "--section", "srt",
                            "--format", "json")
    assert code == 0, err
    ours = {int(r["opcode"], 16): r for r in json.loads(out)["srt"]}
    theirs = tshark.scsi_srt(shared_capture(name))
    assert ours, "no commands"
    answered = {op: r for op, r in ours.items() if r["calls"]}
    if not theirs:  # no enumeration seen: Wireshark pairs CBW and CSW but keeps no table
        frames = tshark.srt_from_frames(shared_capture(name))
        assert frames and set(frames) == set(answered)
        for opcode, (calls, mean) in frames.items():
            assert answered[opcode]["calls"] == calls
            assert abs(answered[opcode]["srt_mean"] - mean) <= 1e-6, (name, opcode)
        return
    assert set(answered) == set(theirs)
    for opcode, row in theirs.items():
        mine = answered[opcode]
        assert mine["calls"] == row.calls, (name, row.procedure)
        assert abs(mine["srt_mean"] - row.avg) <= 1e-6, (name, row.procedure)
        assert abs(mine["srt_min"] - row.min) <= 1e-6 and abs(mine["srt_max"] - row.max) <= 1e-6
        assert mine["srt_min"] <= mine["srt_p50"] <= mine["srt_p90"] <= mine["srt_p99"] \
            <= mine["srt_max"]


def test_commands_without_answer_count_but_have_no_service_time(
        storage_db: tuple[str, dict[str, int]]) -> None:
    db, sessions = storage_db
    sid = sessions["ajbanjara__usb_memory_stick.pcap"]  # one READ(10) CBW has no CSW
    code, out, _ = invoke("stats", str(sid), "--db", db, "--format", "json")
    tables = json.loads(out)
    read = next(r for r in tables["srt"] if r["command"] == "read_10")
    assert read["commands"] == read["calls"] + 1 and read["errors"] == 1
    errors = {(r["command"], r["status"], r["sense_key"]): r["count"] for r in tables["errors"]}
    assert errors[("read_10", "missing", None)] == 1
    assert errors[("test_unit_ready", "check_condition", "unit_attention")] == 1
    assert errors[("prevent_allow_medium_removal", "check_condition", "illegal_request")] == 1


def test_throughput_adds_up_to_the_bytes_moved(storage_db: tuple[str, dict[str, int]]) -> None:
    db, sessions = storage_db
    sid = sessions["linux-qemu-fat16-xhci.usbmon.pcap"]
    _, out, _ = invoke("stats", str(sid), "--db", db, "--format", "json", "--interval", "0.5")
    tables = json.loads(out)
    slices = tables["throughput"]
    total = sum(r["bytes"] for r in tables["srt"])
    assert sum(r["bytes_in"] + r["bytes_out"] for r in slices) == total
    assert sum(r["commands"] for r in slices) == sum(r["commands"] for r in tables["srt"])
    times = [r["time"] for r in slices]
    assert all(math.isclose(b - a, 0.5) for a, b in zip(times, times[1:]))  # gaps filled
    writes = next(r for r in tables["srt"] if r["command"] == "write_10")
    assert sum(r["bytes_out"] for r in slices) == writes["bytes"]
    code, out, _ = invoke("stats", str(sid), "--db", db, "--section", "throughput",
                          "--interval", "1", "-t", "a", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("2026-11-21T04:45:")


def test_per_device_splits_by_device_and_lun(storage_db: tuple[str, dict[str, int]]) -> None:
    db, sessions = storage_db
    sid = sessions["ajbanjara__STM32L052-Nucleo-via-hub-usbmon.pcapng"]
    _, out, _ = invoke("stats", str(sid), "--db", db, "--per-device", "--format", "json")
    rows = json.loads(out)["srt"]
    assert {(r["device"], r["lun"]) for r in rows} == {("2.28", 0)}


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pick_percentiles(iter(values), 100) == {50: 50.0, 90: 90.0, 99: 99.0}
    assert pick_percentiles(iter([3.0]), 1) == {50: 3.0, 90: 3.0, 99: 3.0}
    assert [nearest_rank(p, 10) for p in (50, 90, 99)] == [5, 9, 10]


def test_bad_input_is_one_line(tmp_path: Path, storage_db: tuple[str, dict[str, int]]) -> None:
    db, _ = storage_db
    for args in (["stats", "999", "--db", db], ["stats", "1", "--db", str(tmp_path / "no.db")],
                 ["stats", "1", "--db", db, "--section", "throughput"],
                 ["stats", "1", "--db", db, "--opcode", "0x1ff"]):
        code, out, err = invoke(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, args
    code, _, err = invoke("stats", "1", "--db", db, "--interval", "0")  # click's usage error
    assert code == 2 and "--interval" in err and "Traceback" not in err
