"""Captures built block by block for the import's tests, after draft-ietf-opsawg-pcapng
(§4.1 SHB, §4.2 IDB and its options, §4.3 EPB, §4.4 SPB), the usbmon header of
Documentation/usb/usbmon.rst (48 bytes, LINKTYPE_USB_LINUX, little-endian host) and
BOT 1.0 §5 for the commands."""

from __future__ import annotations

import struct

from usbtrace.capture import usbmon

EINPROGRESS = -115
T0 = 1_700_000_000  # seconds: 2023-11-14T22:13:20Z
TUR = bytes(6)
READ_10 = bytes([0x28, 0, 0, 0, 0, 0x40, 0, 0, 1, 0])  # LBA 64, 1 block


def record(urb: int, kind: str, endpoint: int, length: int, payload: bytes,
           bus: int = 1, device: int = 5, status: int = 0) -> bytes:
    """A 48-byte usbmon header (LINKTYPE_USB_LINUX, little-endian host) and payload."""
    flag_data = 0 if payload else ord("<" if endpoint & 0x80 else ">")
    return usbmon.HEADER_LE.pack(urb, ord(kind), 3, endpoint, device, bus, ord("-"),
                                 flag_data, 0, 0, status, length, len(payload),
                                 bytes(8)) + payload


def command(tag: int, cdb: bytes, data_in: bytes = b"", bus: int = 1,
            device: int = 5) -> list[bytes]:
    """The usbmon records of one Bulk-Only command: CBW, data in (if any), CSW."""
    urb = tag * 16
    cbw = struct.pack("<IIIBBB16s", 0x43425355, tag, len(data_in), 0x80 if data_in else 0,
                      0, len(cdb), cdb)
    csw = struct.pack("<IIIB", 0x53425355, tag, 0, 0)
    out = [record(urb, "S", 0x02, 31, cbw, bus, device, EINPROGRESS),
           record(urb, "C", 0x02, 31, b"", bus, device)]
    if data_in:
        out += [record(urb + 1, "S", 0x81, len(data_in), b"", bus, device, EINPROGRESS),
                record(urb + 1, "C", 0x81, len(data_in), data_in, bus, device)]
    return out + [record(urb + 2, "S", 0x81, 13, b"", bus, device, EINPROGRESS),
                  record(urb + 2, "C", 0x81, 13, csw, bus, device)]


def block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb() -> bytes:
    return block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(name: str | None = None, tsoffset: int | None = None, linktype: int = 189,
        tsresol: int | None = None) -> bytes:
    """An Interface Description Block: if_name, if_tsoffset and if_tsresol if given
    (its timestamps are then in the units ``tsresol`` names, not microseconds)."""
    options = (option(2, name.encode()) if name else b"") + \
        (option(14, struct.pack("<q", tsoffset)) if tsoffset is not None else b"") + \
        (option(9, bytes([tsresol])) if tsresol is not None else b"")
    return block(1, struct.pack("<HHI", linktype, 0, 0) +
                 (options + option(0, b"") if options else b""))


def epb(interface: int, micros: int, data: bytes) -> bytes:
    return block(6, struct.pack("<IIIII", interface, micros >> 32, micros & 0xFFFFFFFF,
                                len(data), len(data)) + data)


def spb(data: bytes, length: int | None = None) -> bytes:
    return block(3, struct.pack("<I", len(data) if length is None else length) + data)
