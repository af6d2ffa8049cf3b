"""Captures that start after the volume was mounted, cut from ones that do not."""

from __future__ import annotations

import struct
from pathlib import Path


def cut(source: Path, target: Path, *, skip_lbas: frozenset[int] = frozenset(),
        nth_write: int = 1) -> int:
    """Keep the pcap header and the records from the ``nth_write``-th WRITE(10)'s CBW on,
    leaving out every command (CBW to CSW) whose READ(10)/WRITE(10) starts at one of
    ``skip_lbas``.  Little-endian microsecond pcap of usbmon (linktype 189 or 220) only.
    Returns the records kept."""
    data = source.read_bytes()
    header, body = data[:24], data[24:]
    assert struct.unpack("<I", header[:4])[0] == 0xA1B2C3D4
    usbmon = 64 if struct.unpack("<I", header[20:24])[0] == 220 else 48
    records = []
    pos = 0
    while pos + 16 <= len(body):
        caplen = struct.unpack_from("<I", body, pos + 8)[0]
        records.append(body[pos : pos + 16 + caplen])
        pos += 16 + caplen
    kept: list[bytes] = []
    writes = 0
    skipping = False
    for record in records:
        payload = record[16 + usbmon :]
        cbw = payload[:4] == b"USBC" and len(payload) == 31
        if cbw and payload[15] in (0x28, 0x2A):
            if payload[15] == 0x2A:
                writes += 1
            skipping = struct.unpack(">I", payload[17:21])[0] in skip_lbas
        if writes < nth_write:
            continue
        if not skipping:
            kept.append(record)
        if payload[:4] == b"USBS":
            skipping = False
    target.write_bytes(header + b"".join(kept))
    return len(kept)
