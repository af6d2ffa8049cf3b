"""Bad bytes in real captures: each case is counted, listed or refused, never a traceback.

Every test builds its bad input from a real capture (or, for container framing, from a
pcapng written around one), so the rest of the file is what a real recording holds.
"""

from __future__ import annotations

import io
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.capture import usbmon
from usbtrace.capture.pcap import (
    BT_EPB,
    BT_IDB,
    BT_PB,
    BT_SPB,
    CaptureReader,
    Packet,
    PcapngWriter,
)
from usbtrace.cli import main
from usbtrace.errors import CaptureFormatError, UsbtraceError
from usbtrace.importing import import_capture
from usbtrace.replay.run import replay
from usbtrace.storage import bot, scsi
from usbtrace.store.database import Database

from .conftest import shared_capture

STICK = "ajbanjara__usb_memory_stick.pcap"  # full enumeration, 189
CREATE = "ajbanjara__usb_memory_stick_create_file.pcap"  # 33 commands, 189, no enumeration
CREATE_COMMANDS = 33


def packets_of(name: str) -> list[Packet]:
    with open(shared_capture(name), "rb") as f:
        return list(CaptureReader(f))


def write_pcap(path: Path, records: list[bytes], linktype: int = 189) -> Path:
    """A little-endian microsecond pcap of ``records``, one second apart."""
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
    for i, data in enumerate(records):
        out.write(struct.pack("<IIII", 1_000_000 + i, 0, len(data), len(data)) + data)
    path.write_bytes(out.getvalue())
    return path


def with_payload(record: bytes, payload: bytes) -> bytes:
    """A usbmon (189) record with its data replaced: URB length and len_cap follow."""
    fields = list(usbmon.HEADER_LE.unpack_from(record))
    fields[11] = fields[12] = len(payload)  # length, len_cap
    return usbmon.HEADER_LE.pack(*fields) + payload


def rewritten(tmp_path: Path, name: str, change: Callable[[Packet], bytes | None]) -> Path:
    """``name`` with each record passed through ``change`` (None keeps it as it is)."""
    records = []
    for p in packets_of(name):
        new = change(p)
        records.append(p.data if new is None else new)
    return write_pcap(tmp_path / f"bad-{name}", records)


def session_row(db: Path, sid: int | None, columns: str) -> tuple:  # type: ignore[type-arg]
    row = sqlite3.connect(db).execute(f"SELECT {columns} FROM sessions WHERE id = ?",
                                      (sid,)).fetchone()
    assert row is not None
    return row  # type: ignore[no-any-return]


def descriptor_reply(p: Packet, kind: int) -> bool:
    """A completion carrying a GET_DESCRIPTOR reply of ``kind`` (by its content)."""
    d = p.data
    return len(d) > 50 and d[8] == 0x43 and d[9] == 2 and d[49] == kind


# ---- descriptors ----------------------------------------------------------------------


def _bad_device_descriptor(p: Packet) -> bytes | None:
    if descriptor_reply(p, 1) and p.data[48] == 18:
        return p.data[:48] + b"\x11" + p.data[49:]  # bLength 17
    return None


def _bad_interface_descriptor(p: Packet) -> bytes | None:
    d = p.data
    if descriptor_reply(p, 2) and len(d) > 48 + 18 and d[48 + 10] == 4:
        return d[: 48 + 9] + b"\x08" + d[48 + 10 :]  # the interface says bLength 8
    return None


def _bad_endpoint_descriptor(p: Packet) -> bytes | None:
    d = p.data
    if descriptor_reply(p, 2) and len(d) > 48 + 25 and d[48 + 19] == 5:
        return d[: 48 + 18] + b"\x06" + d[48 + 19 :]  # the first endpoint says bLength 6
    return None


BAD_DESCRIPTORS = [_bad_device_descriptor, _bad_interface_descriptor, _bad_endpoint_descriptor]
EXPECTED_NOTE = {_bad_device_descriptor: "device descriptor with bLength 17",
                 _bad_interface_descriptor: "interface descriptor with bLength 8",
                 _bad_endpoint_descriptor: "endpoint descriptor with bLength 6"}


