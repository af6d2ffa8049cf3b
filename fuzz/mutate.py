"""Mutations that know the structure of what usbtrace reads.

Three levels, picked at random for each input:

* the container: truncation, dropped, duplicated, swapped and spliced records (from
  other captures too), pcap and pcapng length fields, file and section headers,
  interface descriptions and their ``if_tsresol``, timestamps, synthetic blocks;
* the USB record: usbmon and USBPcap header fields, the setup packet;
* the payload, by what it is: descriptors, CBW (signature, tag, length, flags, LUN, CDB
  length, CDB opcode, LBA, transfer length), CSW (signature, tag, residue, status,
  length), sense data, and 512-byte sectors holding an MBR, a FAT or exFAT boot
  sector, directory entries or FAT entries; otherwise bytes.

Every choice comes from the ``random.Random`` passed in, so a seed replays a campaign.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import replace

from fuzz.capture import (
    EPB,
    IDB,
    PB,
    SHB,
    SPB,
    Capture,
    Chunk,
    block,
    packet_data,
    with_packet_data,
)

USBMON_LINKTYPES = {189: 48, 220: 64}
USBPCAP = 249
LINKTYPES = (189, 220, 249, 1, 266, 0, 0xFFFF)
OPCODES = (0x00, 0x03, 0x08, 0x0A, 0x12, 0x1A, 0x1B, 0x1E, 0x23, 0x25, 0x28, 0x2A, 0x2F,
           0x35, 0x5A, 0x88, 0x8A, 0x8F, 0x91, 0x9E, 0xA0, 0xA8, 0xAA, 0xFF)
ERRNOS = (0, -2, -19, -32, -62, -71, -75, -84, -104, -108, -110, -115, -121, 1, -(1 << 31))


def interesting(rng: random.Random, size: int, original: int | None = None) -> int:
    """A value for a ``size``-byte unsigned field that is likely to break something."""
    top = (1 << (8 * size)) - 1
    picks = [0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1, rng.randrange(top + 1),
             rng.randrange(min(top, 1 << 16) + 1)]
    if original is not None:
        picks += [(original + 1) & top, (original - 1) & top, (original * 2) & top,
                  original ^ (1 << rng.randrange(8 * size))]
    return rng.choice(picks)


def poke(rng: random.Random, data: bytearray, offset: int, size: int, order: str = "<",
         value: int | None = None) -> None:
    """Write an interesting (or the given) ``size``-byte value at ``offset`` if it fits."""
    if offset + size > len(data):
        return
    old = int.from_bytes(data[offset : offset + size], "little" if order == "<" else "big")
    new = interesting(rng, size, old) if value is None else value
    data[offset : offset + size] = new.to_bytes(size, "little" if order == "<" else "big")


def bytes_mutation(rng: random.Random, data: bytes) -> bytes:
    """Plain byte-level damage: flips, interesting bytes, inserts, deletions, cuts."""
    b = bytearray(data)
    op = rng.randrange(6)
    if not b or op == 0:
        b[rng.randrange(len(b) + 1):rng.randrange(len(b) + 1)] = rng.randbytes(rng.randrange(1, 9))
    elif op == 1:
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    elif op == 2:
        b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, 1))
    elif op == 3:
        i = rng.randrange(len(b))
        del b[i : i + rng.randrange(1, 17)]
    elif op == 4:
        del b[rng.randrange(len(b)) :]
    else:
        i = rng.randrange(len(b))
        b[i:i] = b[i : i + rng.randrange(1, 65)]
    return bytes(b)


# ---- payloads -------------------------------------------------------------------------


def mutate_cbw(rng: random.Random, cbw: bytes) -> bytes:
    b = bytearray(cbw)
    op = rng.randrange(10)
    if op == 0:
        poke(rng, b, 0, 4)  # signature
    elif op == 1:
        poke(rng, b, 4, 4)  # tag
    elif op == 2:
        poke(rng, b, 8, 4)  # data transfer length
    elif op == 3:
        b[12] = rng.choice((0, 0x80, 0x7F, 0xFF, 0x01))  # flags
    elif op == 4:
        b[13] = rng.choice((0, 1, 7, 15, 16, 0xFF))  # LUN
    elif op == 5:
        b[14] = rng.choice((0, 1, 5, 6, 10, 12, 16, 17, 31, 0xFF))  # CB length
    elif op == 6:
        b[15] = rng.choice(OPCODES)
    elif op == 7:  # the CDB's LBA and length fields, for whichever size it is
        size = 8 if b[15] in (0x88, 0x8A, 0x8F, 0x91, 0x9E) else 4
        poke(rng, b, 17, size, ">")
        poke(rng, b, 17 + size + (0 if size == 8 else 1), 4 if size == 8 else 2, ">")
    elif op == 8:  # a READ(16)/WRITE(16) at an LBA a signed 64-bit column cannot hold
        b[14] = 16
        b[15] = rng.choice((0x88, 0x8A))
        b[17:25] = rng.randrange(1 << 63, 1 << 64).to_bytes(8, "big")
        b[25:29] = rng.randrange(0, 256).to_bytes(4, "big")
    else:
        return bytes_mutation(rng, cbw)
    return bytes(b)


def mutate_csw(rng: random.Random, csw: bytes) -> bytes:
    b = bytearray(csw)
    op = rng.randrange(6)
    if op == 0:
        poke(rng, b, 0, 4)
    elif op == 1:
        poke(rng, b, 4, 4)
    elif op == 2:
        poke(rng, b, 8, 4)
    elif op == 3:
        b[12] = rng.choice((0, 1, 2, 3, 0xFF))
    elif op == 4:
        return bytes(b) + rng.randbytes(rng.randrange(1, 4)) if rng.random() < 0.5 \
            else bytes(b[: rng.randrange(13)])
    else:
        return bytes_mutation(rng, csw)
    return bytes(b)


def descriptor_offsets(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos + 2 <= len(data) and data[pos] >= 2:
        out.append(pos)
        pos += data[pos]
    return out


def mutate_descriptors(rng: random.Random, data: bytes) -> bytes:
    offsets = descriptor_offsets(data) or [0]
    pos = rng.choice(offsets)
    b = bytearray(data)
    if pos + 2 > len(b):
        return bytes_mutation(rng, data)
    kind = b[pos + 1]
    op = rng.choice((0, 0, 0, 1, 2, 2, 3, 4))
    if op == 0:  # bLength: the field every reader trusts first
        b[pos] = rng.choice((0, 1, 2, max(b[pos] - 1, 0), max(b[pos] - 1, 0), min(b[pos] + 1, 255),
                             255, 9, 18, 7))
    elif op == 1:
        b[pos + 1] = rng.choice((1, 2, 3, 4, 5, 6, 7, 11, 15, 16, 0x21, 0x24, 0x30, 0xFF))
    elif op == 2 and kind == 2:  # configuration: wTotalLength, bNumInterfaces
        poke(rng, b, pos + 2 + rng.choice((0, 2)), rng.choice((2, 1)))
    elif op == 2 and kind == 4:  # interface: number, endpoints, class, subclass, protocol
        field = rng.choice((2, 3, 4, 5, 6, 7))
        poke(rng, b, pos + field, 1,
             value=rng.choice((0, 8, 6, 0x50, 0x62, 0xFF, 1)) if field >= 5 else None)
    elif op == 2 and kind == 5:  # endpoint: address, attributes, max packet size
        field = rng.choice((2, 3, 4))
        poke(rng, b, pos + field, 2 if field == 4 else 1,
             value=rng.choice((0, 0x80, 0x81, 0x02, 0x8F, 0x0F)) if field == 2 else None)
    elif op == 2 and kind == 1:  # device: VID/PID, string indexes, configurations
        poke(rng, b, pos + rng.choice((8, 10, 14, 15, 16, 17)), 1)
    elif op == 3:
        return bytes(b[: rng.randrange(len(b) + 1)])
    else:
        return bytes_mutation(rng, data)
    return bytes(b)


def mutate_sense(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    field = rng.choice((0, 1, 2, 7, 12, 13))
    if field == 0:
        b[0] = rng.choice((0x70, 0x71, 0x72, 0x73, 0xF0, 0x7F, 0))
    elif field < len(b):
        b[field] = rng.randrange(256)
    if rng.random() < 0.3:
        del b[rng.randrange(len(b) + 1) :]
    return bytes(b)


FAT_BPB = ((11, 2), (13, 1), (14, 2), (16, 1), (17, 2), (19, 2), (21, 1), (22, 2), (28, 4),
           (32, 4), (36, 4), (44, 4), (48, 2))
EXFAT_BOOT = ((64, 8), (72, 8), (80, 4), (84, 4), (88, 4), (92, 4), (96, 4), (108, 1),
              (109, 1), (110, 1))
FAT_DIRENT = ((0, 1), (11, 1), (12, 1), (13, 1), (20, 2), (26, 2), (28, 4))
EXFAT_DIRENT = ((0, 1), (1, 1), (3, 1), (4, 2), (8, 8), (20, 4), (24, 8), (35, 1))


def mutate_sector(rng: random.Random, data: bytes) -> bytes:
    """Damage one 512-byte sector the way a hostile or broken medium would."""
    b = bytearray(data)
    boots = [i for i in range(0, len(b) - 511, 512) if b[i + 510 : i + 512] == b"\x55\xaa"]
    base = rng.choice(boots) if boots and rng.random() < 0.5 else \
        512 * rng.randrange(len(b) // 512)
    sector = b[base : base + 512]
    boot = sector[510:512] == b"\x55\xaa"
    op = rng.randrange(4)
    if boot and op == 3 and sector[0] in (0xEB, 0xE9) and sector[3:11] != b"EXFAT   ":
        # a FAT32 geometry that holds together, with a FAT far larger than any medium
        fat = rng.choice((1 << 20, 1 << 24, 1 << 28, 0x7FFFFFF))
        struct.pack_into("<H", sector, 22, 0)  # FATSz16: 0 says FAT32
        struct.pack_into("<II", sector, 32, 0xFFFFFFF0, fat)  # TotSec32, FATSz32
        struct.pack_into("<H", sector, 19, 0)  # TotSec16
    elif boot and sector[3:11] == b"EXFAT   ":
        offset, size = rng.choice(EXFAT_BOOT)
        if offset in (108, 109):
            sector[offset] = rng.choice((0, 9, 12, 16, 25, 31, 32, 63, 255))
        else:
            poke(rng, sector, offset, size)
    elif boot and op < 2 and (sector[54:57] == b"FAT" or sector[82:85] == b"FAT" or
                              sector[11:13] in (b"\x00\x02", b"\x00\x10")):
        offset, size = rng.choice(FAT_BPB)
        poke(rng, sector, offset, size)
    elif boot:  # the MBR's partition entries
        entry = 446 + 16 * rng.randrange(4)
        field = rng.choice((0, 4, 8, 12))
        if field == 4:
            sector[entry + 4] = rng.choice((0x01, 0x04, 0x06, 0x07, 0x0B, 0x0C, 0x0E, 0x05,
                                            0x0F, 0xEE, 0x83, 0))
        else:
            poke(rng, sector, entry + field, 1 if field == 0 else 4)
    elif op < 2:  # directory entries, FAT and exFAT shapes
        slot = 32 * rng.randrange(16)
        offset, size = rng.choice(FAT_DIRENT if op == 0 else EXFAT_DIRENT)
        if offset == 0:
            sector[slot] = rng.choice((0, 0xE5, 0x2E, 0x05, 0x41, 0x42, 0x01, 0x81, 0x82, 0x83,
                                       0x85, 0xC0, 0xC1, 0xA0, 0x05, 0xFF))
        elif op == 0 and offset == 11:
            sector[slot + 11] = rng.choice((0x0F, 0x10, 0x20, 0x08, 0x3F, 0xFF, 0))
        else:
            poke(rng, sector, slot + offset, size)
    else:  # FAT entries: loops, ends of chains, bad clusters, out-of-range clusters
        width = rng.choice((2, 4))
        index = rng.randrange(512 // width)
        value = rng.choice((0, 1, 2, index, index + 1, 0xFFF7, 0xFFFF, 0x0FFFFFF7, 0x0FFFFFFF,
                            0xFFFFFFFF, rng.randrange(1 << (8 * width))))
        sector[index * width : index * width + width] = \
            (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    b[base : base + 512] = sector
    return bytes(b)


def mutate_payload(rng: random.Random, data: bytes, setup: bytes | None) -> bytes:
    """Pick the mutation that suits what the payload is."""
    if rng.random() < 0.1:
        return bytes_mutation(rng, data)
    if len(data) == 31 and data[:4] == b"USBC":
        return mutate_cbw(rng, data)
    if len(data) == 13 and data[:4] == b"USBS":
        return mutate_csw(rng, data)
    if setup is not None and len(setup) >= 2 and setup[1] == 6 or \
            len(data) >= 2 and 2 <= data[0] <= len(data) and data[1] in (1, 2, 3, 4, 5, 15):
        return mutate_descriptors(rng, data)
    if len(data) >= 512:
        return mutate_sector(rng, data)
    if len(data) >= 8 and data[0] & 0x7F in (0x70, 0x71, 0x72, 0x73):
        return mutate_sense(rng, data)
    return bytes_mutation(rng, data)


# ---- USB records ----------------------------------------------------------------------


def split_record(linktype: int, data: bytes, order: str) -> tuple[bytes, bytes] | None:
    """(header, payload) of a usbmon or USBPcap record; None if it is not one."""
    if linktype in USBMON_LINKTYPES:
        size = USBMON_LINKTYPES[linktype]
        return (data[:size], data[size:]) if len(data) >= size else None
    if linktype == USBPCAP and len(data) >= 27:
        header_len = struct.unpack_from("<H", data)[0]
        if 27 <= header_len <= len(data):
            return data[:header_len], data[header_len:]
    return None


def join_record(linktype: int, header: bytes, payload: bytes, order: str,
                consistent: bool) -> bytes:
    """Header and payload again, the header's length fields following the payload when
    ``consistent``."""
    h = bytearray(header)
    if consistent and linktype in USBMON_LINKTYPES and len(h) >= 48:
        struct.pack_into(order + "I", h, 36, len(payload))  # len_cap
        if h[8] == 0x43 and h[10] & 0x80 or h[8] == 0x53 and not h[10] & 0x80:
            struct.pack_into(order + "I", h, 32, len(payload))  # the URB length
    if consistent and linktype == USBPCAP and len(h) >= 27:
        struct.pack_into("<I", h, 23, len(payload))
    return bytes(h) + payload


def mutate_usbmon_header(rng: random.Random, header: bytes, order: str) -> bytes:
    h = bytearray(header)
    field = rng.randrange(12)
    if field == 0:
        poke(rng, h, 0, 8, order)  # URB id: collide or scatter
    elif field == 1:
        h[8] = rng.choice((0x53, 0x43, 0x45, 0x00, 0xFF))
    elif field == 2:
        h[9] = rng.choice((0, 1, 2, 3, 4, 0xFF))
    elif field == 3:
        h[10] = rng.choice((h[10] ^ 0x80, 0, 0x80, 0x81, 0x02, 0x7F, 0xFF))
    elif field == 4:
        h[11] = rng.choice((0, 1, 127, 255, h[11] + 1 & 0xFF))
    elif field == 5:
        poke(rng, h, 12, 2, order)  # bus
    elif field == 6:
        h[14] = rng.choice((0, 1, 0x2D, 0xFF))  # flag_setup
    elif field == 7:
        h[15] = rng.choice((0, 0x3D, 0x3C, 0x3E, 0xFF))  # flag_data
    elif field == 8:
        poke(rng, h, 16, 8, order)  # seconds (not read: the container's time counts)
    elif field == 9:
        struct.pack_into(order + "i", h, 28, rng.choice(ERRNOS))
    elif field == 10:
        poke(rng, h, rng.choice((32, 36)), 4, order)  # length, len_cap
    else:
        if len(h) >= 64 and rng.random() < 0.5:
            poke(rng, h, 60, 4, order)  # number of isochronous descriptors
        else:
            h[40:48] = mutate_setup(rng, bytes(h[40:48]))
    return bytes(h)


def mutate_usbpcap_header(rng: random.Random, header: bytes) -> bytes:
    h = bytearray(header)
    field = rng.randrange(10)
    if field == 0:
        poke(rng, h, 0, 2)  # header length
    elif field == 1:
        poke(rng, h, 2, 8)  # IRP id
    elif field == 2:
        poke(rng, h, 10, 4)  # USBD status
    elif field == 3:
        poke(rng, h, 14, 2)  # URB function
    elif field == 4:
        h[16] ^= 1  # direction: submission or completion
    elif field == 5:
        poke(rng, h, rng.choice((17, 19)), 2)  # bus, device
    elif field == 6:
        h[21] = rng.choice((h[21] ^ 0x80, 0, 0x80, 0x81, 0x02, 0xFF))
    elif field == 7:
        h[22] = rng.choice((0, 1, 2, 3, 0xFE, 0xFF, 4))
    elif field == 8:
        poke(rng, h, 23, 4)  # data length
    elif len(h) >= 28:
        h[27] = rng.choice((0, 1, 2, 3, 4, 0xFF))  # control stage
    return bytes(h)


def mutate_setup(rng: random.Random, setup: bytes) -> bytes:
    s = bytearray(setup.ljust(8, b"\0"))
    field = rng.randrange(5)
    if field == 0:
        s[0] = rng.choice((0x80, 0x00, 0x21, 0xA1, 0x02, 0xC0, 0xFF))
    elif field == 1:
        s[1] = rng.choice((0, 1, 3, 5, 6, 8, 9, 11, 0xFE, 0xFF))
    elif field == 2:
        s[3] = rng.choice((1, 2, 3, 4, 5, 6, 7, 15, 0x22))
        s[2] = rng.choice((0, 1, 2, 3, 0xEE, 0xFF))
    elif field == 3:
        poke(rng, s, 4, 2)
    else:
        poke(rng, s, 6, 2)
    return bytes(s)


def mutate_record(rng: random.Random, chunk: Chunk) -> Chunk:
    data = packet_data(chunk)
    if data is None or chunk.linktype is None:
        return chunk
    parts = split_record(chunk.linktype, data, chunk.order)
    if parts is None:
        return with_packet_data(chunk, bytes_mutation(rng, data))
    header, payload = parts
    is_usbmon = chunk.linktype in USBMON_LINKTYPES
    where = rng.random()
    if where < 0.35:
        header = mutate_usbmon_header(rng, header, chunk.order) if is_usbmon \
            else mutate_usbpcap_header(rng, header)
        record = header + payload
    else:
        setup = header[40:48] if is_usbmon and header[14] == 0 and header[8] == 0x53 else \
            (payload[:8] if not is_usbmon and len(header) >= 28 and header[27] == 0 else None)
        if not is_usbmon and setup is not None and rng.random() < 0.5:
            payload = mutate_setup(rng, payload[:8]) + payload[8:]
        elif payload:
            payload = mutate_payload(rng, payload, setup)
        elif is_usbmon and setup is not None:
            header = header[:40] + mutate_setup(rng, setup) + header[48:]
        else:
            payload = rng.randbytes(rng.choice((13, 31, 18, 9, 512)))
        record = join_record(chunk.linktype, header, payload, chunk.order,
                             consistent=rng.random() < 0.85)
    return with_packet_data(chunk, record)


# ---- containers -----------------------------------------------------------------------


def mutate_chunk_fields(rng: random.Random, chunk: Chunk) -> Chunk:
    """The container's own fields of one chunk: lengths, interface ids, timestamps."""
    b = bytearray(chunk.raw)
    o = chunk.order
    if chunk.kind == "record":
        poke(rng, b, rng.choice((0, 4, 8, 12)), 4, o)
    elif chunk.kind in ("epb", "pb"):
        offset = rng.choice((4, 8, 12, 16, 20, 24, len(b) - 4))
        poke(rng, b, offset, 4, o)
    elif chunk.kind == "idb" and len(b) >= 16:
        op = rng.randrange(4)
        if op == 0:
            poke(rng, b, 8, 2, o, value=rng.choice(LINKTYPES))
        elif op == 1:  # if_tsresol with an interesting value, or none at all
            value = rng.choice((0, 1, 6, 9, 19, 0x80, 0x8A, 0x9F, 0x7F, 0xFF))
            length = rng.choice((1, 1, 1, 0, 4, 200))
            options = struct.pack(o + "HH", 9, length) + bytes([value])
            options += b"\0" * rng.choice((3, 0)) + struct.pack(o + "HH", 0, 0) * rng.randrange(2)
            return replace(chunk, raw=raw_block(IDB, bytes(b[8:16]) + options, o, rng))
        elif op == 2:
            return replace(chunk, raw=raw_block(IDB, bytes(b[8 : 8 + rng.randrange(8)]), o, rng))
        else:
            poke(rng, b, 12, 4, o)  # snaplen
    elif chunk.kind == "shb" and len(b) >= 28:
        op = rng.randrange(3)
        if op == 0:
            poke(rng, b, 8, 4, o)  # byte-order magic
        elif op == 1:
            poke(rng, b, rng.choice((4, len(b) - 4)), 4, o)
        else:
            poke(rng, b, 12, 2, o)  # major version
    else:
        poke(rng, b, rng.choice((4, max(len(b) - 4, 0))), 4, o)
    return replace(chunk, raw=bytes(b))


