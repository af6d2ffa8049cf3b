"""Bulk traffic that nothing in the capture explains (no configuration descriptor, no
Bulk-Only CBW) is not decoded, and the session says so rather than ending with no
commands and no word: a capture started after a UAS device was configured (its
SET_INTERFACE to the UAS setting, USB Attached SCSI §4, is then missing) looks so."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

from usbtrace.capture import usbmon
from usbtrace.importing import caveats, import_capture
from usbtrace.store.database import Database

from .blocks import EINPROGRESS, READ_10, T0, TUR, command, record

NOTE = "bulk transfers not decoded"


def control(urb: int, kind: str, setup: bytes, payload: bytes, device: int) -> bytes:
    """A usbmon control record on endpoint 0 with its setup packet (flag_setup 0)."""
    return usbmon.HEADER_LE.pack(urb, ord(kind), 2, 0x80, device, 1,
                                 0 if kind == "S" else ord("-"), 0 if payload else ord("<"),
                                 0, 0, EINPROGRESS if kind == "S" else 0,
                                 len(payload) or 255, len(payload),
                                 setup if kind == "S" else bytes(8)) + payload


def vendor_configuration(device: int) -> list[bytes]:
    """GET_DESCRIPTOR(CONFIGURATION) answered with one vendor-specific interface and two
    bulk endpoints (USB 2.0 §9.6.3, §9.6.5, §9.6.6)."""
    interface = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 2, 0xFF, 0, 0, 0)
    endpoints = struct.pack("<BBBBHB", 7, 5, 0x81, 2, 512, 0) + \
        struct.pack("<BBBBHB", 7, 5, 0x02, 2, 512, 0)
    body = interface + endpoints
    config = struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), 1, 1, 0, 0x80, 50) + body
    setup = bytes([0x80, 6, 0, 2, 0, 0, len(config), 0])
    return [control(0x900, "S", setup, b"", device), control(0x900, "C", setup, config, device)]


def unexplained_bulk(device: int) -> list[bytes]:
    """A UAS command IU out and data in, as a device whose UAS setting was selected
    before the capture sends them: neither is a CBW or a CSW."""
    iu = bytes([1, 0, 0, 0, 0, 1]) + bytes(10) + READ_10 + bytes(6)  # Command IU, tag 1
    return [record(0x700, "S", 0x04, len(iu), iu, device=device, status=EINPROGRESS),
            record(0x700, "C", 0x04, len(iu), b"", device=device),
            record(0x710, "S", 0x83, 512, b"", device=device, status=EINPROGRESS),
            record(0x710, "C", 0x83, 512, bytes(range(256)) * 2, device=device)]


def notes_of(tmp_path: Path, records: list[bytes]) -> str:
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 189)
    for i, data in enumerate(records):
        pcap += struct.pack("<IIII", T0, i, len(data), len(data)) + data
    path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.pcap"
    path.write_bytes(pcap)
    db = path.with_suffix(".db")
    import_capture(Database(db), path)
    return sqlite3.connect(db).execute("SELECT notes FROM sessions").fetchone()[0] or ""


def test_bulk_traffic_with_no_descriptors_and_no_cbw_is_said_not_decoded(
        tmp_path: Path) -> None:
    notes = notes_of(tmp_path, unexplained_bulk(7))
    assert f"{NOTE}: 2 on bus 1 device 7 (2 in all)" in notes
    assert "SET_INTERFACE" in notes
    assert any(n.startswith(NOTE) for n in caveats(notes))  # said on import and by stats


def test_a_device_whose_configuration_was_captured_gets_no_such_note(tmp_path: Path) -> None:
    # the descriptors say what the device is (vendor-specific, not storage): its bulk
    # traffic is none of the storage decoders' business, and nothing is unknown
    notes = notes_of(tmp_path, vendor_configuration(7) + unexplained_bulk(7))
    assert NOTE not in notes


def test_a_bulk_only_device_gets_no_such_note(tmp_path: Path) -> None:
    notes = notes_of(tmp_path, command(1, TUR, device=7) + command(2, READ_10, bytes(512),
                                                                   device=7))
    assert NOTE not in notes
    # and the same device's unexplained transfers are Bulk-Only orphans, said as such
    stray = [record(0x720, "S", 0x81, 512, b"", device=7, status=EINPROGRESS),
             record(0x720, "C", 0x81, 512, bytes(512), device=7)]
    notes = notes_of(tmp_path, command(1, TUR, device=7) + stray)
    assert NOTE not in notes and "belonged to no command" in notes


def test_devices_past_twenty_are_counted_not_dropped(tmp_path: Path) -> None:
    records = [r for device in range(1, 23) for r in unexplained_bulk(device)]
    notes = notes_of(tmp_path, records)
    assert f"{NOTE}: " in notes and "(44 in all)" in notes
    assert "and on 2 more devices" in notes