@pytest.mark.parametrize("change", BAD_DESCRIPTORS)
def test_bad_descriptor_is_listed_and_the_rest_imports(
        tmp_path: Path, change: Callable[[Packet], bytes | None]) -> None:
    path = rewritten(tmp_path, STICK, change)
    assert path.read_bytes() != shared_capture(STICK).read_bytes()
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert result.commands == 168
    state, notes = session_row(db, result.session_id, "state, notes")
    assert state == "complete"
    assert "malformed descriptors were not used" in notes
    assert EXPECTED_NOTE[change] in notes


@pytest.mark.parametrize("change", BAD_DESCRIPTORS)
@pytest.mark.parametrize("mode", ["device", "host"])
def test_bad_descriptor_replays_without_a_traceback(
        tmp_path: Path, change: Callable[[Packet], bytes | None], mode: str) -> None:
    path = rewritten(tmp_path, STICK, change)
    try:
        report = replay(str(path), mode=mode)
    except UsbtraceError:
        return  # refused with one line: allowed
    assert report.commands == 168


# ---- pcapng framing -------------------------------------------------------------------


def pcapng_of(name: str, extra: Callable[[PcapngWriter, int], None],
              change: Callable[[Packet], bytes | None] = lambda p: None) -> bytes:
    """``name`` as pcapng (one interface of its linktype, nanoseconds), each record passed
    through ``change``, with ``extra`` called after each packet (given the packet number)
    to add blocks."""
    out = io.BytesIO()
    packets = packets_of(name)
    writer = PcapngWriter(out, packets[0].linktype)
    for p in packets:
        data = change(p)
        writer.write(int(round(p.ts * 1e9)), p.data if data is None else data,
                     p.original_length)
        extra(writer, p.number)
    return out.getvalue()


BAD_BLOCKS = {
    "epb shorter than its fixed fields": (BT_EPB, struct.pack("<III", 0, 0, 0)),
    "pb shorter than its fixed fields": (BT_PB, struct.pack("<HHI", 0, 0, 0)),
    "spb with an empty body": (BT_SPB, b""),
}


@pytest.mark.parametrize("case", sorted(BAD_BLOCKS))
def test_short_packet_block_is_malformed_and_the_rest_imports(tmp_path: Path,
                                                              case: str) -> None:
    kind, body = BAD_BLOCKS[case]

    def extra(writer: PcapngWriter, number: int) -> None:
        if number == 7:
            writer._block(kind, body)

    path = tmp_path / "bad.pcapng"
    path.write_bytes(pcapng_of(CREATE, extra))
    result = import_capture(Database(tmp_path / "t.db"), path)
    assert [n for n, _ in result.malformed] == [8]
    assert result.commands == CREATE_COMMANDS


def test_empty_interface_description_makes_its_packets_malformed(tmp_path: Path) -> None:
    def extra(writer: PcapngWriter, number: int) -> None:
        if number == 3:
            writer._block(BT_IDB, b"")  # interface 1, unreadable
            writer._block(BT_EPB, struct.pack("<IIIII", 1, 0, 0, 4, 4) + b"abcd")

    path = tmp_path / "bad.pcapng"
    path.write_bytes(pcapng_of(CREATE, extra))
    result = import_capture(Database(tmp_path / "t.db"), path)
    reasons = [why for _, why in result.malformed]
    assert len(reasons) == 2
    assert "interface description 1 has 0 of its 8 fixed bytes" in reasons[0]
    assert "description is malformed" in reasons[1]
    assert result.commands == CREATE_COMMANDS