def raw_block(block_type: int, body: bytes, order: str, rng: random.Random) -> bytes:
    """A block whose padding is sometimes missing, as broken writers leave it."""
    if rng.random() < 0.8:
        return block(block_type, body, order)
    length = len(body) + 12
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def synthetic_block(rng: random.Random, order: str) -> Chunk:
    """A block that real captures rarely hold: short, empty, of another section."""
    kind = rng.randrange(7)
    if kind == 0:
        return Chunk(raw_block(SPB, rng.randbytes(rng.choice((0, 2, 4, 8, 64))), order, rng),
                     "spb", None, order)
    if kind == 1:
        return Chunk(raw_block(PB, rng.randbytes(rng.choice((0, 4, 12, 19, 20))), order, rng),
                     "pb", None, order)
    if kind == 2:
        return Chunk(raw_block(EPB, rng.randbytes(rng.choice((0, 4, 12, 19))), order, rng),
                     "epb", None, order)
    if kind == 3:
        return Chunk(raw_block(IDB, b"", order, rng), "idb", None, order)
    if kind == 4:
        other = ">" if order == "<" else "<"
        body = struct.pack(other + "IHHq", 0x1A2B3C4D, 1, 0, -1)
        return Chunk(block(SHB, body, other), "shb", None, other)
    if kind == 5:
        return Chunk(raw_block(rng.choice((4, 5, 0xBAD, 0x80000001)), rng.randbytes(
            rng.randrange(40)), order, rng), "other", None, order)
    body = struct.pack(order + "IIIII", rng.choice((0, 1, 7, 0xFFFFFFFF)), 0xFFFFFFFF,
                       0xFFFFFFFF, 4, 4) + b"abcd"
    return Chunk(block(EPB, body, order), "epb", None, order)


