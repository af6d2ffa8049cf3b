"""pcap and pcapng containers: streaming readers and a pcapng writer.

The container is told by its magic number, never by the file name:
``a1b2c3d4`` / ``a1b23c4d`` (pcap, micro- or nanoseconds, either byte order) or
``0a0d0d0a`` (a pcapng Section Header Block, whose byte-order magic
``1a2b3c4d`` sets the order for the section).  pcapng sections may hold
several interfaces, each with its own linktype, ``if_tsresol`` and ``if_tsoffset``;
Enhanced, Simple and the obsolete Packet Blocks carry packets; other blocks are
skipped.  A Simple Packet Block has no timestamp: it is given the time of the packet
before it (``untimed`` counts them, so the session can say so).

Framing uses precompiled ``struct`` formats (the hot path); the construct
layouts below document the same headers after the specification
(draft-ietf-opsawg-pcap, draft-ietf-opsawg-pcapng) and serve round-trip tests.
Records stream from the file: memory stays flat whatever its size.  Reads take
what the stream has (``read1``), so a capture trickling through a pipe yields each
record as soon as its last byte arrives, and a header may come in pieces.

Drop counters are kept per interface: the Interface Statistics Block's
``isb_ifdrop``, ``isb_osdrop``, ``isb_filteraccept`` and ``isb_usrdeliv``
(cumulative: a later block of the same interface supersedes an earlier one), and
the per-packet ``epb_dropcount`` of Enhanced Packet Blocks and drops count of the
obsolete Packet Block, which also say where the loss was (before that packet).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from construct import Bytes, Int16ul, Int32sl, Int32ul, Struct

from usbtrace.errors import CaptureFormatError, InputError

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D

# pcap §4 File Header and §5 Packet Record (little-endian forms)
PcapFileHeader = Struct(
    "magic_number" / Int32ul,
    "major_version" / Int16ul,
    "minor_version" / Int16ul,
    "reserved1" / Int32sl,
    "reserved2" / Int32ul,
    "snaplen" / Int32ul,
    "linktype" / Int32ul,
)
PcapRecordHeader = Struct(
    "ts_sec" / Int32ul,
    "ts_frac" / Int32ul,
    "caplen" / Int32ul,
    "origlen" / Int32ul,
)
# pcapng §4.1 block header, §4.3 Enhanced Packet Block fixed part
PcapngBlockHeader = Struct("block_type" / Int32ul, "block_total_length" / Int32ul)
PcapngEnhancedPacket = Struct(
    "interface_id" / Int32ul,
    "timestamp_high" / Int32ul,
    "timestamp_low" / Int32ul,
    "captured_len" / Int32ul,
    "original_len" / Int32ul,
    "packet_data" / Bytes(lambda ctx: ctx.captured_len),
)

BT_IDB, BT_PB, BT_SPB, BT_ISB, BT_EPB = 1, 2, 3, 5, 6
OPT_ENDOFOPT, OPT_IF_NAME, OPT_IF_TSRESOL, OPT_IF_TSOFFSET = 0, 2, 9, 14
# pcapng §4.6 Interface Statistics Block options (64-bit counters)
ISB_IFRECV, ISB_IFDROP, ISB_FILTERACCEPT, ISB_OSDROP, ISB_USRDELIV = 4, 5, 6, 7, 8
# pcapng §4.3 Enhanced Packet Block options
EPB_FLAGS, EPB_DROPCOUNT = 2, 4
PB_DROPS_UNKNOWN = 0xFFFF  # the obsolete Packet Block's "not available"

# block type and length, then an Enhanced Packet Block's interface, timestamp and lengths:
# the hot path reads a block's first 28 bytes in one call
EPB_HEAD = {o: struct.Struct(o + "IIIIIII").unpack_from for o in "<>"}

# A pcap file header's magic as a record header's seconds reads it, in either byte order
APPENDED_MAGICS = frozenset({PCAP_MAGIC_US, PCAP_MAGIC_NS, 0xD4C3B2A1, 0x4D3CB2A1})
MAX_RECORD = 1 << 26  # a record larger than 64 MiB is corruption, not data
# What is kept per interface description or drop count, at most: a file of a million
# tiny sections (or of packets that each carry a drop count) must not take memory in
# proportion, since a few are all that the notes name
KEPT = 4096
# The latest time a record may carry: 2^64 nanoseconds after 1970, in the year 2554, the
# last one a pcapng with nanosecond ticks (what export writes) can hold.  A later
# timestamp (a 64-bit count of seconds, say) is corruption, not a time.
MAX_TIMESTAMP = float(((1 << 64) - 1) // 10**9)


class Listed(list[tuple[int, str]]):
    """(record number, reason) of malformed records: every one is counted (``total``),
    the first ``KEPT`` are kept, so a file of nothing but damage costs no memory per
    record (200 bytes each, seven times the file, before); the notes name 20."""

    KEPT = 1000

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def append(self, item: tuple[int, str]) -> None:
        self.total += 1
        if len(self) < self.KEPT:
            super().append(item)

    def extend(self, items: Iterable[tuple[int, str]]) -> None:
        items = list(items) if not isinstance(items, Listed) else items
        for item in items:
            self.append(item)
        if isinstance(items, Listed):
            self.total += items.total - len(items)  # the ones it counted and did not keep


class SourceError(CaptureFormatError):
    """The capture cannot be read on (a corrupt or cut gzip stream, a record or block
    length no capture can have, so nothing after it can be framed): what came before
    stands, the rest is lost, and the import says so and fails."""


@dataclass(slots=True)
class Packet:
    number: int  # record number in the file, from 1
    ts: float  # seconds since the epoch
    linktype: int
    data: bytes
    original_length: int
    interface: int = 0
    big_endian: bool = False


Read = Callable[[int], bytes]


def read_available(stream: BinaryIO) -> Read:
    """The stream's ``read1`` where it has one: it returns what is there (at least one
    byte, or none at the end) instead of waiting for a full request, which a pipe fed
    by a live capture may take minutes to fill."""
    read1 = getattr(stream, "read1", None)
    return read1 if callable(read1) else stream.read


def _read_at_most(read: Read, n: int, chunk: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end), read ``chunk`` at a time: a length
    field that claims more than the file holds costs what the file holds, not what
    the field says (a single ``read(n)`` allocates ``n`` before it knows)."""
    parts = []
    while n > 0 and (part := read(min(n, chunk))):
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _read_enough(read: Read, need: int, chunk: int) -> bytes:
    """At least ``need`` bytes (fewer only at the end), and whatever else the reads
    brought: a large buffer from a file, no waiting for one from a pipe."""
    parts = []
    got = 0
    while got < need and (part := read(chunk)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


@dataclass
class InterfaceDrops:
    """What a pcapng says one interface lost.  ``None``: the capture does not say."""

    linktype: int
    ifdrop: int | None = None
    osdrop: int | None = None
    filteraccept: int | None = None
    usrdeliv: int | None = None
    statistics: bool = False  # an Interface Statistics Block was seen
    before_packets: int = 0  # the sum of the packets' own drop counts
    # (record number, count), the first ``LOCATED`` of them: every packet may carry a
    # count, and the notes list only a few
    located: list[tuple[int, int]] = field(default_factory=list)

    def statistics_dropped(self) -> int:
        """Drops by the interface plus by the OS; where the OS count is missing,
        packets the filter accepted that never reached the capture program."""
        os_side = self.osdrop
        if os_side is None and self.filteraccept is not None and self.usrdeliv is not None:
            os_side = max(0, self.filteraccept - self.usrdeliv)
        return (self.ifdrop or 0) + (os_side or 0)

    def dropped(self) -> int:
        """Both counts describe the same loss: the larger one (statistics also count
        what was lost after the last packet)."""
        return max(self.statistics_dropped(), self.before_packets)


# Compressors other than gzip (which the import reads itself), by the first four bytes
# of their magic numbers (all that detect sees)
COMPRESSED = [(b"\xfd7zX", "xz", "xz -d"), (b"BZh", "bzip2", "bunzip2"),
              (b"\x28\xb5\x2f\xfd", "zstd", "zstd -d"), (b"\x04\x22\x4d\x18", "lz4", "lz4 -d"),
              (b"PK\x03\x04", "zip", "unzip"), (b"7z\xbc\xaf", "7z", "7z x")]


def _pcap_header(head: bytes, first: bool = False) -> tuple[bool, bool, int] | None:
    """(big-endian, nanoseconds, linktype) of a 24-byte pcap file header.  The first one
    is taken on its magic alone; one met where a record header belongs (a second capture
    appended with ``cat``, or the second member of a multi-member gzip) only with a
    complete header of major version 2, so a record is never taken for one."""
    if len(head) < 24:
        return None
    big = struct.unpack("<I", head[:4])[0] not in (PCAP_MAGIC_US, PCAP_MAGIC_NS)
    magic, major, _, _, _, _, linktype = struct.unpack((">" if big else "<") + "IHHiIII",
                                                       head)
    if not first and (magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or major != 2):
        return None
    return big, magic == PCAP_MAGIC_NS, linktype & 0x0FFFFFFF  # top bits: FCS information


def detect(head: bytes) -> str:
    """'pcap' or 'pcapng' from a file's first four bytes; raise otherwise."""
    if len(head) < 4:
        raise CaptureFormatError("file is too short to be a capture")
    le = struct.unpack("<I", head[:4])[0]
    be = struct.unpack(">I", head[:4])[0]
    if le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        return "pcap"
    if le == PCAPNG_SHB:
        return "pcapng"
    packed = next((f"; it is {name}-compressed: decompress it first ({tool})"
                   for magic, name, tool in COMPRESSED if head.startswith(magic)), "")
    raise CaptureFormatError(f"not a pcap or pcapng file (magic {head[:4].hex()}){packed}")


class CaptureReader:
    """Iterate the packets of a pcap or pcapng stream.

    ``malformed`` collects (record number, reason) for records that could not
    be framed; framing stops at the first one, since nothing after a broken
    length can be trusted.
    """

    # Bytes a read asks for.  Under glibc's largest mmap threshold a buffer is reused
    # from the heap once freed; a 4 MiB one was mapped afresh each time, and its first
    # touch of every page faulted (32,000 faults and a third of the framing's CPU for
    # 200,000 usbmon records, against 4,000 at 128 KiB).
    CHUNK = 1 << 17

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._some = read_available(stream)
        self.malformed = Listed()
        self.bytes_read = 0
        self._buffer = b""
        self._pos = 0
        head = _read_at_most(self._some, 4, 4)
        self.kind = detect(head)
        self._head = head
        self.linktypes: dict[int, int] = {}
        # (section, interface) -> what the capture says it lost; pcap files say nothing
        self.drops: dict[tuple[int, int], InterfaceDrops] = {}
        self._unkept = False  # drop counts past KEPT interfaces were met (and listed)
        # packets lost just before the record last yielded (its epb_dropcount), else 0
        self.lost_before = 0
        # pcap file headers met after the first (captures appended): each starts anew
        self.appended = 0
        # the pcapng section being read (from 0), whether it describes more than one
        # interface (then a device's records may come through several), and each
        # interface's if_name by (section, interface id)
        self.section = 0
        self.several = False
        self.interface_names: dict[tuple[int, int], str] = {}
        # Simple Packet Blocks read: they carry no time (given the one before them)
        self.untimed = 0
        # pcapng: the packets numbered so far, the last one's time, the section's
        # interfaces as the hot path reads them (below) and its byte order.  Kept here,
        # not only in the generator, so that a loop that takes Enhanced Packet Blocks
        # itself (``reader._events``, for usbmon) goes on where the generator is, and
        # the generator where that loop stopped.
        self.number = 0
        self.ts = 0.0
        self.epb_fast: list[tuple[int, float, float] | None] = []
        self.big = False

    def _read(self, n: int) -> bytes:
        """``n`` bytes (fewer at the end of the file), served from a buffer: one
        system read per ``CHUNK`` instead of two per record."""
        pos = self._pos
        end = pos + n
        if end > len(self._buffer):
            rest = self._buffer[pos:]
            more = _read_enough(self._some, n - len(rest), self.CHUNK)
            self._buffer = rest + more
            pos, end = 0, n
        data = self._buffer[pos:end]
        self._pos = pos + len(data)
        self.bytes_read += len(data)
        return data

    def __iter__(self) -> Iterator[Packet]:
        for record in self.records():
            yield Packet(*record)

    def records(self) -> Iterator[tuple[int, float, int, bytes, int, int, bool]]:
        """Packets as plain tuples, in :class:`Packet`'s field order (the import hot path:
        no object per record)."""
        if self.kind == "pcap":
            return self._pcap()
        return self._pcapng()

    # ---- pcap --------------------------------------------------------------------

    def pcap_start(self) -> tuple[bool, bool, int, bytes]:
        """A pcap file's header: (big-endian, nanoseconds, linktype), and the bytes read
        past it, where the first record begins."""
        head = self._head + self._read(20)
        self.bytes_read += 4
        if len(head) < 24:
            raise CaptureFormatError("pcap file header is truncated")
        big, nano, linktype = _pcap_header(head, first=True)  # type: ignore[misc]
        self.linktypes[0] = linktype
        return big, nano, linktype, self._buffer[self._pos :]

    def more(self, buf: bytes, pos: int, need: int) -> bytes:
        """``buf[pos:]`` and at least enough read after it to hold ``need`` bytes (fewer
        only at the end of the file)."""
        rest = buf[pos:]
        return rest + _read_enough(self._some, need - len(rest), self.CHUNK)

    def _pcap(self) -> Iterator[tuple[int, float, int, bytes, int, int, bool]]:
        big, nano, linktype, buf = self.pcap_start()
        yield from self.pcap_records(buf, 0, 0, big, nano, linktype)

    def pcap_records(self, buf: bytes, pos: int, number: int, big: bool, nano: bool,
                     linktype: int) -> Iterator[tuple[int, float, int, bytes, int, int, bool]]:
        """The records of a pcap file from ``buf[pos:]`` on (then from the stream), the
        next being record ``number + 1``: the framing, from the start or from where a
        faster loop (``reader._usbmon_pcap``) handed a record it does not take over."""
        unpack = struct.Struct((">" if big else "<") + "IIII").unpack_from
        scale = 1e-9 if nano else 1e-6
        some = self._some
        chunk = self.CHUNK
        magics = APPENDED_MAGICS
        while True:
            if pos + 16 > len(buf):
                buf = buf[pos:]
                buf += _read_enough(some, 16 - len(buf), chunk)
                pos = 0
                if not buf:
                    return
                if len(buf) < 16:
                    self.malformed.append((number + 1, "record header cut short at end of file"))
                    return
            sec, frac, caplen, origlen = unpack(buf, pos)
            # another capture's file header (cat a.pcap b.pcap)?  Its thiszone field, 0 by
            # every writer (draft-ietf-opsawg-pcap: Reserved1), falls on the record length
            if not caplen and sec in magics:
                if pos + 24 > len(buf):
                    buf = buf[pos:]
                    buf += _read_enough(some, 24 - len(buf), chunk)
                    pos = 0
                header = _pcap_header(buf[pos : pos + 24])
                if header is not None:
                    big, nano, linktype = header
                    unpack = struct.Struct((">" if big else "<") + "IIII").unpack_from
                    scale = 1e-9 if nano else 1e-6
                    self.appended += 1
                    self.bytes_read += 24
                    pos += 24
                    continue
            number += 1
            if caplen > MAX_RECORD:
                raise SourceError(f"record {number}: record length {caplen} is impossible, "
                                  "so the records after it cannot be framed and are not read")
            end = pos + 16 + caplen
            if end > len(buf):
                buf = buf[pos:]
                buf += _read_enough(some, 16 + caplen - len(buf), chunk)
                pos, end = 0, 16 + caplen
                if end > len(buf):
                    self.malformed.append((number, "record data cut short at end of file"))
                    return
            data = buf[pos + 16 : end]
            self.bytes_read += end - pos
            pos = end
            # 32-bit seconds end in 2106: a pcap timestamp is always in range
            yield number, sec + frac * scale, linktype, data, origlen, 0, big

    # ---- pcapng ------------------------------------------------------------------

    def _pcapng(self) -> Iterator[tuple[int, float, int, bytes, int, int, bool]]:
        order = "<"
        # per interface: (linktype, seconds per tick, if_tsoffset), or None for a
        # description that could not be read (its packets are malformed; the numbering
        # of the rest holds)
        interfaces: list[tuple[int, float, float] | None] = []
        # the same for the hot path, but None where a negative if_tsoffset may put a
        # packet before 1970: those take the general path, which checks
        fast: list[tuple[int, float, float] | None] = self.epb_fast
        snaplen = 0  # interface 0's, which sizes a Simple Packet Block's data
        ts = 0.0  # the last packet's time: a Simple Packet Block has none of its own
        number = 0
        pending = self._head
        self.bytes_read += 4
        read = self._read
        first = True  # the file's own section header: a cut one is no capture at all
        section = -1  # interface ids restart in every section: drops are kept per section

        def broken(reason: str) -> None:
            if first:
                raise CaptureFormatError(f"pcapng section header is truncated or damaged: "
                                         f"{reason}")
            self.malformed.append((number + 1, reason))

        epb_head = EPB_HEAD["<"]
        big = False
        while True:
            # The hot path: an Enhanced Packet Block wholly in the buffer, read in place
            # (no slice but the packet's data); anything else, or anything unusual about
            # it (options, a bad length or interface), takes the general path below.
            buf = self._buffer
            pos = self._pos
            number, ts = self.number, self.ts  # another loop may have taken packets
            if not pending and pos + 28 <= len(buf):
                block_type, length, iface, hi, lo, caplen, origlen = epb_head(buf, pos)
                if block_type == BT_EPB and pos + length <= len(buf) and length >= 32 and \
                        not length % 4 and length <= MAX_RECORD:
                    if iface < len(fast) and length - 12 == 20 + caplen + (-caplen % 4):
                        described = fast[iface]
                        if described is not None:
                            linktype, tick, offset = described
                            stamp = ((hi << 32) | lo) * tick + offset
                            if stamp <= MAX_TIMESTAMP:
                                self.ts = ts = stamp
                                self.number = number = number + 1
                                self._pos = pos + length
                                self.bytes_read += length
                                self.lost_before = 0
                                yield (number, ts, linktype, buf[pos + 28 : pos + 28 + caplen],
                                       origlen, iface, big)
                                continue
            head = pending + read(8 - len(pending))
            pending = b""
            if not head:
                return
            if len(head) < 8:
                broken("block header cut short at end of file")
                return
            block_type = struct.unpack("<I", head[:4])[0]
            if block_type == PCAPNG_SHB:
                bom = read(4)
                if len(bom) < 4:
                    broken("section header cut short")
                    return
                if struct.unpack("<I", bom)[0] == PCAPNG_BYTE_ORDER:
                    order = "<"
                elif struct.unpack(">I", bom)[0] == PCAPNG_BYTE_ORDER:
                    order = ">"
                else:
                    if first:
                        raise CaptureFormatError(
                            "pcapng section header has a bad byte-order magic")
                    broken("section header has a bad byte-order magic")
                    return
                length = struct.unpack(order + "I", head[4:8])[0]
                if length < 28 or length % 4 or length > MAX_RECORD:
                    broken(f"section header length {length}")
                    return
                body = read(length - 12)
                if len(body) < length - 12:
                    broken("section header cut short")
                    return
                first = False
                section += 1
                interfaces = []  # interface ids restart in every section
                fast = self.epb_fast = []
                self.section = section
                self.several = False
                epb_head = EPB_HEAD[order]
                self.big = big = order == ">"
                continue
            block_type, length = struct.unpack(order + "II", head)
            if length < 12 or length % 4 or length > MAX_RECORD:
                raise SourceError(f"record {number + 1}: block length {length} is impossible, "
                                  "so the records after it cannot be framed and are not read")
            body = read(length - 8)
            if len(body) < length - 8:
                self.malformed.append((number + 1, "block cut short at end of file"))
                return
            body = body[:-4]  # the trailing copy of the length
            if block_type == BT_IDB:
                if len(body) < 8:
                    self.malformed.append((number + 1, f"interface description {len(interfaces)} "
                                                       f"has {len(body)} of its 8 fixed bytes"))
                    interfaces.append(None)
                    fast.append(None)
                    continue
                linktype, _, ifsnaplen = struct.unpack_from(order + "HHI", body, 0)
                resolution, offset, name = _interface_options(body[8:], order)
                if resolution is None:
                    self.malformed.append((number + 1, f"interface description "
                                                       f"{len(interfaces)}: an option runs past "
                                                       "its block; timestamps read as "
                                                       "microseconds"))
                    resolution = 1e-6
                if not interfaces:
                    snaplen = ifsnaplen
                if name is not None and len(self.interface_names) < KEPT:
                    self.interface_names[(section, len(interfaces))] = name
                interfaces.append((linktype, resolution, float(offset)))  # float + float
                fast.append(interfaces[-1] if offset >= 0 else None)
                self.several = len(interfaces) > 1
                if len(self.linktypes) < KEPT:
                    self.linktypes[len(self.linktypes)] = linktype
            elif block_type == BT_ISB:
                self._statistics(body, order, section, interfaces, number + 1)
            elif block_type == BT_EPB or block_type == BT_PB:
                self.number = number = number + 1
                if len(body) < 20:
                    self.malformed.append((number, f"packet block has {len(body)} of its 20 "
                                                   "fixed bytes"))
                    continue
                lost = 0
                if block_type == BT_EPB:
                    iface, hi, lo, caplen, origlen = struct.unpack_from(order + "IIIII", body)
                else:
                    iface, lost, hi, lo, caplen, origlen = struct.unpack_from(order + "HHIIII",
                                                                              body)
                    if lost == PB_DROPS_UNKNOWN:
                        lost = 0
                if iface >= len(interfaces):
                    self.malformed.append((number, f"packet names interface {iface}, "
                                                   f"which the section does not describe"))
                    continue
                described = interfaces[iface]
                if described is None:
                    self.malformed.append((number, f"packet of interface {iface}, whose "
                                                   "description is malformed"))
                    continue
                if 20 + caplen > len(body):
                    self.malformed.append((number, "packet data longer than its block"))
                    continue
                linktype, tick, offset = described
                stamp = ((hi << 32) | lo) * tick + offset
                if stamp > MAX_TIMESTAMP:
                    self.malformed.append((number, f"timestamp {(hi << 32) | lo} at "
                                                   f"{tick:g} s a tick is beyond the year 2554"))
                    continue
                if stamp < 0:  # a negative if_tsoffset larger than the time
                    self.malformed.append((number, f"timestamp {(hi << 32) | lo} at "
                                                   f"{tick:g} s a tick with if_tsoffset "
                                                   f"{offset:.0f} s is before 1970"))
                    continue
                self.ts = ts = stamp
                data = body[20 : 20 + caplen]
                options_at = 20 + caplen + (-caplen % 4)
                if block_type == BT_EPB and len(body) > options_at:  # rare: no cost otherwise
                    counted = _dropcount(body[options_at:], order)
                    if counted is None:
                        self.malformed.append((number, "an option of the packet block runs "
                                                       "past its block; its options ignored"))
                    lost = counted or 0
                if lost:
                    drops = self._drops_of(section, iface, linktype, number)
                    if drops is not None:
                        drops.before_packets += lost
                        if len(drops.located) < KEPT:
                            drops.located.append((number, lost))
                self.lost_before = lost
                yield (number, ts, linktype, data, origlen, iface, order == ">")
            elif block_type == BT_SPB:
                self.number = number = number + 1
                if len(body) < 4:
                    self.malformed.append((number, "simple packet block has no length field"))
                    continue
                if not interfaces or interfaces[0] is None:
                    self.malformed.append((number, "simple packet before any readable "
                                                   "interface"))
                    continue
                origlen = struct.unpack_from(order + "I", body)[0]
                # pcapng §4.4: the data is the packet cut to the interface's snaplen
                caplen = min(origlen, snaplen) if snaplen else origlen
                if 4 + caplen > len(body):
                    self.malformed.append((number, f"simple packet block holds "
                                                   f"{len(body) - 4} bytes of the {caplen} its "
                                                   "packet length says"))
                    continue
                linktype = interfaces[0][0]
                self.lost_before = 0
                self.untimed += 1
                yield number, ts, linktype, body[4 : 4 + caplen], origlen, 0, order == ">"
            # other blocks (name resolution, custom) are skipped

    def _drops_of(self, section: int, iface: int, linktype: int,
                  number: int) -> InterfaceDrops | None:
        """The drop counts of an interface, made when it first reports any; None (and
        listed once) past ``KEPT`` interfaces: memory stays bounded whatever the file."""
        drops = self.drops.get((section, iface))
        if drops is None:
            if len(self.drops) >= KEPT:
                if not self._unkept:
                    self.malformed.append((number, f"drop counts of more than {KEPT} "
                                                   "interfaces: the rest are not counted"))
                self._unkept = True
                return None
            drops = self.drops[(section, iface)] = InterfaceDrops(linktype)
        return drops

    def _statistics(self, body: bytes, order: str, section: int,
                    interfaces: list[tuple[int, float, float] | None], number: int) -> None:
        """Take an Interface Statistics Block's drop counters for its interface.  The
        counters run from the start of the capture, so the latest block wins."""
        if len(body) < 12:
            self.malformed.append((number, f"interface statistics block has {len(body)} of "
                                           "its 12 fixed bytes; ignored"))
            return
        iface = struct.unpack_from(order + "I", body)[0]
        described = interfaces[iface] if iface < len(interfaces) else None
        if described is None:
            self.malformed.append((number, f"interface statistics for interface {iface}, "
                                           "which the section does not describe; ignored"))
            return
        options = _options(body[12:], order)
        if options is None:
            self.malformed.append((number, f"interface statistics of interface {iface}: an "
                                           "option runs past its block; ignored"))
            return
        counters: dict[int, int] = {}
        for code, value in options:
            if code in (ISB_IFDROP, ISB_FILTERACCEPT, ISB_OSDROP, ISB_USRDELIV):
                if len(value) != 8:
                    self.malformed.append((number, f"interface statistics of interface {iface}:"
                                                   f" option {code} has {len(value)} bytes, not "
                                                   "8; ignored"))
                    continue
                counters[code] = struct.unpack(order + "Q", value)[0]
        drops = self._drops_of(section, iface, described[0], number)
        if drops is None:
            return
        drops.statistics = True  # a later block says it all again: none of the old stays
        drops.ifdrop = counters.get(ISB_IFDROP)
        drops.osdrop = counters.get(ISB_OSDROP)
        drops.filteraccept = counters.get(ISB_FILTERACCEPT)
        drops.usrdeliv = counters.get(ISB_USRDELIV)


def _options(options: bytes, order: str) -> list[tuple[int, bytes]] | None:
    """A block's options as (code, value) up to opt_endofopt or the block's end; None
    when one runs past the block.  Work is bounded by the bytes of the block."""
    out = []
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, pos)
        if code == OPT_ENDOFOPT:
            break
        if pos + 4 + length > len(options):
            return None
        out.append((code, options[pos + 4 : pos + 4 + length]))
        pos += 4 + length + (-length % 4)
    return out