def _one_interface(idb_options: bytes, packets: list[tuple[int, bytes]]) -> bytes:
    """A pcapng: section header, one usbmon interface with ``idb_options``, and EPBs of
    (timestamp ticks, data)."""
    out = io.BytesIO()
    writer = PcapngWriter.__new__(PcapngWriter)
    writer.stream = out
    writer._block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    writer._block(BT_IDB, struct.pack("<HHI", 189, 0, 0) + idb_options)
    for ticks, data in packets:
        writer._block(BT_EPB, struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF,
                                          len(data), len(data)) + data)
    return out.getvalue()


def test_tsresol_without_its_value_byte_is_listed_not_a_traceback(tmp_path: Path) -> None:
    records = [p.data for p in packets_of(CREATE)]
    # if_tsresol claims one byte of value, and the block ends right after its header
    blob = _one_interface(struct.pack("<HH", 9, 1), [(1_000_000 * (i + 1), d)
                                                     for i, d in enumerate(records)])
    path = tmp_path / "tsresol.pcapng"
    path.write_bytes(blob)
    result = import_capture(Database(tmp_path / "t.db"), path)
    assert len(result.malformed) == 1
    assert "timestamps read as microseconds" in result.malformed[0][1]
    assert result.commands == CREATE_COMMANDS


def test_timestamp_out_of_range_is_a_malformed_record(tmp_path: Path) -> None:
    records = [p.data for p in packets_of(CREATE)]
    # if_tsresol 10^0: one tick a second, and record 6 carries 2^64 - 1 of them
    options = struct.pack("<HHB3x", 9, 1, 0) + struct.pack("<HH", 0, 0)
    ticks = [1_600_000_000 + i for i in range(len(records))]
    ticks[5] = (1 << 64) - 1
    path = tmp_path / "far.pcapng"
    path.write_bytes(_one_interface(options, list(zip(ticks, records))))
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert [n for n, _ in result.malformed] == [6]
    assert "beyond the year 2554" in result.malformed[0][1]
    # record 6 was a CBW's completion: its command still decodes, from its submission
    assert result.commands == CREATE_COMMANDS
    started, = session_row(db, result.session_id, "started_at")
    assert started.startswith("2020-09-13")


def test_out_of_range_timestamp_as_first_record_does_not_stop_later_files(
        tmp_path: Path) -> None:
    records = [p.data for p in packets_of(CREATE)]
    options = struct.pack("<HHB3x", 9, 1, 0) + struct.pack("<HH", 0, 0)
    far = tmp_path / "far.pcapng"
    far.write_bytes(_one_interface(options, [((1 << 64) - 1, records[0])] +
                                   [(1_600_000_000 + i, d) for i, d in enumerate(records[1:])]))
    good = shared_capture(CREATE)
    result = CliRunner().invoke(main, ["import", "--db", str(tmp_path / "t.db"), str(far),
                                       str(good)])
    assert result.exit_code == 0, result.output
    assert f"{far}: session 1:" in result.output and "1 malformed" in result.output
    assert f"{good}: session 2:" in result.output


# ---- truncated container headers ------------------------------------------------------


