"""File-level attribution: which file every block belongs to."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usbtrace.fs.shadow import Attributor
from usbtrace.importing import import_capture
from usbtrace.recording import RecordOptions, record
from usbtrace.store.database import Database

from .conftest import shared_capture
from .fileactivity import rebuild


@pytest.fixture(scope="module")
def truth_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[sqlite3.Connection, dict]:
    db = tmp_path_factory.mktemp("truth") / "t.db"
    import_capture(Database(db), shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"))
    truth = json.loads(shared_capture("linux-qemu-fat16-xhci.truth.json").read_text())
    return sqlite3.connect(db), truth


def final_name(path: str, truth: dict) -> str:
    for op in truth["operations"]:
        if op["op"] == "rename" and op["path"] == path:
            path = op["new_path"]
    return path


def test_written_bytes_rebuild_each_file_of_the_truth(truth_session) -> None:  # type: ignore[no-untyped-def]
    conn, truth = truth_session
    written = rebuild(conn, 1, "write")
    finals = {f["path"]: f for f in truth["final_files"]}
    for op in truth["operations"]:
        if op["op"] != "write" or not op["bytes"]:
            continue
        name = final_name(op["path"], truth)
        data = bytes(written[name])
        if name in finals:  # still there at the end: the last content is the final file
            final = finals[name]
            assert len(data) == final["size"] and \
                hashlib.sha256(data).hexdigest() == final["sha256"], name
        else:  # deleted later: what was written is what the write op wrote
            assert len(data) == op["bytes"] and hashlib.sha256(data).hexdigest() == \
                op["sha256"], name
    # nothing is attributed to a file that the run did not write
    known = {final_name(op["path"], truth) for op in truth["operations"] if "path" in op}
    assert set(written) <= known


def test_read_bytes_rebuild_the_files_that_were_read(truth_session) -> None:  # type: ignore[no-untyped-def]
    conn, truth = truth_session
    read = rebuild(conn, 1, "read")
    for op in truth["operations"]:
        if op["op"] == "read":
            data = bytes(read[final_name(op["path"], truth)])
            assert len(data) == op["bytes"]
            assert hashlib.sha256(data).hexdigest() == op["sha256"]


def test_file_events_on_the_right_paths(truth_session) -> None:  # type: ignore[no-untyped-def]
    conn, _ = truth_session
    events = conn.execute("SELECT operation, path, detail FROM file_activity "
                          "WHERE kind='event' ORDER BY id").fetchall()
    assert ("renamed", "/big-renamed.bin", "from /big.bin") in events
    assert ("moved", "/docs/nested-moved.txt", "from /docs/sub/nested.txt") in events
    assert ("deleted", "/README.TXT", "first cluster 5") in events
    created = {p for op, p, _ in events if op == "created"}
    assert {"/docs", "/docs/sub", "/README.TXT", "/docs/medium.bin", "/big.bin",
            "/docs/sub/nested.txt", "/empty.dat",
            "/A long file name with spaces – ünïcödé.txt"} <= created
    extended = {p for op, p, _ in events if op == "extended"}
    assert "/big.bin" in extended
    # metadata is labelled
    kinds = {k for (k,) in conn.execute("SELECT DISTINCT kind FROM file_activity")}
    assert {"boot_sector", "fat", "directory", "data"} <= kinds


def test_wireshark_fat16_captures_name_their_files(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    first = import_capture(db, shared_capture("ajbanjara__usb_memory_stick.pcap"))
    conn = sqlite3.connect(tmp_path / "t.db")
    assert conn.execute("SELECT count(*) FROM file_activity WHERE kind='directory' AND "
                        "path='/' AND session_id=?", (first.session_id,)).fetchone()[0] > 0
    # the second capture starts with the stick mounted: alone, its geometry is inferred
    # (tests/test_infer.py), and every row says so
    alone = import_capture(db, shared_capture("ajbanjara__usb_memory_stick_create_file.pcap"))
    details = {d for (d,) in conn.execute("SELECT DISTINCT detail FROM file_activity WHERE "
                                          "session_id=? AND kind != 'unknown'",
                                          (alone.session_id,))}
    assert details and all("inferred" in (d or "") for d in details)
    # continuing the first capture's volume, its directory entries and text have names
    after = import_capture(db, shared_capture("ajbanjara__usb_memory_stick_create_file.pcap"),
                           force=True, after=first.session_id)
    events = conn.execute("SELECT operation, path FROM file_activity WHERE session_id=? AND "
                          "kind='event'", (after.session_id,)).fetchall()
    assert ("created", "/new file") in events
    data = rebuild(conn, after.session_id, "write")
    assert b"this is a test on a text file" in bytes(data["/new file"])


def test_exfat_capture_names_the_volume_files(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    import_capture(db, shared_capture("ajbanjara__USBMSC-USBPcap.pcapng"))
    conn = sqlite3.connect(tmp_path / "t.db")
    paths = {p for (p,) in conn.execute("SELECT DISTINCT path FROM file_activity "
                                        "WHERE kind='data'")}
    assert paths == {"/System Volume Information/IndexerVolumeGuid",
                     "/System Volume Information/WPSettings.dat"}
    kinds = {k for (k,) in conn.execute("SELECT DISTINCT kind FROM file_activity")}
    assert {"allocation_bitmap", "upcase_table", "partition_table"} <= kinds


def test_a_capture_without_metadata_says_unknown(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    import_capture(db, shared_capture("ctfs__fore2.pcap"))
    conn = sqlite3.connect(tmp_path / "t.db")
    assert {k for (k,) in conn.execute("SELECT DISTINCT kind FROM file_activity")} == \
        {"unknown"}
    assert conn.execute("SELECT count(*) FROM file_activity WHERE path IS NOT NULL"
                        ).fetchone()[0] == 0


def _sector(data: bytes) -> bytes:
    return data.ljust(512, b"\0")


def test_other_file_systems_are_named_not_guessed() -> None:
    a = Attributor(window=0)
    ntfs = _sector(b"\xebR\x90NTFS    " + bytes(499)[:-2]) [:510] + b"\x55\xaa"
    a.feed(1, 0x28, 0, 1, ntfs, "good")
    rows = a.feed(2, 0x28, 100, 1, bytes(512), "good") + a.flush()
    assert [(r.kind, r.detail) for r in rows if r.lba == 100] == [("unsupported", "ntfs")]
    b = Attributor(window=0)
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"", 0x83, b"", 2048, 100000)
    mbr[510:512] = b"\x55\xaa"
    b.feed(1, 0x28, 0, 1, bytes(mbr), "good")
    rows = b.feed(2, 0x2A, 4096, 8, bytes(4096), "good") + b.flush()
    assert rows[-1].kind == "unsupported" and "linux" in (rows[-1].detail or "")


@pytest.mark.parametrize("fs", ["fat12", "fat16", "fat32"])
def test_files_workload_every_byte_goes_to_the_right_path(tmp_path: Path, fs: str) -> None:
    db = tmp_path / "f.db"
    summary = record(RecordOptions(db=str(db), size="64M", workload="files", fs=fs))
    assert summary.workload.ok
    conn = sqlite3.connect(db)
    written = rebuild(conn, 1, "write")
    read = rebuild(conn, 1, "read")
    for op in summary.workload.operations:
        if op.operation == "write" and op.size:
            assert hashlib.sha256(bytes(written[op.path])).hexdigest() == op.sha256, op.path
        if op.operation == "read" and op.size:
            assert hashlib.sha256(bytes(read[op.path])).hexdigest() == op.sha256, op.path
    events = conn.execute("SELECT operation, path FROM file_activity WHERE kind='event'"
                          ).fetchall()
    deleted = [op.path for op in summary.workload.operations if op.operation == "delete"]
    assert ("deleted", deleted[0]) in events


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.dictionaries(
    st.tuples(st.sampled_from(["", "/a", "/a/b", "/c"]),
              st.text("abcdefghij0123456789 _-", min_size=1, max_size=20)),
    st.integers(1, 40_000), min_size=1, max_size=6))
def test_attribution_agrees_with_the_fat_implementation(tmp_path: Path, spec: dict) -> None:
    """Random trees and write orders: the log's LBAs for each file are the clusters
    pyfatfs itself allocated to it."""
    import random

    from usbtrace.devices.image import DiskImage
    from usbtrace.devices.simulated import SimulatedStick
    from usbtrace.machine import Machine
    from usbtrace.store.writer import Recorder, SessionWriter
    from usbtrace.workloads import files as files_workload

    tree = {f"{d}/{name.strip() or 'x'}.bin": random.Random(size).randbytes(size)
            for (d, name), size in spec.items()}
    db_path = tmp_path / f"h{abs(hash(tuple(sorted(tree))))}.db"
    database = Database(db_path)
    sid = database.new_session("simulated", "hypothesis", "now", "virtual")
    recorder = Recorder(SessionWriter(database, sid))
    stick = SimulatedStick(DiskImage.in_memory(8 << 20))
    machine = Machine(stick, sink=recorder).start()
    original = files_workload.sample_tree
    files_workload.sample_tree = lambda seed=7: tree  # type: ignore[assignment]
    try:
        result = files_workload.files(machine, fat="fat12")
    finally:
        files_workload.sample_tree = original  # type: ignore[assignment]
        machine.stop()
        recorder.close()
    assert result.ok
    # pyfatfs's own view of where each surviving file lives, from the final image
    import datetime
    import io

    from pyfatfs.PyFatFS import PyFatBytesIOFS

    fs = PyFatBytesIOFS(io.BytesIO(bytes(stick.image.view)), lazy_load=False)
    fs.tz = datetime.timezone.utc
    conn = sqlite3.connect(db_path)
    pf = fs.fs
    for path in tree:
        if not fs.exists(path):
            continue
        entry = fs._get_dir_entry(path)
        if not entry.get_cluster():
            continue
        lbas = set()
        for cluster in pf.get_cluster_chain(entry.get_cluster()):
            first = pf.get_data_cluster_address(cluster) // 512
            lbas.update(range(first, first + pf.bytes_per_cluster // 512))
        logged = set()
        for lba, length in conn.execute("SELECT lba, length FROM file_activity WHERE path=? "
                                        "AND kind='data' AND operation='write'", (path,)):
            logged.update(range(lba, lba + -(-length // 512)))
        assert logged and logged <= lbas, path
    fs.close()


def _fat_image(path: Path, name: str, content: bytes) -> None:
    import datetime

    import pyfatfs.PyFat as pyfat_module  # noqa: N813
    from pyfatfs.PyFatFS import PyFatFS

    with open(path, "wb") as f:
        f.truncate(4 << 20)
    fat = pyfat_module.PyFat()
    fat.mkfs(str(path), pyfat_module.PyFat.FAT_TYPE_FAT12, size=4 << 20)
    fat.close()
    fs = PyFatFS(str(path))
    fs.tz = datetime.timezone.utc
    with fs.openbin(name, "w") as out:
        out.write(content)
    fs.close()


def test_two_sticks_in_one_session_keep_their_volumes_apart(tmp_path: Path) -> None:
    from usbtrace.devices.image import DiskImage
    from usbtrace.devices.simulated import SimulatedStick
    from usbtrace.drivers import usbhub
    from usbtrace.machine import Machine
    from usbtrace.store.writer import Recorder, SessionWriter

    _fat_image(tmp_path / "a.img", "/only-on-a.txt", b"A" * 3000)
    _fat_image(tmp_path / "b.img", "/only-on-b.txt", b"B" * 3000)
    db = Database(tmp_path / "two.db")
    sid = db.new_session("simulated", "two sticks", "now", "virtual")
    recorder = Recorder(SessionWriter(db, sid))
    first = SimulatedStick(DiskImage.open(tmp_path / "a.img"))
    second = SimulatedStick(DiskImage.open(tmp_path / "b.img"))
    second.strings[3] = "UT0000000002"
    machine = Machine(first, sink=recorder).start()
    assert machine.root is not None
    usbhub.plug(machine.root, second)
    for number in (0, 1):
        h = machine.win32.CreateFile(f"\\\\.\\PhysicalDrive{number}")
        machine.win32.ReadFile(h, bytearray(256 * 1024), 0)  # boot sector, FATs, root, data
        machine.win32.CloseHandle(h)
    machine.stop()
    recorder.close()
    first.close()
    second.close()
    conn = sqlite3.connect(tmp_path / "two.db")
    rows = conn.execute(
        "SELECT c.device, f.path FROM file_activity f JOIN scsi_commands c "
        "ON c.session_id = f.session_id AND c.seq = f.scsi_seq WHERE f.kind = 'data'"
    ).fetchall()
    by_device: dict[int, set[str]] = {}
    for device, path in rows:
        by_device.setdefault(device, set()).add(path)
    assert by_device == {1: {"/only-on-a.txt"}, 2: {"/only-on-b.txt"}}
