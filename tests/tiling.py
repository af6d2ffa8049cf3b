"""Big captures from small real ones: the benchmarks and the interruption tests."""

from __future__ import annotations

import struct
import sys
from pathlib import Path


def tile(source: Path, target: Path, records: int) -> int:
    """Repeat the source's records, shifted in time, until there are ``records``."""
    data = source.read_bytes()
    header, body = data[:24], data[24:]
    if struct.unpack("<I", header[:4])[0] != 0xA1B2C3D4:
        sys.exit("tiling needs a little-endian microsecond pcap")
    frames = []
    pos = 0
    while pos + 16 <= len(body):
        sec, usec, caplen, orig = struct.unpack_from("<IIII", body, pos)
        frames.append((sec, usec, body[pos + 16 : pos + 16 + caplen], orig))
        pos += 16 + caplen
    span = frames[-1][0] - frames[0][0] + 1
    written = 0
    with open(target, "wb") as out:
        out.write(header)
        shift = 0
        while written < records:
            for sec, usec, payload, orig in frames:
                if written == records:
                    break
                out.write(struct.pack("<IIII", sec + shift, usec, len(payload), orig) + payload)
                written += 1
            shift += span
    return written