@pytest.mark.parametrize("cut", [4, 8, 11, 20])
def test_pcapng_cut_inside_its_section_header_is_an_error(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.pcapng"
    path.write_bytes(pcapng_of(CREATE, lambda w, n: None)[:cut])
    with pytest.raises(CaptureFormatError, match="pcapng section header"):
        import_capture(Database(tmp_path / "t.db"), path)
    result = CliRunner().invoke(main, ["import", "--db", str(tmp_path / "t.db"), str(path)])
    assert result.exit_code == 2
    assert "section header" in result.output
    sessions = sqlite3.connect(tmp_path / "t.db").execute("SELECT count(*) FROM sessions")
    assert sessions.fetchone()[0] == 0


def test_pcap_cut_inside_its_header_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    path.write_bytes(shared_capture(CREATE).read_bytes()[:13])
    result = CliRunner().invoke(main, ["import", "--db", str(tmp_path / "t.db"), str(path)])
    assert result.exit_code == 2
    assert "header is truncated" in result.output


# ---- READ(16)/WRITE(16) with an LBA beyond a signed 64-bit column ----------------------

HUGE_LBA = (1 << 63) + 12345


def _write16_huge(p: Packet) -> bytes | None:
    """The first WRITE(10) CBW becomes a WRITE(16) of the same length at HUGE_LBA."""
    d = p.data
    cbw = bot.parse_cbw(d[48:])
    if cbw is None or cbw.cdb[0] != scsi.WRITE_10 or _write16_huge.done:  # type: ignore[attr-defined]
        return None
    _write16_huge.done = True  # type: ignore[attr-defined]
    blocks = int.from_bytes(cbw.cdb[7:9], "big")
    cdb = struct.pack(">BBQIBB", scsi.WRITE_16, 0, HUGE_LBA, blocks, 0, 0)
    return d[:48] + bot.build_cbw(cbw.tag, cbw.data_transfer_length, cbw.data_in, cbw.lun, cdb)


@pytest.mark.parametrize("forked", [False, True])
def test_lba_beyond_int64_is_stored_as_null_with_its_cdb_and_a_note(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: bool) -> None:
    import usbtrace.importing as importing

    _write16_huge.done = False  # type: ignore[attr-defined]
    path = rewritten(tmp_path, CREATE, _write16_huge)
    if forked:
        monkeypatch.setattr(importing, "BACKGROUND_FROM", 0)
        monkeypatch.setattr(importing, "spare_core", lambda: True)
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert result.commands == CREATE_COMMANDS
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT seq, lba, blocks, cdb, status FROM scsi_commands "
                        "WHERE name = 'write_16'").fetchall()
    assert len(rows) == 1
    seq, lba, blocks, cdb, status = rows[0]
    assert lba is None and status == "good"
    assert int.from_bytes(cdb[2:10], "big") == HUGE_LBA
    notes, state = session_row(db, result.session_id, "notes, state")
    assert state == "complete"
    assert "LBA above 2^63-1" in notes and f"scsi seq {seq}" in notes
    # the other nine writes still imported with their LBAs
    assert conn.execute("SELECT count(*) FROM scsi_commands WHERE name = 'write_10' "
                        "AND lba IS NOT NULL").fetchone()[0] == 4


# ---- invalid CSWs ---------------------------------------------------------------------


def _csw_change(how: str) -> Callable[[Packet], bytes | None]:
    """Change the CSW of the first WRITE(10) command's tag."""
    state: dict[str, int] = {}

    def change(p: Packet) -> bytes | None:
        d = p.data
        cbw = bot.parse_cbw(d[48:])
        if cbw is not None and cbw.cdb[0] == scsi.WRITE_10 and "tag" not in state:
            state["tag"] = cbw.tag
        csw = bot.parse_csw(d[48:])
        if csw is None or csw.tag != state.get("tag"):
            return None
        if how == "signature":
            return with_payload(d, b"USBX" + d[52:61])
        if how == "tag":
            return with_payload(d, bot.build_csw(csw.tag ^ 0x5A5A, csw.residue, csw.status))
        return with_payload(d, d[48:61] + b"\0")  # 14 bytes

    return change


@pytest.mark.parametrize("how", ["signature", "tag", "length"])
def test_invalid_csw_has_its_own_status(tmp_path: Path, how: str) -> None:
    path = rewritten(tmp_path, CREATE, _csw_change(how))
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert result.commands == CREATE_COMMANDS
    statuses = [s for s, in sqlite3.connect(db).execute(
        "SELECT status FROM scsi_commands ORDER BY seq")]
    assert statuses.count("invalid") == 1
    assert statuses.count("missing") == 0
    assert statuses.count("good") == CREATE_COMMANDS - 1
    first_write = sqlite3.connect(db).execute(
        "SELECT status, csw_seq IS NOT NULL FROM scsi_commands WHERE name = 'write_10' "
        "ORDER BY seq LIMIT 1").fetchone()
    assert first_write == ("invalid", 1)