def mutate_header(rng: random.Random, cap: Capture) -> None:
    """The pcap file header: magic, version, snaplen, linktype."""
    h = bytearray(cap.header)
    o = cap.order
    field = rng.randrange(4)
    if field == 0:
        magic = rng.choice((0xA1B2C3D4, 0xA1B23C4D, 0xD4C3B2A1, 0x4D3CB2A1, 0x0A0D0D0A))
        h[0:4] = struct.pack(o + "I", magic)
    elif field == 1:
        poke(rng, h, 4, 2, o)
    elif field == 2:
        poke(rng, h, 16, 4, o)
    else:
        linktype = rng.choice(LINKTYPES + (0x10000000 | 189,))
        h[20:24] = struct.pack(o + "I", linktype)
        cap.chunks = [replace(c, linktype=linktype & 0x0FFFFFFF) for c in cap.chunks]
    cap.header = bytes(h)


def convert_packet(chunk: Chunk, target: Capture) -> Chunk | None:
    """A packet chunk of another capture, re-framed for ``target``'s container."""
    data = packet_data(chunk)
    if data is None:
        return None
    if target.container == "pcap":
        shell = Chunk(struct.pack(target.order + "IIII", 1, 0, 0, 0), "record",
                      chunk.linktype, target.order)
    else:
        shell = Chunk(block(EPB, bytes(20), target.order), "epb", chunk.linktype, target.order)
    return with_packet_data(shell, data)