def _dropcount(options: bytes, order: str) -> int | None:
    """An Enhanced Packet Block's epb_dropcount (0 when absent); None when its options
    cannot be read.  The epb_flags word carries direction, reception type and
    link-layer errors, but no count of lost packets, so it is not read."""
    parsed = _options(options, order)
    if parsed is None:
        return None
    for code, value in parsed:
        if code == EPB_DROPCOUNT and len(value) == 8:
            return int(struct.unpack(order + "Q", value)[0])
    return 0


def _interface_options(options: bytes, order: str) -> tuple[float | None, int, str | None]:
    """From an IDB's options: seconds per timestamp tick (if_tsresol, default 10^-6),
    the seconds to add to every timestamp (if_tsoffset, default 0; tshark adds it too)
    and the interface's name (if_name), which the notes use to say which interface
    is which.

    The resolution is None when an option's value runs past the block or if_tsresol
    has no value byte: the caller lists that, since the resolution is then unknown.
    """
    resolution: float | None = 1e-6
    offset = 0
    name = None
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, pos)
        if code == OPT_ENDOFOPT:
            break
        if pos + 4 + length > len(options) or (code == OPT_IF_TSRESOL and length < 1):
            return None, offset, name
        value = options[pos + 4 : pos + 4 + length]
        if code == OPT_IF_TSRESOL:
            resolution = 2.0 ** -(value[0] & 0x7F) if value[0] & 0x80 else 10.0 ** -value[0]
        elif code == OPT_IF_TSOFFSET and length == 8:
            offset = struct.unpack(order + "q", value)[0]
        elif code == OPT_IF_NAME:
            name = value.decode("utf-8", "replace").rstrip("\0")
        pos += 4 + length + (-length % 4)
    return resolution, offset, name


