"""Captures that start after the volume was mounted, cut from ones that do not."""

from __future__ import annotations

import struct
from pathlib import Path


def _records(data: bytes) -> tuple[bytes, list[bytes], list[bytes]]:
    """(the header to keep, every record, each record's USB payload): little-endian
    pcap or pcapng of usbmon (linktype 189 or 220), one interface."""
    if data[:4] == b"\x0a\x0d\x0d\x0a":  # pcapng: section and interface blocks, then EPBs
        head = b""
        records, payloads = [], []
        pos = 0
        header_length = 64
        while pos + 12 <= len(data):
            kind, length = struct.unpack_from("<II", data, pos)
            block = data[pos : pos + length]
            if kind == 6:
                caplen = struct.unpack_from("<I", block, 20)[0]
                records.append(block)
                payloads.append(block[28 + header_length : 28 + caplen])
            else:
                if kind == 1:
                    header_length = 64 if struct.unpack_from("<H", block, 8)[0] == 220 else 48
                head += block
            pos += length
        return head, records, payloads
    assert struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4
    header_length = 64 if struct.unpack("<I", data[20:24])[0] == 220 else 48
    records, payloads = [], []
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        records.append(data[pos : pos + 16 + caplen])
        payloads.append(data[pos + 16 + header_length : pos + 16 + caplen])
        pos += 16 + caplen
    return data[:24], records, payloads


def cut(source: Path, target: Path, *, skip_lbas: frozenset[int] = frozenset(),
        nth_write: int = 1) -> int:
    """Keep the header and the records from the ``nth_write``-th WRITE(10)'s CBW on,
    leaving out every command (CBW to CSW) whose READ(10)/WRITE(10) starts at one of
    ``skip_lbas``.  Returns the records kept."""
    head, records, payloads = _records(source.read_bytes())
    kept: list[bytes] = []
    writes = 0
    skipping = False
    for record, payload in zip(records, payloads):
        if payload[:4] == b"USBC" and len(payload) == 31 and payload[15] in (0x28, 0x2A):
            if payload[15] == 0x2A:
                writes += 1
            skipping = struct.unpack(">I", payload[17:21])[0] in skip_lbas
        if writes < nth_write:
            continue
        if not skipping:
            kept.append(record)
        if payload[:4] == b"USBS":
            skipping = False
    target.write_bytes(head + b"".join(kept))
    return len(kept)
