"""Partition tables and the file systems in their partitions, learnt from the wire.

The shadow volume (``shadow.py``) decodes FAT12/16/32 and exFAT.  This module
tells it where partitions are, so that a FAT partition inside a GPT is found as
one inside an MBR is, and it labels what the shadow volume does not decode:

- the GPT's own sectors: ``gpt_header`` (primary and backup) and
  ``gpt_entries`` (their partition entry arrays), with what was wrong with them
  when a check failed, since a header that fails is reported, never trusted;
- the other file systems, named from their own signatures, never from a
  partition type: NTFS, ext2/ext3/ext4, ISO 9660, HFS+/HFSX and APFS;
- a partition whose file system was not seen (``unknown``, with the partition).

Only sectors seen on the wire are used, and nothing is sized from a count a
header claims before the bytes behind it have been seen.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from usbtrace.fs import gpt

SECTOR = gpt.SECTOR
GPT_PARTITION = gpt.PROTECTIVE_TYPE  # the type the shadow volume is given for GPT ones
MAX_PARTITIONS = 256  # partitions taken from one table; more are reported, not used
MAX_HEADERS = 16  # GPT headers remembered (LBA 1, the backups they name, found ones)
SIGNATURE_SPAN = 65  # a file system's signature sectors are 0, 2 and 64 into it
ANYWHERE = 1 << 64  # past every LBA: a GPT's headers and arrays may be anywhere

MBR_TYPE_NAMES = {0x01: "FAT12", 0x04: "FAT16", 0x06: "FAT16", 0x0E: "FAT16",
                  0x0B: "FAT32", 0x0C: "FAT32", 0x07: "NTFS or exFAT", 0x82: "Linux swap",
                  0x83: "Linux", 0xAF: "HFS+", 0xEF: "EFI system"}

# ext2/3/4 feature bits (the kernel's ext4.h): what ext3 lacks makes it ext4
EXT3_COMPAT_HAS_JOURNAL = 0x0004
EXT4_INCOMPAT = 0x0040 | 0x0080 | 0x0100 | 0x0200 | 0x0400 | 0x1000 | 0x8000 | 0x10000
EXT4_RO_COMPAT = 0x0008 | 0x0010 | 0x0020 | 0x0040 | 0x0100 | 0x0200 | 0x0400 | 0x1000


def identify(rel: int, sector: bytes) -> str | None:
    """The file system a partition's sector ``rel`` names by its signature, if any.

    Sector 0: NTFS ("NTFS    " OEM id at 3), APFS ("NXSB" at 32).  Sector 2 (byte
    1024): ext2/3/4 (s_magic 0xEF53 at 56, so byte 1080), HFS+/HFSX ("H+" version
    4 or "HX" version 5).  Sector 64 (byte 32768): ISO 9660 ("CD001" at 1).
    """
    if len(sector) < SECTOR:
        return None
    if rel == 0:
        if sector[3:11] == b"NTFS    ":
            return "ntfs"
        if sector[32:36] == b"NXSB":
            return "apfs"
    elif rel == 2:
        if sector[56:58] == b"\x53\xef":
            return _ext_name(sector)
        signature, version = struct.unpack_from(">2sH", sector, 0)
        if (signature, version) in ((b"H+", 4), (b"HX", 5)):
            return "hfs+" if signature == b"H+" else "hfsx"
    elif rel == 64 and sector[1:6] == b"CD001" and sector[6] == 1:
        return "iso9660"
    return None


def _ext_name(superblock: bytes) -> str | None:
    """ext2, ext3 or ext4 from the superblock's feature sets; None if it is implausible."""
    log_block, = struct.unpack_from("<I", superblock, 24)
    revision, = struct.unpack_from("<I", superblock, 76)
    if log_block > 6 or revision > 1:  # blocks of 1..64 KiB; revisions 0 and 1
        return None
    compat, incompat, ro_compat = struct.unpack_from("<III", superblock, 92)
    if revision == 0:
        compat = incompat = ro_compat = 0  # the feature fields came with revision 1
    if incompat & EXT4_INCOMPAT or ro_compat & EXT4_RO_COMPAT:
        return "ext4"
    return "ext3" if compat & EXT3_COMPAT_HAS_JOURNAL else "ext2"


@dataclass
class Partition:
    scheme: str  # MBR or GPT
    index: int
    start: int
    end: int  # exclusive
    type_name: str
    name: str = ""
    source: int = 0  # the LBA of the table that gave it (0: the MBR, else a GPT header)
    first_seen: bool = False  # its first sector has passed on the wire

    def describe(self) -> str:
        label = f" '{self.name}'" if self.name else ""
        return f"{self.scheme} partition {self.index}{label} ({self.type_name})"