# ---- writing pcapng ---------------------------------------------------------------


class PcapngWriter:
    """A pcapng file with one section and one interface (nanosecond timestamps)."""

    def __init__(self, stream: BinaryIO, linktype: int, application: str = "usbtrace",
                 comments: Sequence[str] = ()) -> None:
        self.stream = stream
        shb_options = b"".join(_option(1, c.encode()) for c in comments) + \
            _option(4, application.encode()) + _option(0, b"")
        body = struct.pack("<IHHq", PCAPNG_BYTE_ORDER, 1, 0, -1) + shb_options
        self._block(PCAPNG_SHB, body)
        idb_options = _option(OPT_IF_TSRESOL, bytes([9])) + _option(0, b"")
        self._block(BT_IDB, struct.pack("<HHI", linktype, 0, 0) + idb_options)

    def _block(self, block_type: int, body: bytes) -> None:
        body += b"\0" * (-len(body) % 4)
        length = len(body) + 12
        self.stream.write(struct.pack("<II", block_type, length) + body +
                          struct.pack("<I", length))

    def write(self, ts_ns: int, data: bytes, original_length: int | None = None) -> None:
        original = len(data) if original_length is None else original_length
        self._block(BT_EPB, struct.pack("<IIIII", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF,
                                        len(data), original) + data)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