def test_a_csw_that_never_came_is_still_missing(tmp_path: Path) -> None:
    state: dict[str, int] = {}

    def drop(p: Packet) -> bytes | None:  # the CSW becomes an empty, cancelled read
        d = p.data
        cbw = bot.parse_cbw(d[48:])
        if cbw is not None and cbw.cdb[0] == scsi.WRITE_10 and "tag" not in state:
            state["tag"] = cbw.tag
        csw = bot.parse_csw(d[48:])
        if csw is None or csw.tag != state.get("tag"):
            return None
        fields = list(usbmon.HEADER_LE.unpack_from(d))
        fields[10] = -2  # ENOENT
        fields[11] = fields[12] = 0
        return usbmon.HEADER_LE.pack(*fields)

    path = rewritten(tmp_path, CREATE, drop)
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    statuses = [s for s, in sqlite3.connect(db).execute("SELECT status FROM scsi_commands")]
    assert statuses.count("missing") == 1 and "invalid" not in statuses


# ---- work bounded by the bytes captured -----------------------------------------------


@pytest.mark.parametrize("container", ["pcap", "pcapng"])
def test_a_length_field_claiming_64_mib_costs_what_the_file_holds(tmp_path: Path,
                                                                   container: str) -> None:
    import tracemalloc

    if container == "pcap":
        blob = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 189) + \
            struct.pack("<IIII", 0, 0, (1 << 26) - 1, 100) + bytes(100)
    else:
        blob = _one_interface(b"", []) + struct.pack("<II", BT_EPB, (1 << 26) - 4) + bytes(100)
    path = tmp_path / f"claims-64-mib.{container}"
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        with open(path, "rb") as stream:  # a file: read(n) allocates n before it reads
            reader = CaptureReader(stream)
            assert list(reader.records()) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "cut short at end of file" in reader.malformed[0][1]
    assert peak < 16 << 20, f"{peak >> 20} MiB for a {len(blob)}-byte file"


# ---- USBPcap control transfers ---------------------------------------------------------


def _short_setup(p: Packet) -> bytes | None:
    """Record 3 of the USBPcap capture, a SETUP stage, left with 5 of its 8 setup bytes."""
    if p.number != 3:
        return None
    header = bytearray(p.data[:28])
    assert header[22] == 2 and header[27] == 0  # control, SETUP stage
    struct.pack_into("<I", header, 23, 5)
    return bytes(header) + p.data[28:33]


def test_usbpcap_setup_stage_shorter_than_8_bytes_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "short-setup.pcapng"
    path.write_bytes(pcapng_of("ajbanjara__USBMSC-USBPcap.pcapng", lambda w, n: None,
                               _short_setup))
    result = import_capture(Database(tmp_path / "t.db"), path)
    assert result.malformed == [(3, "USBPcap SETUP stage carries 5 of the 8 setup bytes")]
    assert result.commands == 74
    report = replay(str(path), mode="device")  # the recording's other descriptors still serve
    assert report.replayed == 74


def test_usbpcap_device_address_above_127_is_malformed_and_the_session_exports(
        tmp_path: Path) -> None:
    def far_device(p: Packet) -> bytes | None:
        if p.number != 39:  # a CBW's submission: its URB row takes the device from it
            return None
        record = bytearray(p.data)
        struct.pack_into("<H", record, 19, 300)  # the device field: 16 bits, addresses 7
        return bytes(record)

    path = tmp_path / "device-300.pcapng"
    path.write_bytes(pcapng_of("ajbanjara__USBMSC-USBPcap.pcapng", lambda w, n: None,
                               far_device))
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert result.malformed == [(39, "USBPcap device address 300 is not a USB address (0-127)")]
    for linktype in ("usbmon", "usbpcap"):
        out = tmp_path / f"back-{linktype}.pcapng"
        exported = CliRunner().invoke(main, ["export", "1", "-o", str(out), "--db", str(db),
                                             "--linktype", linktype])
        assert exported.exit_code == 0, exported.output
        with open(out, "rb") as f:
            assert len(list(CaptureReader(f))) > 400
