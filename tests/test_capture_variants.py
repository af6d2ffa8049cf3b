"""Variants users make of real captures: files joined with ``cat`` (or ``zcat`` of
several gzip members), and captures cut to a snapshot length (``tcpdump -s``,
``editcap -s``, Wireshark's packet limit).  The records are built here, byte by byte,
after the usbmon header (Documentation/usb/usbmon.rst) and BOT 1.0 §5."""

from __future__ import annotations

import gzip
import re
import sqlite3
import struct
from pathlib import Path

import pytest

from usbtrace.capture import usbmon
from usbtrace.errors import InputError
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

EINPROGRESS = -115


def usbmon_record(urb: int, kind: str, endpoint: int, length: int, payload: bytes,
                  status: int = 0, big: bool = False) -> bytes:
    """A 48-byte usbmon header (LINKTYPE_USB_LINUX) and its payload: bulk, bus 1,
    device 5; ``length`` is the URB's, ``payload`` what was captured of it."""
    header = usbmon.HEADER_BE if big else usbmon.HEADER_LE
    flag_data = 0 if payload else ord("<" if endpoint & 0x80 else ">")
    return header.pack(urb, ord(kind), 3, endpoint, 5, 1, ord("-"), flag_data, 0, 0,
                       status, length, len(payload), bytes(8)) + payload


def cbw(tag: int, length: int, data_in: bool, cdb: bytes) -> bytes:
    return struct.pack("<IIIBBB16s", 0x43425355, tag, length, 0x80 if data_in else 0, 0,
                       len(cdb), cdb)


def csw(tag: int, residue: int = 0, status: int = 0) -> bytes:
    return struct.pack("<IIIB", 0x53425355, tag, residue, status)


def command(tag: int, cdb: bytes, data_in: bytes = b"", big: bool = False) -> list[bytes]:
    """The usbmon records of one Bulk-Only command: CBW, data in (if any), CSW."""
    urb = tag * 16
    out = [usbmon_record(urb, "S", 0x02, 31, cbw(tag, len(data_in), bool(data_in), cdb),
                         EINPROGRESS, big),
           usbmon_record(urb, "C", 0x02, 31, b"", 0, big)]
    if data_in:
        out += [usbmon_record(urb + 1, "S", 0x81, len(data_in), b"", EINPROGRESS, big),
                usbmon_record(urb + 1, "C", 0x81, len(data_in), data_in, 0, big)]
    out += [usbmon_record(urb + 2, "S", 0x81, 13, b"", EINPROGRESS, big),
            usbmon_record(urb + 2, "C", 0x81, 13, csw(tag), 0, big)]
    return out


def pcap(records: list[bytes], *, big: bool = False, nano: bool = False,
         snaplen: int = 65535, first_second: int = 1_700_000_000) -> bytes:
    """A pcap file (LINKTYPE_USB_LINUX) of ``records``, each cut to ``snaplen`` as a
    capture tool cuts it: the record keeps its first bytes and its original length."""
    order = ">" if big else "<"
    out = [struct.pack(order + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0,
                       snaplen, usbmon.LINKTYPE_USB_LINUX)]
    for i, record in enumerate(records):
        kept = record[:snaplen]
        frac = i * (1000 if nano else 1)
        out.append(struct.pack(order + "IIII", first_second + i, frac, len(kept), len(record))
                   + kept)
    return b"".join(out)


def commands(path: Path, db: Path) -> list[tuple]:
    result = import_capture(Database(db), path)
    assert result.malformed == [], result.malformed
    return sqlite3.connect(db).execute(
        "SELECT tag, opcode, lba, blocks, expected_length, data_length, data_truncated, "
        "status FROM scsi_commands ORDER BY seq").fetchall()


READ_10 = bytes([0x28, 0, 0, 0, 0, 0x40, 0, 0, 1, 0])  # LBA 64, 1 block
TUR = bytes(6)


def test_two_pcap_files_joined_with_cat_import_as_one(tmp_path: Path) -> None:
    # the second file's header sits where a record header belongs; before it was taken
    # for a record of 0 bytes, and the next "record length" ran into the 1e9s
    first = pcap(command(1, TUR))
    second = pcap(command(2, READ_10, bytes(512), big=True), big=True, nano=True)
    path = tmp_path / "joined.pcap"
    path.write_bytes(first + second)
    assert commands(path, tmp_path / "t.db") == [
        (1, 0x00, None, None, 0, 0, 0, "good"),
        (2, 0x28, 64, 1, 512, 512, 0, "good")]
    notes, = sqlite3.connect(tmp_path / "t.db").execute("SELECT notes FROM sessions").fetchone()
    assert "the file is 2 pcap captures joined end to end" in notes  # and the session says so


def test_a_multi_member_gzip_of_two_captures_imports_both(tmp_path: Path) -> None:
    path = tmp_path / "joined.pcap.gz"  # zcat a.pcap.gz b.pcap.gz reads as cat a b
    path.write_bytes(gzip.compress(pcap(command(1, TUR))) +
                     gzip.compress(pcap(command(2, TUR), first_second=1_700_000_100)))
    assert [row[0] for row in commands(path, tmp_path / "t.db")] == [1, 2]


def test_a_record_whose_seconds_read_as_a_magic_stays_a_record(tmp_path: Path) -> None:
    records = command(1, TUR)
    path = tmp_path / "late.pcap"  # every record in the year 2056: the pcap magic's second
    path.write_bytes(pcap(records, first_second=0xA1B2C3D4 - 1))
    result = import_capture(Database(tmp_path / "t.db"), path)
    assert (result.records, result.commands, result.malformed) == (len(records), 1, [])
    notes, = sqlite3.connect(tmp_path / "t.db").execute("SELECT notes FROM sessions").fetchone()
    assert "joined" not in (notes or "")  # one capture: nothing appended