class PcapWriter:
    """A classic pcap file: one link type, nanosecond timestamps (magic ``a1b23c4d``),
    for tools that read no pcapng.  The same ``write`` as ``PcapngWriter``."""

    # the largest record Wireshark takes for the USB link types (128 MiB); libpcap
    # clamps a larger snapshot length to its own maximum and reads on
    SNAPLEN = 128 << 20

    def __init__(self, stream: BinaryIO, linktype: int) -> None:
        self.stream = stream
        stream.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, self.SNAPLEN,
                                 linktype))

    def write(self, ts_ns: int, data: bytes, original_length: int | None = None) -> None:
        original = len(data) if original_length is None else original_length
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        if not 0 <= sec < 1 << 32:
            raise InputError(f"a record at {sec} s since 1970 does not fit classic pcap's "
                             "32-bit seconds; write pcapng (--format pcapng)")
        self.stream.write(struct.pack("<IIII", sec, nsec, len(data), original) + data)


def pcapng_header(path: str | os.PathLike[str]) -> tuple[list[str], int | None]:
    """The first section's comments and first interface's link type of a pcapng
    file (([], None) for classic pcap or anything else): where ``export`` says which
    session and command made a capture."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if len(head) < 28 or struct.unpack("<I", head[:4])[0] != PCAPNG_SHB:
        return [], None
    order = "<" if struct.unpack("<I", head[8:12])[0] == PCAPNG_BYTE_ORDER else ">"
    length = struct.unpack(order + "I", head[4:8])[0]
    if not 28 <= length <= len(head):
        return [], None
    comments = []
    pos, end = 24, length - 4
    while pos + 4 <= end:
        code, size = struct.unpack(order + "HH", head[pos:pos + 4])
        if code == 0:
            break
        if code == 1:
            comments.append(head[pos + 4:pos + 4 + size].decode("utf-8", "replace"))
        pos += 4 + size + (-size % 4)
    linktype = None
    if length + 10 <= len(head) and struct.unpack(order + "I", head[length:length + 4])[0] \
            == BT_IDB:
        linktype = struct.unpack(order + "H", head[length + 8:length + 10])[0]
    return comments, linktype