def _special(chunk: Chunk) -> bool:
    """A record worth more mutations than bulk data: control transfers (descriptors,
    class requests), CBWs, CSWs, sense data and sectors with a boot signature."""
    data = packet_data(chunk)
    if data is None or chunk.linktype is None:
        return False
    parts = split_record(chunk.linktype, data, chunk.order)
    if parts is None:
        return False
    header, payload = parts
    control = header[9] == 2 if chunk.linktype in USBMON_LINKTYPES else header[22] == 2
    return control or len(payload) in (13, 18, 31) or \
        len(payload) >= 512 and payload[510:512] == b"\x55\xaa"


def mutate(rng: random.Random, cap: Capture, donors: list[Capture]) -> Capture:
    """A mutated copy of ``cap``: one to four mutations, each at some level."""
    cap = cap.copy()
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        _one(rng, cap, donors)
    return cap


def _one(rng: random.Random, cap: Capture, donors: list[Capture]) -> None:
    packets = cap.packet_indexes()
    chunks = cap.chunks
    roll = rng.random()
    if roll < 0.55 and packets:  # a USB record and its payload: the most structure
        special = [i for i in packets if _special(chunks[i])] if rng.random() < 0.6 else []
        i = rng.choice(special or packets)
        chunks[i] = mutate_record(rng, chunks[i])
        return
    ops: list[Callable[[], None]] = []

    def truncate() -> None:
        size = len(cap.to_bytes())
        cap.cut = rng.choice((rng.randrange(size + 1), rng.randrange(min(size, 64) + 1),
                              max(size - rng.randrange(1, 64), 0)))

    def drop() -> None:
        if chunks:
            i = rng.randrange(len(chunks))
            del chunks[i : i + rng.choice((1, 1, 2, 5, 20))]

    def duplicate() -> None:
        if chunks:
            i = rng.randrange(len(chunks))
            chunks.insert(rng.randrange(len(chunks) + 1), chunks[i])

    def swap() -> None:
        if len(chunks) >= 2:
            i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
            chunks[i], chunks[j] = chunks[j], chunks[i]

    def splice() -> None:
        donor = rng.choice(donors)
        donor_packets = donor.packet_indexes()
        if not donor_packets:
            return
        start = rng.randrange(len(donor_packets))
        taken = [donor.chunks[k] for k in donor_packets[start : start + rng.randrange(1, 30)]]
        if donor.container == cap.container and donor.order == cap.order and \
                rng.random() < 0.5:
            new = taken  # as they are: interface ids may name nothing here
        else:
            new = [c for c in (convert_packet(t, cap) for t in taken) if c is not None]
        at = rng.randrange(len(chunks) + 1)
        chunks[at:at] = new

    def fields() -> None:
        if chunks:
            i = rng.randrange(len(chunks))
            chunks[i] = mutate_chunk_fields(rng, chunks[i])

    ops = [truncate, drop, duplicate, swap, splice, fields, fields]
    if cap.container == "pcap":
        ops.append(lambda: mutate_header(rng, cap))
    else:
        ops.append(lambda: chunks.insert(rng.randrange(len(chunks) + 1),
                                         synthetic_block(rng, cap.order)))
    rng.choice(ops)()
