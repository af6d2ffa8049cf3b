"""Importing real third-party captures: agreement with Wireshark, truncation, robustness."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import struct
from pathlib import Path

import pytest

from usbtrace.capture import usbmon
from usbtrace.capture.pcap import CaptureReader, PcapngWriter
from usbtrace.errors import CaptureFormatError
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from . import tshark
from .conftest import STORAGE_CAPTURES, shared_capture

STORAGE = STORAGE_CAPTURES
NOT_STORAGE = ["Flameeyes__test1.pcap", "ctfs__TinyThumb.pcap"]
STATUS = {"good": 0, "check_condition": 1, "phase_error": 2, "missing": None}
# Wireshark fills scsi_sbc.rdwr10.* for these opcodes
RDWR10 = {0x28, 0x2A, 0x2F, 0x35}


def imported(tmp_path: Path, name: str) -> tuple[sqlite3.Connection, int]:
    database = Database(tmp_path / "t.db")
    result = import_capture(database, shared_capture(name))
    assert result.malformed == [], result.malformed
    return sqlite3.connect(tmp_path / "t.db"), result.session_id  # type: ignore[return-value]


@pytest.mark.parametrize("name", NOT_STORAGE)
def test_non_storage_captures_give_urbs_and_no_commands(tmp_path: Path, name: str) -> None:
    conn, sid = imported(tmp_path, name)
    assert conn.execute("SELECT count(*) FROM urbs").fetchone()[0] > 0
    assert conn.execute("SELECT count(*) FROM scsi_commands").fetchone()[0] == 0


@pytest.mark.skipif(not tshark.available(), reason="tshark is not on PATH (.ci/run installs it)")
@pytest.mark.parametrize("name", STORAGE)
def test_scsi_commands_agree_with_wireshark(tmp_path: Path, name: str) -> None:
    conn, sid = imported(tmp_path, name)
    ours = [(tag, op, lba if op in RDWR10 else None, blocks if op in RDWR10 else None,
             STATUS[status])
            for tag, op, lba, blocks, status in conn.execute(
                "SELECT tag, opcode, lba, blocks, status FROM scsi_commands ORDER BY seq")]
    theirs = [(c.tag, c.opcode, c.lba, c.blocks, c.status)
              for c in tshark.scsi_commands(shared_capture(name))]
    frames = [c.frame for c in tshark.scsi_commands(shared_capture(name))]
    assert len(ours) == len(theirs) > 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"command {i + 1} (tshark frame {frames[i]}): {a} != {b}"


def test_truncated_payload_is_recorded_not_hidden(tmp_path: Path) -> None:
    conn, _ = imported(tmp_path, "ctfs__fore2.pcap")
    rows = conn.execute("SELECT actual_length, requested_length, captured_length FROM urbs "
                        "WHERE truncated").fetchall()
    assert (None, 241664, 61440) in [(None, r, c) for _, r, c in rows]
    (flag,), = conn.execute("SELECT count(*) FROM scsi_commands WHERE data_truncated")
    assert flag == 1


def test_31_byte_data_in_is_data_not_a_cbw(tmp_path: Path) -> None:
    conn, _ = imported(tmp_path, "ajbanjara__USBMSC-USBPcap.pcapng")
    rows = conn.execute("SELECT seq, expected_length, data_length, residue, status "
                        "FROM scsi_commands WHERE hex(cdb) = '12018000FF00'").fetchall()
    # the serial-number VPD page: 31 bytes came, the CSW says 255 - 219 = 36 were sent
    assert [r[1:] for r in rows] == [(255, 31, 219, "good")]
    following = conn.execute("SELECT name FROM scsi_commands WHERE seq = ?",
                             (rows[0][0] + 1,)).fetchone()
    assert following is not None  # decoding went on in step with the device


def test_check_condition_carries_the_sense_of_the_following_request_sense(
        tmp_path: Path) -> None:
    conn, _ = imported(tmp_path, "ajbanjara__usb_memory_stick.pcap")
    rows = conn.execute("SELECT name, sense_key, asc FROM scsi_commands "
                        "WHERE status='check_condition'").fetchall()
    assert len(rows) == 2 and all(key is not None for _, key, _ in rows)
    assert conn.execute("SELECT count(*) FROM scsi_commands WHERE status='missing'"
                        ).fetchone()[0] == 1  # the INDEX's CBW with no CSW


def test_device_identity_from_descriptors(tmp_path: Path) -> None:
    conn, _ = imported(tmp_path, "ajbanjara__STM32L052-Nucleo-via-hub-usbmon.pcapng")
    rows = conn.execute("SELECT vid, pid, mass_storage_interfaces FROM devices").fetchall()
    assert (0x0483, 0x374B, "1") in rows


def test_written_data_rebuilds_the_files_of_the_truth_file(tmp_path: Path) -> None:
    name = "linux-qemu-fat16-xhci.usbmon.pcap"
    conn, sid = imported(tmp_path, name)
    truth = json.loads(shared_capture("linux-qemu-fat16-xhci.truth.json").read_text())
    origin, = conn.execute("SELECT time_origin FROM sessions").fetchone()
    writes = conn.execute(
        "SELECT c.lba, c.completed_at, (SELECT group_concat(hex(u.data), '') FROM urbs u "
        " WHERE u.session_id = c.session_id AND u.seq > c.cbw_seq AND u.seq < c.csw_seq "
        " AND u.bus = c.bus AND u.device = c.device AND u.transfer_type = 'bulk' "
        " AND u.direction = 'out') FROM scsi_commands c WHERE c.name = 'write_10' "
        "AND c.status = 'good' ORDER BY c.seq").fetchall()
    image = bytearray(truth["image"]["size_bytes"])
    extents_ops = [op for op in truth["operations"] if op["op"] == "extents"]
    expected = {op["path"]: op["sha256"] for op in truth["operations"]
                if op["op"] == "write"}
    checked = 0
    pending = list(writes)
    for snapshot, wanted in ((extents_ops[0], expected),
                             (extents_ops[-1], {f["path"]: f["sha256"]
                                                for f in truth["final_files"]})):
        while pending and origin + pending[0][1] < snapshot["t_end"]:
            lba, _, data = pending.pop(0)
            blob = bytes.fromhex(data)
            image[lba * 512 : lba * 512 + len(blob)] = blob
        for path, digest in wanted.items():
            extents = snapshot["extents"].get(path)
            if extents is None:
                continue
            content = b"".join(bytes(image[e["lba"] * 512 : (e["lba"] + e["sectors"]) * 512])
                               for e in sorted(extents, key=lambda e: e["file_lba_offset"]))
            size = next(f["size"] for f in truth["final_files"] if f["path"] == path) \
                if path in {f["path"] for f in truth["final_files"]} and snapshot is \
                extents_ops[-1] else next(op["bytes"] for op in truth["operations"]
                                          if op.get("path") == path and op["op"] == "write")
            assert hashlib.sha256(content[:size]).hexdigest() == digest, path
            checked += 1
    assert checked >= 8


def test_importing_the_same_file_twice_is_detected(tmp_path: Path) -> None:
    database = Database(tmp_path / "t.db")
    path = shared_capture("ctfs__fore2.pcap")
    first = import_capture(database, path)
    again = import_capture(database, path)
    assert again.duplicate_of == first.session_id and again.session_id is None


def test_unknown_linktype_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ether.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) +
                     struct.pack("<IIII", 0, 0, 4, 4) + b"abcd")
    with pytest.raises(CaptureFormatError, match="linktype 1 .Ethernet."):
        import_capture(Database(tmp_path / "t.db"), path)


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.pcap"
    path.write_text("hello world")
    with pytest.raises(CaptureFormatError, match="not a pcap or pcapng file"):
        import_capture(Database(tmp_path / "t.db"), path)


def _swap_usbmon(record: bytes) -> bytes:
    """A linktype-189 record as a big-endian host would have written it."""
    fields = usbmon.HEADER_LE.unpack_from(record)
    return usbmon.HEADER_BE.pack(*fields) + record[48:]


def test_big_endian_nanosecond_pcap_reads_the_same(tmp_path: Path) -> None:
    source = shared_capture("ajbanjara__usb_memory_stick_create_file.pcap")
    with open(source, "rb") as f:
        packets = list(CaptureReader(f))
    blob = io.BytesIO()
    blob.write(struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 189))
    for p in packets:
        data = _swap_usbmon(p.data)
        sec = int(p.ts)
        blob.write(struct.pack(">IIII", sec, int(round((p.ts - sec) * 1e9)), len(data),
                               p.original_length) + data)
    swapped = tmp_path / "swapped.cap"
    swapped.write_bytes(blob.getvalue())
    db = Database(tmp_path / "t.db")
    a = import_capture(db, source)
    b = import_capture(db, swapped)
    conn = sqlite3.connect(tmp_path / "t.db")
    q = ("SELECT tag, opcode, lba, blocks, status, residue, data_length FROM scsi_commands "
         "WHERE session_id = ? ORDER BY seq")
    assert conn.execute(q, (a.session_id,)).fetchall() == \
        conn.execute(q, (b.session_id,)).fetchall()


def test_pcapng_with_two_interfaces_and_tsresol(tmp_path: Path) -> None:
    source = shared_capture("ajbanjara__usb_memory_stick_create_file.pcap")
    with open(source, "rb") as f:
        packets = list(CaptureReader(f))
    out = io.BytesIO()
    writer = PcapngWriter(out, 1)  # interface 0: Ethernet, never used
    writer._block(1, struct.pack("<HHI", 189, 0, 0) + struct.pack("<HHB3x", 9, 1, 6) + bytes(4))
    for p in packets:
        ts = int(round(p.ts * 1e6))
        writer._block(6, struct.pack("<IIIII", 1, ts >> 32, ts & 0xFFFFFFFF, len(p.data),
                                     p.original_length) + p.data)
        if p.number == 5:  # an Ethernet frame on the other interface, in the middle
            writer._block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, 14, 14) +
                          bytes(14) + bytes(2))
    writer._block(0x0BAD, b"custom block to skip")
    path = tmp_path / "two.pcapng"
    path.write_bytes(out.getvalue())
    db = Database(tmp_path / "t.db")
    result = import_capture(db, path)
    assert result.commands == 33 and result.malformed == []
    notes, = sqlite3.connect(tmp_path / "t.db").execute("SELECT notes FROM sessions").fetchone()
    assert "1 records of non-USB interfaces skipped (linktype 1)" in notes


def test_malformed_records_are_counted_and_the_rest_imported(tmp_path: Path) -> None:
    source = shared_capture("ajbanjara__usb_memory_stick_create_file.pcap")
    with open(source, "rb") as f:
        packets = list(CaptureReader(f))
    blob = io.BytesIO()
    blob.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 189))
    for i, p in enumerate(packets):
        data = p.data[:20] if i == 9 else p.data  # record 10: a cut usbmon header
        sec = int(p.ts)
        blob.write(struct.pack("<IIII", sec, int((p.ts - sec) * 1e6), len(data),
                               p.original_length) + data)
    blob.write(struct.pack("<IIII", 0, 0, 100, 100) + b"short")  # cut at the end
    path = tmp_path / "broken.pcap"
    path.write_bytes(blob.getvalue())
    result = import_capture(Database(tmp_path / "t.db"), path)
    numbers = [n for n, _ in result.malformed]
    assert numbers == [10, len(packets) + 1]
    assert result.records == len(packets)
    notes, = sqlite3.connect(tmp_path / "t.db").execute("SELECT notes FROM sessions").fetchone()
    assert "record 10" in notes


def test_large_file_path_stores_from_a_second_process(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The forked storing process derives the same commands, devices and file activity."""
    import usbtrace.importing as importing

    name = "linux-qemu-fat16-xhci.usbmon.pcap"
    db = Database(tmp_path / "t.db")
    inline = import_capture(db, shared_capture(name))
    monkeypatch.setattr(importing, "BACKGROUND_FROM", 0)
    monkeypatch.setattr(importing, "spare_core", lambda: True)
    forked = import_capture(db, shared_capture(name), force=True)
    assert forked.commands == inline.commands == 206
    conn = sqlite3.connect(tmp_path / "t.db")
    for table, order in (("urbs", "seq"), ("scsi_commands", "seq"), ("file_activity", "id"),
                         ("devices", "bus, device")):
        q = f"SELECT * FROM {table} WHERE session_id = ? ORDER BY {order}"
        a = [r[1:] for r in conn.execute(q, (inline.session_id,))]
        b = [r[1:] for r in conn.execute(q, (forked.session_id,))]
        assert a == b and a, table
    counts = "SELECT command_count, record_count FROM sessions WHERE id = ?"
    assert conn.execute(counts, (inline.session_id,)).fetchone() == \
        conn.execute(counts, (forked.session_id,)).fetchone()