def test_a_cbw_cut_by_the_snapshot_length_still_opens_its_command(tmp_path: Path) -> None:
    # snaplen 64: 48 header bytes and the CBW's first 16 (through the opcode, BOT §5.1);
    # the CSW (13 bytes) fits whole.  Wireshark decodes these commands' tag, opcode and
    # status too; the LBA and block count were not captured and stay unknown.
    records = command(1, TUR) + command(2, READ_10, bytes(512)) + command(3, TUR)
    path = tmp_path / "snap64.pcap"
    path.write_bytes(pcap(records, snaplen=64))
    assert commands(path, tmp_path / "t.db") == [
        (1, 0x00, None, None, 0, 0, 1, "good"),
        (2, 0x28, None, None, 512, 512, 1, "good"),
        (3, 0x00, None, None, 0, 0, 1, "good")]
    cdb, = sqlite3.connect(tmp_path / "t.db").execute(
        "SELECT cdb FROM scsi_commands WHERE tag = 2").fetchone()
    assert cdb == b"\x28"  # what was captured of it, nothing invented


def test_a_cbw_cut_before_its_opcode_opens_no_command(tmp_path: Path) -> None:
    path = tmp_path / "snap63.pcap"  # 15 bytes of CBW: the opcode is not known
    path.write_bytes(pcap(command(1, TUR), snaplen=63))
    result = import_capture(Database(tmp_path / "t.db"), path)
    assert result.commands == 0
    truncated, = sqlite3.connect(tmp_path / "t.db").execute(
        "SELECT count(*) FROM urbs WHERE truncated").fetchone()
    assert truncated == 1  # the cut CBW is stored as cut


def test_throughput_of_a_session_spanning_years_stays_bounded() -> None:
    # mergecap of a 2016 and a 2020 capture: one session of 10^8 seconds; at one row
    # per empty second, stats --interval 1 took 8 GiB before it wrote a line
    from itertools import islice

    from usbtrace.analysis.stats import bucket_throughput

    rows = [(0.5, "in", 512), (1.2, "out", 1024), (4.5, "in", 512), (101_668_980.2, "out", 4096)]
    out = list(islice(bucket_throughput(iter(rows), 1.0, empty_rows=10), 10_000))
    assert [r[0] for r in out] == [0, 1, 2, 3, 4, 5, 101_668_979, 101_668_980]
    assert sum(r[1] for r in out) == 4 and sum(r[2] + r[3] for r in out) == 6144
    filled = list(bucket_throughput(iter(rows[:3]), 1.0, empty_rows=10))
    assert [r[0] for r in filled] == [0, 1, 2, 3, 4]  # short gaps are filled as before


def test_a_capture_compressed_by_another_tool_is_named(tmp_path: Path) -> None:
    import lzma

    from usbtrace.errors import CaptureFormatError

    path = tmp_path / "stick.pcap.xz"
    path.write_bytes(lzma.compress(pcap(command(1, TUR))))
    with pytest.raises(CaptureFormatError,
                       match=re.escape("xz-compressed: decompress it first (xz -d)")):
        import_capture(Database(tmp_path / "t.db"), path)


def test_an_impossible_record_length_mid_file_fails_the_import_keeping_what_came_before(
        tmp_path: Path) -> None:
    # a damaged record header (caplen 0xFFFFFFFF) after one whole command: nothing after
    # it can be framed, so the import keeps what it read and fails, as tshark says the
    # file "appears to be damaged or corrupt", instead of calling the session complete
    good = pcap(command(1, TUR))
    damaged = struct.pack("<IIII", 1_700_000_100, 0, 0xFFFFFFFF, 64)
    path = tmp_path / "damaged.pcap"
    path.write_bytes(good + damaged + pcap(command(2, TUR))[24:])
    db = tmp_path / "t.db"
    with pytest.raises(InputError, match=r"record 5: record length 4294967295 is impossible, "
                                         r"so the records after it cannot be framed.*marked "
                                         r"failed"):
        import_capture(Database(db), path)
    state, count, notes = sqlite3.connect(db).execute(
        "SELECT state, record_count, notes FROM sessions").fetchone()
    assert (state, count) == ("failed", 4) and "record length 4294967295" in notes
    assert sqlite3.connect(db).execute("SELECT tag FROM scsi_commands").fetchall() == [(1,)]


def test_an_impossible_block_length_mid_pcapng_fails_the_import(tmp_path: Path) -> None:
    def block(kind: int, body: bytes) -> bytes:
        return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", usbmon.LINKTYPE_USB_LINUX, 0, 65535))
    epbs = b""
    for i, record in enumerate(command(1, TUR)):
        padded = record + bytes(-len(record) % 4)
        epbs += block(6, struct.pack("<IIIII", 0, 0, 1_000_000 + i, len(record), len(record))
                      + padded)
    path = tmp_path / "damaged.pcapng"
    path.write_bytes(shb + idb + epbs + struct.pack("<II", 6, 7) + bytes(64))  # length 7
    db = tmp_path / "t.db"
    with pytest.raises(InputError, match="block length 7 is impossible"):
        import_capture(Database(db), path)
    state, count = sqlite3.connect(db).execute(
        "SELECT state, record_count FROM sessions").fetchone()
    assert (state, count) == ("failed", 4)
