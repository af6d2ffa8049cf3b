"""Captures as the mutator sees them: a container header and a list of raw chunks.

A chunk is one pcap record or one pcapng block, kept as its bytes, so a mutation can
corrupt a length field and the chunk still serialises exactly as mutated.  Packet
chunks know their linktype, so record-level mutations can reach the usbmon or USBPcap
record inside and rebuild the chunk around it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

PCAP_MAGICS = (0xA1B2C3D4, 0xA1B23C4D)
SHB, IDB, PB, SPB, EPB = 0x0A0D0D0A, 1, 2, 3, 6
BOM = 0x1A2B3C4D


@dataclass(frozen=True, slots=True)
class Chunk:
    raw: bytes
    kind: str  # "record" (pcap), "shb", "idb", "epb", "pb", "spb", "other"
    linktype: int | None = None  # of a packet chunk
    order: str = "<"  # byte order of its section


@dataclass(slots=True)
class Capture:
    name: str  # the seed it came from
    container: str  # "pcap" or "pcapng"
    header: bytes  # the pcap file header; empty for pcapng (the SHB is a chunk)
    chunks: list[Chunk] = field(default_factory=list)
    cut: int | None = None  # serialised bytes kept, None for all

    def to_bytes(self) -> bytes:
        data = self.header + b"".join(c.raw for c in self.chunks)
        return data if self.cut is None else data[: self.cut]

    def copy(self) -> Capture:
        return Capture(self.name, self.container, self.header, list(self.chunks), self.cut)

    @property
    def order(self) -> str:
        if self.container == "pcap":
            return "<" if struct.unpack("<I", self.header[:4])[0] in PCAP_MAGICS else ">"
        return self.chunks[0].order if self.chunks else "<"

    def packet_indexes(self) -> list[int]:
        return [i for i, c in enumerate(self.chunks) if c.kind in ("record", "epb", "pb", "spb")]


def parse(name: str, data: bytes) -> Capture:
    """Split a well-formed capture into chunks (a seed; stops quietly at damage)."""
    if len(data) >= 24 and (struct.unpack("<I", data[:4])[0] in PCAP_MAGICS or
                            struct.unpack(">I", data[:4])[0] in PCAP_MAGICS):
        return _parse_pcap(name, data)
    return _parse_pcapng(name, data)


def _parse_pcap(name: str, data: bytes) -> Capture:
    order = "<" if struct.unpack("<I", data[:4])[0] in PCAP_MAGICS else ">"
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    cap = Capture(name, "pcap", data[:24])
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        end = pos + 16 + caplen
        if end > len(data):
            break
        cap.chunks.append(Chunk(data[pos:end], "record", linktype, order))
        pos = end
    return cap


def _parse_pcapng(name: str, data: bytes) -> Capture:
    cap = Capture(name, "pcapng", b"")
    order = "<"
    linktypes: list[int] = []
    pos = 0
    while pos + 12 <= len(data):
        block_type = struct.unpack_from("<I", data, pos)[0]
        if block_type == SHB:
            order = "<" if struct.unpack_from("<I", data, pos + 8)[0] == BOM else ">"
            linktypes = []
        block_type, length = struct.unpack_from(order + "II", data, pos)
        if length < 12 or pos + length > len(data):
            break
        raw = data[pos : pos + length]
        kind = {SHB: "shb", IDB: "idb", EPB: "epb", PB: "pb", SPB: "spb"}.get(block_type, "other")
        linktype = None
        if kind == "idb":
            linktypes.append(struct.unpack_from(order + "H", raw, 8)[0])
        elif kind in ("epb", "pb"):
            iface = struct.unpack_from(order + ("I" if kind == "epb" else "H"), raw, 8)[0]
            linktype = linktypes[iface] if iface < len(linktypes) else None
        elif kind == "spb":
            linktype = linktypes[0] if linktypes else None
        cap.chunks.append(Chunk(raw, kind, linktype, order))
        pos += length
    return cap


def load(path: Path) -> Capture:
    return parse(path.name, path.read_bytes())


# ---- the packet inside a chunk ------------------------------------------------------


def packet_data(chunk: Chunk) -> bytes | None:
    """The captured bytes of a packet chunk (None for other chunks)."""
    raw, o = chunk.raw, chunk.order
    if chunk.kind == "record" and len(raw) >= 16:
        return raw[16:]
    if chunk.kind in ("epb", "pb") and len(raw) >= 32:
        caplen = struct.unpack_from(o + "I", raw, 20)[0]
        return raw[28 : 28 + caplen]
    if chunk.kind == "spb" and len(raw) >= 16:
        return raw[12:-4]
    return None


def with_packet_data(chunk: Chunk, data: bytes, original: int | None = None) -> Chunk:
    """``chunk`` carrying ``data`` instead, its length fields made to agree."""
    raw, o = chunk.raw, chunk.order
    if chunk.kind == "record":
        sec, frac, _, orig = struct.unpack_from(o + "IIII", raw) if len(raw) >= 16 else \
            (0, 0, 0, 0)
        orig = len(data) if original is None else original
        return replace(chunk, raw=struct.pack(o + "IIII", sec, frac, len(data), orig) + data)
    if chunk.kind in ("epb", "pb"):
        fixed = bytearray(raw[8:28].ljust(20, b"\0"))
        struct.pack_into(o + "II", fixed, 12, len(data),
                         len(data) if original is None else original)
        return replace(chunk, raw=block(struct.unpack_from(o + "I", raw)[0], bytes(fixed) + data,
                                        o))
    if chunk.kind == "spb":
        body = struct.pack(o + "I", len(data) if original is None else original) + data
        return replace(chunk, raw=block(SPB, body, o))
    return chunk


def block(block_type: int, body: bytes, order: str = "<") -> bytes:
    """A pcapng block: type, total length, body padded to 4 bytes, length again."""
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def window(cap: Capture, start: int, count: int) -> Capture:
    """``count`` packet chunks from the ``start``-th, with every section and interface
    block kept (they are few, and the packets' interface ids need them)."""
    packets = cap.packet_indexes()
    keep = set(packets[start : start + count])
    out = cap.copy()
    out.chunks = [c for i, c in enumerate(cap.chunks)
                  if i in keep or c.kind in ("shb", "idb")]
    return out
