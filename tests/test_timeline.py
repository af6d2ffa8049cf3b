"""usbtrace timeline: valid Chrome trace events, slices properly nested."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .conftest import shared_capture

PHASES = {"X", "i", "M"}


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def load(path: Path) -> list[dict[str, Any]]:
    """The trace's events, each checked against the trace-event format."""
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    assert isinstance(events, list) and events
    for e in events:
        assert e["ph"] in PHASES and isinstance(e["name"], str) and e["name"]
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "process_sort_index",
                                 "thread_sort_index")
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
        else:
            assert e["s"] in ("t", "p", "g")
    named = {(e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"}
    used = {(e["pid"], e["tid"]) for e in events if e["ph"] != "M"}
    assert used <= named  # every track has a name
    return events


def nesting(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Assert that slices on each track nest (in whole nanoseconds, as Perfetto reads
    them); return each slice's chain of parents by id()."""
    tracks: dict[tuple[int, int], list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            start = round(e["ts"] * 1000)
            tracks[(e["pid"], e["tid"])].append((start, start + round(e["dur"] * 1000), e))
    parents: dict[int, list[dict[str, Any]]] = {}
    for slices in tracks.values():
        slices.sort(key=lambda s: (s[0], -s[1]))
        stack: list[tuple[int, int, dict[str, Any]]] = []
        for start, end, e in slices:
            while stack and stack[-1][1] <= start and not (stack[-1][0] == start == end):
                stack.pop()
            assert not stack or end <= stack[-1][1], (stack[-1][2], e)
            parents[id(e)] = [s[2] for s in stack]
            stack.append((start, end, e))
    return parents


def test_recorded_session_nests_read_srb_urbs(tmp_path: Path) -> None:
    db = str(tmp_path / "u.db")
    code, _, err = invoke("record", "--db", db, "--size", "4M", "--sleep")
    assert code == 0, err
    out = tmp_path / "trace.json"
    code, stdout, err = invoke("timeline", "1", "--db", db, "-o", str(out))
    assert code == 0 and "trace events" in stdout, err
    events = load(out)
    parents = nesting(events)
    conn = sqlite3.connect(db)
    reads = [e for e in events if e.get("cat") == "irp" and e["name"] == "READ"]
    assert len(reads) == conn.execute("SELECT count(*) FROM irps WHERE position = 'upper' "
                                      "AND major = 'read'").fetchone()[0] > 0
    chains = [[p["cat"] for p in parents[id(e)]] for e in events
              if e["ph"] == "X" and e["cat"] == "urb"]
    assert ["irp", "scsi"] in chains  # URB inside an SRB inside a READ
    srbs = [e for e in events if e.get("cat") == "scsi"]
    assert len(srbs) == conn.execute("SELECT count(*) FROM scsi_commands").fetchone()[0]
    under_read = [e for e in srbs if parents[id(e)] and parents[id(e)][0]["name"] in
                  ("READ", "WRITE")]
    assert under_read and all(e["name"].startswith(("READ", "WRITE")) for e in under_read)
    assert {e["cat"] for e in events if e["ph"] == "i"} == {"pnp", "power"}
    threads = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {"upper", "lower"} <= threads
    urbs = conn.execute("SELECT count(*) FROM urbs").fetchone()[0]
    assert len([e for e in events if e.get("cat") == "urb"]) == urbs  # each exactly once


def test_imported_capture_has_file_names_and_every_urb(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    database = Database(db)
    import_capture(database, shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"))
    database.close()
    out = tmp_path / "trace.json"
    code, _, err = invoke("timeline", "1", "--db", str(db), "-o", str(out))
    assert code == 0, err
    events = load(out)
    parents = nesting(events)
    srbs = [e for e in events if e.get("cat") == "scsi"]
    assert len(srbs) == 206
    assert any("/docs/medium.bin @0" in (e["args"].get("files") or "") for e in srbs)
    in_commands = [e for e in events if e.get("cat") == "urb" and "command_seq" in e["args"]]
    assert in_commands and all(parents[id(e)] and parents[id(e)][-1]["cat"] == "scsi"
                               for e in in_commands)
    conn = sqlite3.connect(db)
    assert len([e for e in events if e.get("cat") == "urb"]) == \
        conn.execute("SELECT count(*) FROM urbs").fetchone()[0]
    code, _, err = invoke("timeline", "1", "--db", str(db), "-o", str(out))
    assert code == 2 and "--force" in err


@pytest.mark.parametrize("name", ["ajbanjara__BT_USB_LinCooked_Eth_80211_RT.ntar",
                                  "ajbanjara__USBMSC-USBPcap.pcapng"])
def test_many_devices_and_luns_nest(tmp_path: Path, name: str) -> None:
    db = tmp_path / "t.db"
    import_capture(Database(db), shared_capture(name))
    out = tmp_path / "trace.json"
    code, _, err = invoke("timeline", "1", "--db", str(db), "-o", str(out))
    assert code == 0, err
    nesting(load(out))