def test_an_insert_error_in_the_storing_process_is_one_database_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forked inserter keeps reading after an insert fails (the decoder never waits on
    a full pipe) and names the first error when the import closes."""
    import usbtrace.importing as importing
    import usbtrace.store.writer as writer
    from usbtrace.errors import DatabaseError

    def failing(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(importing, "BACKGROUND_FROM", 0)
    monkeypatch.setattr(importing, "spare_core", lambda: True)
    monkeypatch.setattr(writer, "insert_batch", failing)  # the child inherits it
    with pytest.raises(DatabaseError, match="storing rows failed: OperationalError: disk I/O "
                                            "error$"):
        import_capture(Database(tmp_path / "t.db"),
                       shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"))


def test_after_works_in_the_storing_process(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import usbtrace.importing as importing

    db = Database(tmp_path / "t.db")
    first = import_capture(db, shared_capture("ajbanjara__usb_memory_stick.pcap"))
    monkeypatch.setattr(importing, "BACKGROUND_FROM", 0)
    monkeypatch.setattr(importing, "spare_core", lambda: True)
    after = import_capture(db, shared_capture("ajbanjara__usb_memory_stick_create_file.pcap"),
                           after=first.session_id)
    events = sqlite3.connect(tmp_path / "t.db").execute(
        "SELECT operation, path FROM file_activity WHERE session_id=? AND kind='event'",
        (after.session_id,)).fetchall()
    assert ("created", "/new file") in events


def test_decoding_notes_name_orphans_and_uas(tmp_path: Path) -> None:
    from usbtrace.records import BULK, COMPLETE, CONTROL, SUBMIT, Event
    from usbtrace.storage import bot
    from usbtrace.store.writer import SessionWriter
    from usbtrace.usb import descriptors as d
    from usbtrace.usb import setup as std

    db = Database(tmp_path / "t.db")
    sid = db.new_session("usbmon", "synthetic", "now", "capture")
    writer = SessionWriter(db, sid)
    interface = d.InterfaceDescriptor.build(dict(
        bInterfaceNumber=0, bAlternateSetting=1, bNumEndpoints=0, bInterfaceClass=8,
        bInterfaceSubClass=6, bInterfaceProtocol=0x62, iInterface=0))
    config = d.ConfigurationDescriptor.build(dict(
        bDescriptorType=2, wTotalLength=18, bNumInterfaces=1, bConfigurationValue=1,
        iConfiguration=0, bmAttributes=0x80, bMaxPower=50)) + interface
    setup = std.build_setup(0x80, std.GET_DESCRIPTOR, d.CONFIGURATION << 8, 0, 18)
    common = dict(bus=1, device=5, transfer_type=CONTROL, endpoint=0x80)
    writer.feed(Event(SUBMIT, 0.0, 1, setup=setup, length=18, **common))  # type: ignore[arg-type]
    writer.feed(Event(COMPLETE, 0.1, 1, data=config, length=18, urb_status=0,
                      **common))  # type: ignore[arg-type]
    csw = bot.build_csw(9, 0, 0)  # a CSW whose CBW the capture never saw
    bulk = dict(bus=1, device=5, transfer_type=BULK, endpoint=0x81)
    writer.feed(Event(SUBMIT, 0.2, 2, length=13, **bulk))  # type: ignore[arg-type]
    writer.feed(Event(COMPLETE, 0.3, 2, data=csw, length=13, urb_status=0,
                      **bulk))  # type: ignore[arg-type]
    writer.close()
    notes, = sqlite3.connect(tmp_path / "t.db").execute("SELECT notes FROM sessions").fetchone()
    assert "1 bulk transfers belonged to no command" in notes
    assert "device 1.5 speaks UAS" in notes


@pytest.mark.parametrize(("cpus", "load", "spare"), [(1, 0.0, False), (2, 0.2, True),
                                                     (2, 1.0, False), (2, 2.0, False),
                                                     (4, 2.0, True), (4, 2.6, False)])
def test_without_proc_stat_the_load_average_says_if_a_core_is_idle(
        monkeypatch: pytest.MonkeyPatch, cpus: int, load: float, spare: bool) -> None:
    """On a busy machine the inserter would take turns with the decoder on one core."""
    import usbtrace.importing as importing

    monkeypatch.setattr(importing.os, "sched_getaffinity", lambda pid: set(range(cpus)),
                        raising=False)
    monkeypatch.setattr(importing.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(importing, "PROC_STAT", "/nonexistent/stat")
    assert importing.spare_core() is spare


@pytest.mark.parametrize(("busy", "niced", "spare"), [(0, 0, True), (100, 0, False),
                                                      (30, 0, True), (60, 0, False),
                                                      (0, 200, True), (100, 100, False)])
def test_niced_work_leaves_a_core_free_for_the_inserter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy: int, niced: int,
        spare: bool) -> None:
    """Two CPUs, 200 ticks between two looks at /proc/stat: ``busy`` of them at normal
    priority, ``niced`` at nice > 0 (a background fuzz run, which yields to the import)."""
    import usbtrace.importing as importing

    stat = tmp_path / "stat"
    samples = iter([[0] * 8, [busy, niced, 0, 200 - busy - niced, 0, 0, 0, 0]])

    def look() -> None:
        values = next(samples)
        stat.write_text("cpu  " + " ".join(map(str, values)) + "\ncpu0 0 0 0 0\n")

    look()
    monkeypatch.setattr(importing, "PROC_STAT", str(stat))
    monkeypatch.setattr(importing.time, "sleep", lambda seconds: look())
    monkeypatch.setattr(importing.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(importing.os, "cpu_count", lambda: 2)
    assert importing.spare_core() is spare


def test_no_spare_core_stores_in_the_decoding_process(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import usbtrace.importing as importing
    import usbtrace.store.writer as writer

    def no_fork(*args: object) -> None:
        raise AssertionError("forked although no core is idle")

    monkeypatch.setattr(importing, "BACKGROUND_FROM", 0)
    monkeypatch.setattr(importing, "spare_core", lambda: False)
    monkeypatch.setattr(writer, "ProcessInserter", no_fork)
    result = import_capture(Database(tmp_path / "t.db"),
                            shared_capture("ajbanjara__usb_memory_stick.pcap"))
    assert result.commands > 0


def test_the_collector_is_put_back_after_an_import(tmp_path: Path) -> None:
    import gc

    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    result = import_capture(Database(tmp_path / "t.db"),
                            shared_capture("ajbanjara__usb_memory_stick.pcap"))
    assert result.commands > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


@pytest.mark.parametrize("name", ["ajbanjara__USBMSC-USBPcap.pcapng",
                                  "ajbanjara__STM32L052-Nucleo-via-hub-usbmon.pcapng",
                                  "ajbanjara__BT_USB_LinCooked_Eth_80211_RT.ntar"])
def test_pcapng_blocks_framed_in_place_read_as_the_general_path_reads_them(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A tiny read chunk leaves no whole block in the buffer, so every block takes the
    general path; the default chunk frames Enhanced Packet Blocks in place."""
    path = shared_capture(name)

    def framed() -> tuple[list[tuple[object, ...]], list[tuple[int, str]], int]:
        with open(path, "rb") as f:
            reader = CaptureReader(f)
            records = list(reader.records())
            return records, reader.malformed, reader.bytes_read

    in_place = framed()
    monkeypatch.setattr(CaptureReader, "CHUNK", 97)
    general = framed()
    assert in_place == general
    assert len(in_place[0]) > 400 and in_place[2] == path.stat().st_size


def test_plain_binding_stores_what_sqlite3_stores_without_adapters(tmp_path: Path) -> None:
    """writer's adapters for None, bytes and bool (a speed-up) must store exactly what
    the sqlite3 module stores by its own search: NULL, a BLOB, an INTEGER 0 or 1."""
    import usbtrace.store.writer  # noqa: F401  (registers them)

    registered = {kind for kind, _ in sqlite3.adapters}
    assert {type(None), bytes, bool} <= registered
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b, c, d)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                     [(None, b"\x00\xffdata", True, False), (None, b"", False, True)])
    rows = conn.execute("SELECT typeof(a), typeof(b), b, typeof(c), c, typeof(d), d "
                        "FROM t ORDER BY rowid").fetchall()
    assert rows == [("null", "blob", b"\x00\xffdata", "integer", 1, "integer", 0),
                    ("null", "blob", b"", "integer", 0, "integer", 1)]