@dataclass
class _Table:
    """A trusted header's entry array: the sectors of it seen, and what they said."""

    header: gpt.Header
    role: str  # primary or backup
    sectors: dict[int, bytes] = field(default_factory=dict)  # index in the array -> bytes
    problem: str | None = None  # the array's CRC32 failed
    notes: list[str] = field(default_factory=list)  # entries left out, and why
    used: int = 0  # partitions taken from it
    checked: bool = False  # its CRC32 was checked against the sectors kept

    @property
    def verified(self) -> bool:
        return self.problem is None and len(self.sectors) == self.header.array_sectors

    def detail(self) -> str:
        role = self.role
        if self.problem is not None:
            return f"{role}: {self.problem}: not trusted"
        if len(self.sectors) < self.header.array_sectors:
            return (f"{role}: {len(self.sectors)} of {self.header.array_sectors} sectors seen, "
                    "CRC32 not checked yet")
        text = f"{role}, {self.used} partitions"
        return "; ".join([text, *self.notes])


class DiskLayout:
    """What the partition tables seen say: partitions, and where the GPT's sectors are."""

    def __init__(self) -> None:
        self.sector0: str | None = None  # protective, mbr, or other (a volume); None: unseen
        self.headers: dict[int, gpt.Header] = {}  # every GPT header looked at, by LBA
        self.tables: dict[int, _Table] = {}  # entry arrays of trusted headers, by header LBA
        self.partitions: list[Partition] = []
        self.named: dict[int, str] = {}  # partition start -> file system named there
        # from this LBA on, a command teaches ``observe`` nothing and ``detect`` finds
        # nothing: both are asked at every command, and most are past it
        self.quiet_from = self._quiet_from()
        self._signatures = self._signature_lbas()
        # what ``quiet_from`` and ``_signatures`` were computed from: the partition list
        # (``_replace`` makes a new one for every change), its length, sector 0's kind,
        # and whether headers and tables exist.  Hosts read sector 0 and the partitions'
        # first sectors again at every mount; most such reads change none of it
        self._derived_from = self._derivation()
        # the last sector 0 parsed (its bytes, ``table``) and the partition list it left:
        # the same sector again, with that list untouched since, changes nothing
        self._zero: tuple[bytes, bool, list[Partition]] | None = None

    def _derivation(self) -> tuple[Any, ...]:
        return (self.partitions, len(self.partitions), self.sector0, bool(self.headers),
                bool(self.tables))

    # ---- learning ----------------------------------------------------------------------

    def observe(self, lba: int, data: bytes, table: bool) -> list[int]:
        """Learn from a command's sectors; the starts of partitions new to it.

        ``table`` says the shadow volume took sector 0 (in ``data`` when ``lba`` is
        0) for a partition table rather than a boot sector.
        """
        new = self._observe(lba, data, table)
        derived = self._derivation()
        old = self._derived_from
        if derived[0] is not old[0] or derived[1:] != old[1:]:
            self._derived_from = derived
            self.quiet_from = self._quiet_from()  # what it learnt is all that moves them
            self._signatures = self._signature_lbas()
        return new

    def quiet(self, lba: int, count: int) -> bool:
        """Whether ``count`` sectors at ``lba`` can teach ``observe`` nothing and make
        ``detect`` name nothing: past ``quiet_from``, or, below it with no GPT named or
        suspected, holding neither LBA 0 or 1 nor a signature sector of a partition (or
        of the disk's start).  Most commands below ``quiet_from`` read a FAT."""
        if lba >= self.quiet_from:
            return True
        if self.quiet_from == ANYWHERE or lba <= 1:
            return False
        signatures = self._signatures
        i = bisect_left(signatures, lba)
        return i == len(signatures) or signatures[i] >= lba + count

    def _signature_lbas(self) -> list[int]:
        """The sectors ``detect`` reads: 0, 2 and 64 into each base it looks at."""
        bases = [p.start for p in self.partitions]
        if self.sector0 not in ("protective", "mbr") and not self.tables:
            bases.append(0)
        return sorted({base + rel for base in bases for rel in (0, 2, 64)})

    def _quiet_from(self) -> int:
        """The first LBA from which a command can change nothing here and name no file
        system (see ``quiet_from``): past LBA 1 (a GPT's header) and past the signature
        sectors of every partition and of the disk's start; nowhere while a GPT is named
        or suspected, as its backup header and entry arrays may be anywhere."""
        if self.headers or self.tables or self.sector0 == "protective":
            return ANYWHERE
        reach = 2
        for p in self.partitions:
            reach = max(reach, p.start + SIGNATURE_SPAN)
        if self.sector0 != "mbr":  # no partition table: sector 0 may start a file system
            reach = max(reach, SIGNATURE_SPAN)
        return reach

    def _observe(self, lba: int, data: bytes, table: bool) -> list[int]:
        count = len(data) // SECTOR  # what was captured, whatever the command claimed
        if count == 0:
            return []
        new: list[int] = []
        if lba == 0:
            new += self._sector_zero(data[:SECTOR], table)
        if self.sector0 == "other":
            return new
        for at in self._header_candidates(lba, count, data):
            self._header(at, data[(at - lba) * SECTOR : (at - lba + 1) * SECTOR])
        for table_ in list(self.tables.values()):
            new += self._array(table_, lba, count, data)
        return new

    def _sector_zero(self, sector: bytes, table: bool) -> list[int]:
        """Learn from sector 0: what it is, and the MBR's partitions.  The same sector
        read again, with no table having changed the partitions since, sets the same
        kind and gives the same partitions, all known: nothing to do (``_zero``)."""
        zero = self._zero
        if zero is not None and zero[2] is self.partitions and zero[1] == table and \
                zero[0] == sector:
            return []
        new = self._read_sector_zero(sector, table)
        self._zero = (bytes(sector), table, self.partitions)
        return new

    def _read_sector_zero(self, sector: bytes, table: bool) -> list[int]:
        if not table:  # a boot sector (a volume without a partition table), or blank
            self.sector0 = "other" if sector[510:512] == b"\x55\xaa" else None
            return self._replace(0, [])  # an MBR seen before is gone
        if gpt.is_protective_mbr(sector):
            self.sector0 = "protective"
            return self._replace(0, [])  # a GPT's partitions are in the GPT
        self.sector0 = "mbr"
        found = []
        for i in range(4):
            record = sector[446 + 16 * i : 462 + 16 * i]
            ptype = record[4]
            first, size = struct.unpack_from("<II", record, 8)
            if ptype and size:
                name = MBR_TYPE_NAMES.get(ptype, f"type 0x{ptype:02x}")
                found.append(Partition("MBR", i + 1, first, first + size, name))
        return self._replace(0, found)

    def _replace(self, source: int, found: list[Partition]) -> list[int]:
        """The partitions a table gives now replace those it gave before; the starts of
        the new ones.  A partition the other copy of a GPT gave already is kept once."""
        keep = {(p.start, p.end) for p in found}
        self.partitions = [p for p in self.partitions
                           if p.source != source or (p.start, p.end) in keep]
        new = []
        for p in found:
            if not self._known(p.start):
                p.source = source
                self.partitions.append(p)
                new.append(p.start)
        return new

    def _known(self, start: int) -> bool:
        return any(p.start == start for p in self.partitions)

    def _header_candidates(self, lba: int, count: int, data: bytes) -> list[int]:
        """LBA 1, the backups that trusted headers name, and, while no header is
        trusted on a disk that says it has a GPT, any sector that is a header of
        its own LBA (how a backup is found when the primary fails)."""
        end = lba + count
        if not self.headers:  # the common case, asked at every command: no set to build
            found = [1] if lba <= 1 < end else []
            suspected = self.sector0 == "protective"
        else:
            wanted = {1} | {h.alternate for h in self.headers.values() if h.problem is None}
            found = [at for at in wanted if lba <= at < end]
            suspected = self.sector0 == "protective" or any(
                h.problem is not None for h in self.headers.values())
        if suspected and not self.tables:
            offset = data.find(gpt.SIGNATURE)
            while offset != -1:
                at = lba + offset // SECTOR
                if offset % SECTOR == 0 and offset + SECTOR <= len(data) and at not in found and \
                        struct.unpack_from("<Q", data, offset + 24)[0] == at:
                    found.append(at)
                offset = data.find(gpt.SIGNATURE, offset + 1)
        return found

    def _header(self, at: int, sector: bytes) -> None:
        header = gpt.parse_header(at, sector)
        if header is None:
            if self.sector0 == "protective" and at == 1:
                header = gpt.Header(at, "no \"EFI PART\" signature")
            else:
                self.headers.pop(at, None)
                return
        elif header.problem is None and self.sector0 == "mbr":
            header = gpt.Header(at, "ignored: the MBR at LBA 0 is not a protective MBR "
                                    "(a GPT left from an earlier partitioning?)")
        if at not in self.headers and len(self.headers) >= MAX_HEADERS:
            return
        old = self.headers.get(at)
        self.headers[at] = header
        if header.problem is not None:
            self.tables.pop(at, None)
        elif old != header or at not in self.tables:
            table = _Table(header, "primary" if at == 1 else "backup")
            before = self.tables.get(at)
            if before is not None and before.header.entry_lba == header.entry_lba:
                # a host that repartitions may write the new array before its header
                table.sectors = {i: sector for i, sector in before.sectors.items()
                                 if i < header.array_sectors}
            self.tables[at] = table

    def _array(self, table: _Table, lba: int, count: int, data: bytes) -> list[int]:
        """Keep the array's sectors in this command; when all are seen, check its CRC32
        and take its partitions."""
        header = table.header
        first = max(lba, header.entry_lba)
        last = min(lba + count, header.entry_lba + header.array_sectors)
        for at in range(first, last):
            sector = data[(at - lba) * SECTOR : (at - lba + 1) * SECTOR]
            if table.sectors.get(at - header.entry_lba) != sector:
                table.sectors[at - header.entry_lba] = sector
                table.checked = False
        if table.checked or len(table.sectors) < header.array_sectors:
            return []
        table.checked = True
        array = b"".join(table.sectors[i] for i in range(header.array_sectors))
        table.problem = gpt.array_crc_problem(header, array)
        if table.problem is not None:
            return []
        entries, table.notes = gpt.parse_entries(header, array)
        if len(entries) > MAX_PARTITIONS:
            table.notes.append(f"entry {entries[MAX_PARTITIONS].index} and later: not used "
                               f"(more than {MAX_PARTITIONS} partitions)")
            entries = entries[:MAX_PARTITIONS]
        table.used = len(entries)
        return self._replace(header.lba, [Partition("GPT", e.index, e.first, e.last + 1,
                                                    e.type_name, e.name) for e in entries])

    def detect(self, lba: int, data: bytes) -> list[tuple[int, int | None, str]]:
        """File systems this command's sectors name at partition starts (or at sector 0
        of a disk without a partition table): (start, end or None, name), once each."""
        count = len(data) // SECTOR
        bases: list[tuple[int, int | None]] = [(p.start, p.end) for p in self.partitions]
        if self.sector0 not in ("protective", "mbr") and not self.tables:
            bases.append((0, None))
        out: list[tuple[int, int | None, str]] = []
        for start, end in bases:
            if start + 64 < lba or start >= lba + count:  # none of its signature sectors
                continue
            for rel in (0, 2, 64):
                at = start + rel
                if not lba <= at < lba + count:
                    continue
                if rel == 0:
                    for p in self.partitions:
                        if p.start == start:
                            p.first_seen = True
                name = identify(rel, data[(at - lba) * SECTOR : (at - lba + 1) * SECTOR])
                if name is not None and self.named.get(start) != name:
                    self.named[start] = name
                    out.append((start, end, name))
        return out

    # ---- labelling ---------------------------------------------------------------------

    def label(self, start: int, stop: int, default: str, volume_starts: Collection[int]
              ) -> list[tuple[int, int, str, str | None]]:
        """Runs (first, end, kind, detail) for LBAs ``start``..``stop`` that no volume and
        no named file system holds: GPT structures, partitions not understood, and
        ``default`` (or ``outside_volumes`` once a GPT is trusted) for the rest."""
        if self.tables and any(t.verified for t in self.tables.values()):
            default = "outside_volumes"
        regions = self._regions()
        cuts = {start, stop}
        for first, end, _, _, _ in regions:
            if start < first < stop:
                cuts.add(first)
            if start < end < stop:
                cuts.add(end)
        points = sorted(cuts)
        runs: list[tuple[int, int, str, str | None]] = []
        for first, end in zip(points, points[1:]):
            kind, detail = default, None
            for r_first, r_end, r_kind, r_detail, partition in regions:
                if r_first <= first < r_end:
                    kind, detail = r_kind, r_detail
                    if partition is not None:
                        kind, detail = self._inside(partition, volume_starts)
                    break
            if runs and runs[-1][1] == first and runs[-1][2:] == (kind, detail):
                runs[-1] = (runs[-1][0], end, kind, detail)
            else:
                runs.append((first, end, kind, detail))
        return runs

    def _regions(self) -> list[tuple[int, int, str, str | None, Partition | None]]:
        """GPT headers and arrays first (they win over a malformed partition on them)."""
        regions: list[tuple[int, int, str, str | None, Partition | None]] = []
        for at, header in self.headers.items():
            role = "primary" if at == 1 else "backup"
            detail = role if header.problem is None else f"{role}: {header.problem}: " \
                "not trusted"
            regions.append((at, at + 1, "gpt_header", detail, None))
        for table in self.tables.values():
            h = table.header
            regions.append((h.entry_lba, h.entry_lba + h.array_sectors, "gpt_entries",
                            table.detail(), None))
        for p in self.partitions:
            regions.append((p.start, p.end, "partition", None, p))
        return regions

    @staticmethod
    def _inside(p: Partition, volume_starts: Collection[int]) -> tuple[str, str]:
        if p.start in volume_starts:
            return "outside_volumes", f"{p.describe()}, past the end of its file system"
        if p.first_seen:
            return "unknown", f"{p.describe()}: file system not recognised"
        return "unknown", f"{p.describe()}: file system not seen"
