"""What a capture's times mean: ``if_tsoffset``, Simple Packet Blocks (no time of their
own), and times that go backwards.  Built with ``tests/blocks.py``."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest

from usbtrace.capture.pcap import Listed
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .blocks import READ_10, T0, TUR, command, epb, idb, shb, spb


def session(db: Path) -> tuple[str, float, str | None]:
    return sqlite3.connect(db).execute(
        "SELECT started_at, time_origin, notes FROM sessions").fetchone()


def test_if_tsoffset_is_added_to_every_timestamp(tmp_path: Path) -> None:
    # §4.2 if_tsoffset: seconds to add to each packet's timestamp for its absolute
    # time (tshark adds it: frame.time_epoch).  Left out, the session started in 1970.
    offset = T0 - 1000
    records = command(1, TUR)
    path = tmp_path / "offset.pcapng"
    path.write_bytes(b"".join([shb(), idb("usbmon1", tsoffset=offset)] +
                              [epb(0, 1000 * 10**6 + 250 * i, r)
                               for i, r in enumerate(records)]))
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    started, origin, _ = session(db)
    assert started == "2023-11-14T22:13:20Z" and origin == T0
    assert sqlite3.connect(db).execute(
        "SELECT round(completed_at - submitted_at, 6) FROM scsi_commands").fetchall() == \
        [(0.00075,)]  # from the CBW, the first record, to the CSW, the fourth


def test_simple_packet_blocks_take_the_time_before_them_and_the_notes_say_so(
        tmp_path: Path) -> None:
    # §4.4: a Simple Packet Block has no timestamp.  Read as time 0 among timed
    # packets, every CSW "completed" 53 years before its CBW was sent.
    records = command(1, TUR) + command(2, READ_10, bytes(512))
    blocks = [shb(), idb("usbmon1")]
    for i, r in enumerate(records):
        blocks.append(spb(r) if i % 2 else epb(0, T0 * 10**6 + 100 * i, r))
    path = tmp_path / "simple.pcapng"
    path.write_bytes(b"".join(blocks))
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert result.commands == 2 and result.malformed == []
    times = sqlite3.connect(db).execute(
        "SELECT submitted_at, completed_at FROM scsi_commands ORDER BY seq").fetchall()
    assert all(0 <= s <= c < 0.01 for s, c in times), times
    note = f"no time for {len(records) // 2} packets: they are Simple Packet Blocks"
    assert note in session(db)[2] and any(c.startswith(note) for c in result.caveats)


def test_a_simple_packet_block_shorter_than_its_packet_is_listed(tmp_path: Path) -> None:
    # with no snaplen the block holds the whole packet (§4.4); one that holds less is
    # damaged, and its record is listed rather than decoded from the bytes it has
    records = command(1, TUR)
    blocks = [shb(), idb("usbmon1")] + [spb(r) for r in records]
    blocks[2] = spb(records[0], length=len(records[0]) + 100)
    path = tmp_path / "short.pcapng"
    path.write_bytes(b"".join(blocks))
    result = import_capture(Database(tmp_path / "t.db"), path)
    assert result.malformed == [(1, "simple packet block holds 80 bytes of the 179 its "
                                    "packet length says")]


def test_time_going_back_is_said_with_where_and_how_far(tmp_path: Path) -> None:
    # a CSW stamped before its CBW (clocks stepped back, files joined out of order):
    # the service time comes out negative, as tshark's would; the notes say why
    records = command(1, TUR) + command(2, TUR)
    micros = [T0 * 10**6 + 10 * i for i in range(len(records))]
    micros[3] = T0 * 10**6 - 1000  # the first CSW's completion
    path = tmp_path / "back.pcapng"
    path.write_bytes(b"".join([shb(), idb("usbmon1")] +
                              [epb(0, t, r) for t, r in zip(micros, records)]))
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    said = ("the time goes back at 1 records (the first is record 4, the largest step back "
            "0.001020 s): a command whose records straddle such a step has a wrong, even "
            "negative, service time")
    assert said in session(db)[2] and any(c.startswith(said) for c in result.caveats)
    assert sqlite3.connect(db).execute(
        "SELECT tag, round(completed_at - submitted_at, 6) FROM scsi_commands ORDER BY seq"
    ).fetchall() == [(1, -0.001), (2, 0.00003)]


def test_times_in_order_say_nothing(tmp_path: Path) -> None:
    records = command(1, TUR)
    path = tmp_path / "in-order.pcapng"  # two records at the same time are in order too
    path.write_bytes(b"".join([shb(), idb("usbmon1")] +
                              [epb(0, T0 * 10**6 + i // 2, r) for i, r in enumerate(records)]))
    result = import_capture(Database(tmp_path / "t.db"), path)
    assert result.commands == 1 and result.caveats == []


def test_a_negative_if_tsoffset_counts_and_one_before_1970_is_listed(tmp_path: Path) -> None:
    # if_tsoffset is signed (§4.2): ticks from 2000 with an offset of -1000 s are after
    # 1970 and read as such; an offset that puts packets before 1970 (a damaged
    # option) lists them, where it stopped the import with "Value too large for
    # defined data type" (gmtime of -2^62 s) or started the session in the year -1162
    records = command(1, TUR)
    good = tmp_path / "negative.pcapng"
    good.write_bytes(b"".join([shb(), idb("usbmon1", tsoffset=-1000)] +
                              [epb(0, (T0 + 1000) * 10**6 + i, r)
                               for i, r in enumerate(records)]))
    result = import_capture(Database(tmp_path / "good.db"), good)
    assert (result.commands, result.malformed) == (1, [])
    assert session(tmp_path / "good.db")[:2] == ("2023-11-14T22:13:20Z", T0)
    bad = tmp_path / "before-1970.pcapng"
    bad.write_bytes(b"".join([shb(), idb("usbmon1", tsoffset=-(1 << 62))] +
                             [epb(0, T0 * 10**6 + i, r) for i, r in enumerate(records)]))
    result = import_capture(Database(tmp_path / "bad.db"), bad)
    assert result.commands == 0 and [n for n, _ in result.malformed] == [1, 2, 3, 4]
    assert result.malformed[0][1] == (f"timestamp {T0 * 10**6} at 1e-06 s a tick with "
                                      f"if_tsoffset {-(1 << 62)} s is before 1970")


def test_a_file_of_malformed_records_counts_them_all_and_keeps_a_few(tmp_path: Path) -> None:
    # each malformed record was kept with its reason, 200 bytes apiece: a file of
    # nothing else took seven times its size in memory; the notes name 20 anyway
    n = Listed.KEPT + 4000
    short = struct.pack("<IIII", T0, 0, 20, 20) + bytes(20)  # no 48-byte usbmon header
    path = tmp_path / "damaged.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 189) + short * n)
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert (result.records, result.malformed_count, len(result.malformed)) == \
        (n, n, Listed.KEPT)
    assert result.malformed[-1] == (Listed.KEPT, "usbmon header needs 48 bytes, record has 20")
    count, notes = sqlite3.connect(db).execute(
        "SELECT malformed_count, notes FROM sessions").fetchone()
    assert count == n and notes.endswith(f"; and {n - 20} more")


@pytest.mark.parametrize("tsresol, per_second", [(9, 10**9), (0x80 | 20, 1 << 20), (3, 1000)])
def test_if_tsresol_in_nanoseconds_and_powers_of_two(tmp_path: Path, tsresol: int,
                                                     per_second: int) -> None:
    # §4.2 if_tsresol: a power of ten, or of two with the top bit set; the records are
    # 250 ms apart, which every resolution here holds exactly
    records = command(1, TUR)
    path = tmp_path / "resolution.pcapng"
    path.write_bytes(b"".join([shb(), idb("usbmon1", tsresol=tsresol)] +
                              [epb(0, (T0 * 4 + i) * per_second // 4, r)
                               for i, r in enumerate(records)]))
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    assert session(db)[:2] == ("2023-11-14T22:13:20Z", T0)
    (submitted, completed), = sqlite3.connect(db).execute(
        "SELECT submitted_at, completed_at FROM scsi_commands").fetchall()
    # a float of seconds since 1970 holds 0.24 us at best: the tick count of a
    # nanosecond clock is rounded to it
    assert submitted == 0.0 and completed == pytest.approx(0.75, abs=5e-7)


def test_big_endian_mmapped_usbmon_with_isochronous_descriptors(tmp_path: Path) -> None:
    # LINKTYPE_USB_LINUX_MMAPPED in a big-endian section: the 64-byte header in the
    # capturing host's order, then ndesc 16-byte descriptors, then the data, whose
    # len_cap counts the descriptors too (mon_bin.c: len_cap = length + lendesc)
    descriptors = struct.pack(">iIII", 0, 0, 3, 0) + struct.pack(">iIII", 0, 3, 3, 0)
    data = b"\x01\x02\x03\x04\x05\x06"
    header = struct.pack(">QBBBBHBBqiiII8s", 0xAB, ord("C"), 0, 0x81, 5, 1, ord("-"), 0, 0, 0,
                         0, 6, len(descriptors) + len(data), bytes(8))
    mmapped = struct.pack(">iiII", 1, 0, 0, 2)  # interval, start frame, flags, ndesc
    body = header + mmapped + descriptors + data
    section = struct.pack(">IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + \
        struct.pack(">I", 28)
    interface = struct.pack(">IIHHI", 1, 20, 220, 0, 0) + struct.pack(">I", 20)
    packet_body = struct.pack(">IIIII", 0, 0, 1_000_000, len(body), len(body)) + body
    packet_body += b"\0" * (-len(packet_body) % 4)
    packet = struct.pack(">II", 6, len(packet_body) + 12) + packet_body + \
        struct.pack(">I", len(packet_body) + 12)
    path = tmp_path / "iso-be.pcapng"
    path.write_bytes(section + interface + packet)
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert result.malformed == []
    assert sqlite3.connect(db).execute(
        "SELECT bus, device, endpoint, transfer_type, actual_length, data FROM urbs"
    ).fetchall() == [(1, 5, 0x81, "isochronous", 6, data)]
