"""GUID Partition Table (UEFI 2.x, chapter 5 "GUID Partition Table (GPT) Disk Layout").

The layouts are construct constants named as the specification names them.  The
checks here are the ones §5.3.2 asks of a reader: signature, header size, header
CRC32, MyLBA, and the partition entry array's CRC32.  Everything a header claims
is a length field from the wire, so the array is bounded before anything is
read from it, and entries are only ever parsed from bytes actually seen.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass

from construct import Array, Bytes, Const, Int16ul, Int32ul, Int64ul, Struct

from usbtrace.fs.layouts import PartitionEntry

SECTOR = 512  # the model counts 512-byte LBAs
SIGNATURE = b"EFI PART"
HEADER_MIN, HEADER_MAX = 92, SECTOR  # §5.3.2: 92 <= HeaderSize <= the logical block size
MAX_ARRAY_BYTES = 1 << 20  # beyond this an array is refused, not read (128 B x 8192 entries)
PROTECTIVE_TYPE = 0xEE  # §5.2.3: OSType of the protective MBR's partition record

# §5.2.3, table 5-3: the protective MBR (the records are the legacy MBR's, table 5-2)
ProtectiveMbr = Struct(
    "BootCode" / Bytes(440),
    "UniqueMBRDiskSignature" / Int32ul,
    "Unknown" / Int16ul,
    "PartitionRecord" / Array(4, PartitionEntry),
    "Signature" / Const(b"\x55\xaa"),
)
# §5.3.2, table 5-5: the GPT header (92 bytes; the rest of its block is reserved, zero)
GptHeader = Struct(
    "Signature" / Const(SIGNATURE),
    "Revision" / Int32ul,
    "HeaderSize" / Int32ul,
    "HeaderCRC32" / Int32ul,
    "Reserved" / Int32ul,
    "MyLBA" / Int64ul,
    "AlternateLBA" / Int64ul,
    "FirstUsableLBA" / Int64ul,
    "LastUsableLBA" / Int64ul,
    "DiskGUID" / Bytes(16),
    "PartitionEntryLBA" / Int64ul,
    "NumberOfPartitionEntries" / Int32ul,
    "SizeOfPartitionEntry" / Int32ul,
    "PartitionEntryArrayCRC32" / Int32ul,
)
# §5.3.3, table 5-6: a partition entry (128 bytes; a larger SizeOfPartitionEntry pads it)
GptPartitionEntry = Struct(
    "PartitionTypeGUID" / Bytes(16),
    "UniquePartitionGUID" / Bytes(16),
    "StartingLBA" / Int64ul,
    "EndingLBA" / Int64ul,
    "Attributes" / Int64ul,
    "PartitionName" / Bytes(72),
)
ENTRY_MIN = GptPartitionEntry.sizeof()
_UNUSED = bytes(16)

# Partition type GUIDs a stick is likely to carry, for the log's details only: the
# file system itself is always identified from its own sectors, never from this.
TYPE_NAMES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI system",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "basic data",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "48465300-0000-11aa-aa11-00306543ecac": "Apple HFS+",
    "7c3457ef-0000-11aa-aa11-00306543ecac": "Apple APFS",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
}


def guid(raw: bytes) -> str:
    """A GUID as text: the first three fields are little-endian on disk (UEFI appendix A)."""
    return str(uuid.UUID(bytes_le=bytes(raw[:16])))


def type_name(raw: bytes) -> str:
    text = guid(raw)
    return TYPE_NAMES.get(text, text)


def is_protective_mbr(sector: bytes) -> bool:
    """§5.2.3: an MBR with a record of OSType 0xEE (a hybrid MBR has others beside it)."""
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        return False
    return any(sector[446 + 16 * i + 4] == PROTECTIVE_TYPE for i in range(4))


@dataclass(frozen=True)
class Header:
    """One GPT header as read at ``lba``, and whether it may be trusted (``problem``)."""

    lba: int
    problem: str | None  # None: every §5.3.2 check passed
    alternate: int = 0
    first_usable: int = 0
    last_usable: int = 0
    disk_guid: str = ""
    entry_lba: int = 0
    entry_count: int = 0
    entry_size: int = 0
    array_crc: int = 0

    @property
    def array_bytes(self) -> int:
        return self.entry_count * self.entry_size

    @property
    def array_sectors(self) -> int:
        return -(-self.array_bytes // SECTOR)


def parse_header(lba: int, sector: bytes) -> Header | None:
    """The header in ``sector`` read at ``lba``; None without the "EFI PART" signature.

    A header that fails a check comes back with ``problem`` saying which, so that
    the log can report it rather than either trusting it or staying silent.
    """
    if len(sector) < SECTOR or sector[:8] != SIGNATURE:
        return None
    fields = GptHeader.parse(sector)
    size = fields.HeaderSize
    if not HEADER_MIN <= size <= HEADER_MAX:
        return Header(lba, f"HeaderSize {size} is outside {HEADER_MIN}..{HEADER_MAX}")
    stored = fields.HeaderCRC32
    computed = zlib.crc32(bytes(sector[:16]) + b"\0\0\0\0" + bytes(sector[20:size]))
    if stored != computed:
        return Header(lba, f"header CRC32 mismatch (stored 0x{stored:08x}, computed "
                           f"0x{computed:08x})")
    if fields.MyLBA != lba:
        return Header(lba, f"MyLBA {fields.MyLBA} but read at LBA {lba}")
    entry_size, count = fields.SizeOfPartitionEntry, fields.NumberOfPartitionEntries
    header = Header(lba, None, fields.AlternateLBA, fields.FirstUsableLBA,
                    fields.LastUsableLBA, guid(fields.DiskGUID), fields.PartitionEntryLBA,
                    count, entry_size, fields.PartitionEntryArrayCRC32)
    problem = _layout_problem(header)
    return header if problem is None else Header(lba, problem)


def _layout_problem(h: Header) -> str | None:
    """What makes a header with a good CRC still unusable: impossible sizes and places."""
    size = h.entry_size
    if size < ENTRY_MIN or size % ENTRY_MIN or (size // ENTRY_MIN) & (size // ENTRY_MIN - 1):
        return f"SizeOfPartitionEntry {size} is not 128 x 2^n"
    if h.array_bytes > MAX_ARRAY_BYTES:
        return (f"a partition entry array of {h.array_bytes} bytes ({h.entry_count} x "
                f"{size}) is beyond the {MAX_ARRAY_BYTES} bytes this decoder reads")
    if h.first_usable > h.last_usable + 1:
        return f"FirstUsableLBA {h.first_usable} is past LastUsableLBA {h.last_usable}"
    array_end = h.entry_lba + h.array_sectors
    inside_usable = h.entry_lba <= h.last_usable and array_end > h.first_usable
    if h.entry_lba < 2 or inside_usable or \
            h.entry_lba <= h.lba < array_end:
        return (f"PartitionEntryLBA {h.entry_lba} puts the entry array over the header "
                "or the usable LBAs")
    if h.first_usable <= h.lba <= h.last_usable:
        return f"the header at LBA {h.lba} lies inside the usable LBAs"
    return None


def array_crc_problem(header: Header, array: bytes) -> str | None:
    """§5.3.2: the CRC32 of the whole entry array, as its header stores it."""
    computed = zlib.crc32(array[: header.array_bytes])
    if computed != header.array_crc:
        return (f"entry array CRC32 mismatch (stored 0x{header.array_crc:08x}, computed "
                f"0x{computed:08x})")
    return None


@dataclass(frozen=True)
class Entry:
    """A used partition entry: its index (from 1, as tools number them) and where it lies."""

    index: int
    type_guid: str
    type_name: str
    unique_guid: str
    first: int
    last: int  # EndingLBA, inclusive
    attributes: int
    name: str


def parse_entries(header: Header, array: bytes) -> tuple[list[Entry], list[str]]:
    """The used entries of a verified array, and what was wrong with those left out."""
    used: list[Entry] = []
    problems: list[str] = []
    size = header.entry_size
    for i in range(min(header.entry_count, len(array) // size)):
        raw = array[i * size : i * size + ENTRY_MIN]
        if raw[:16] == _UNUSED:
            continue
        e = GptPartitionEntry.parse(raw)
        name = bytes(e.PartitionName).decode("utf-16-le", "replace").split("\x00", 1)[0]
        entry = Entry(i + 1, guid(e.PartitionTypeGUID), type_name(e.PartitionTypeGUID),
                      guid(e.UniquePartitionGUID), e.StartingLBA, e.EndingLBA, e.Attributes,
                      name)
        if entry.last < entry.first:
            problems.append(f"entry {entry.index}: EndingLBA {entry.last} before "
                            f"StartingLBA {entry.first}")
        elif entry.first < header.first_usable or entry.last > header.last_usable:
            problems.append(f"entry {entry.index}: LBAs {entry.first}..{entry.last} outside "
                            f"the usable {header.first_usable}..{header.last_usable}")
        elif any(o.first <= entry.last and entry.first <= o.last for o in used):
            problems.append(f"entry {entry.index}: overlaps another partition")
        else:
            used.append(entry)
    return used, problems
