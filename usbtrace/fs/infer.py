"""A FAT volume's geometry from what a capture shows, when it never shows the boot sector.

Most captures start after the volume was mounted: the boot sector was read before the
capture began.  What they do show is enough to solve for the geometry exactly, with the
rules of Microsoft's FAT specification:

- a FAT's first sector holds the media byte and the end-of-chain mark of entry 1, so its
  LBA is where a FAT copy starts; a FAT sector full of chains (entry i holding i + 1)
  says which sector of the FAT it is; copies are ``FATSz`` sectors apart;
- a subdirectory's first sector holds "." (its own first cluster C), so its LBA L gives
  ``data_start + (C - 2) * spc = L``; two of them give both unknowns;
- a file's entry (first cluster, size) against its FAT chain gives the cluster size:
  ``ceil(size / cluster_bytes)`` is the chain's length;
- a FAT32 volume's clusters start right after its FATs; a FAT12/16 root directory sits
  right after the FATs, its data region right after the root;
- a write of exactly a file's size in blocks, to one LBA, matched to one entry alone,
  is the file's first cluster (used only where the exact evidence leaves a number open).

Every piece of evidence is checked against the geometry solved from the others; any
disagreement refuses the geometry, with the reason, and nothing is guessed: an open
number leaves the volume unknown.  The notes say which evidence decided each number.
Evidence is kept in bounded sets; what did not fit is said.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

SECTOR = 512
ZERO_SECTOR = bytes(SECTOR)
MAX_SECTORS = 4096  # FAT and directory sectors kept as evidence (2 MiB each at most)
MAX_WRITES = 4096  # write extents kept to match against entries' sizes
MAX_REPLAY_SECTORS = 16384  # metadata sectors kept to replay the window (8 MiB)
MAX_STEPS = 1 << 16  # FAT chain steps one solve may walk (files past it are not used)
MIN_LINKS = 8  # chain links (entry i holding i + 1) that say which FAT sector this is
SOLVE_EVERY = 64  # commands between two checks of an accepted geometry
EOC = {"fat12": 0xFF8, "fat16": 0xFFF8, "fat32": 0x0FFFFFF8}
ENTRY_BITS = {"fat12": 12, "fat16": 16, "fat32": 32}
MAX_CLUSTERS = {"fat12": 4084, "fat16": 65524, "fat32": 0x0FFFFFF5}
MIN_FAT_SECTORS = {"fat12": 1, "fat16": 16, "fat32": 512}  # FAT spec §3.5: the count bounds
MEDIA = {0xF0, *range(0xF8, 0x100)}
DOT, DOTDOT = b".          ", b"..         "


@dataclass(frozen=True)
class Geometry:
    """Absolute LBAs (512-byte sectors) of a FAT volume whose boot sector was not seen."""

    kind: str
    fat_start: int
    fat_size: int
    num_fats: int
    root_start: int  # FAT12/16; 0 for FAT32
    root_sectors: int
    data_start: int
    spc: int
    cluster_count: int  # an upper bound: the clusters the FAT can number
    root_cluster: int  # FAT32; 0 for FAT12/16
    evidence: tuple[str, ...]


@dataclass
class DirSector:
    """What a sector that reads as FAT directory entries says."""

    dot: int | None  # the "." entry's cluster (a subdirectory's first sector)
    dotdot: int | None
    label: bool  # a volume label: the root directory
    entries: list[tuple[str, bool, int, int, int]]  # name, is_dir, cluster lo, hi, size


@dataclass
class Buffered:
    """A command kept to be attributed again once the geometry is known."""

    seq: int
    opcode: int
    lba: int
    blocks: int
    length: int
    status: str
    sectors: dict[int, bytes] = field(default_factory=dict)  # index in payload -> sector


def fat_first_kinds(sector: bytes) -> set[str]:
    """The FAT types whose first sector this can be (entries 0 and 1: media, EOC)."""
    if len(sector) < 8 or sector[0] not in MEDIA or sector[1:3] != b"\xff\xff":
        return set()
    kinds = {"fat12"}
    if sector[3] & 0x3F == 0x3F:  # entry 1: EOC, its top two bits the volume's state
        kinds.add("fat16")
    if sector[3] == 0x0F and sector[4:7] == b"\xff\xff\xff" and sector[7] & 0xF3 == 0x03:
        kinds.add("fat32")
    return kinds


def fat_values(sector: bytes, kind: str) -> tuple[int, ...]:
    """A FAT16 or FAT32 sector's entries."""
    if kind == "fat16":
        return struct.unpack("<256H", sector)
    return tuple(v & 0x0FFFFFFF for v in struct.unpack("<128I", sector))


PLUS_ONE = bytes((b + 1) & 0xFF for b in range(256))


def _steps(sector: bytes, width: int) -> int:
    """How often an entry is the one before it plus one (a chain's link; a carry into
    the next byte is not counted), at C speed: the low byte plus one and every other byte
    XORed with the next entry's, as big integers; a link is a zero byte in all."""
    lows = sector[0::width]
    n = len(lows) - 1
    diff = int.from_bytes(lows[:-1].translate(PLUS_ONE), "big") ^ \
        int.from_bytes(lows[1:], "big")
    for k in range(1, width):
        column = sector[k::width]
        diff |= int.from_bytes(column[:-1], "big") ^ int.from_bytes(column[1:], "big")
    return diff.to_bytes(n, "big").count(0)


def fat_index(sector: bytes, kind: str) -> int | None:
    """Which sector of the FAT this is, from its chains: entry i of sector k is cluster
    k * per + i, and a chain of consecutive clusters holds cluster + 1.  None when fewer
    than ``MIN_LINKS`` links agree or any entry is not a FAT value."""
    # cheap refusals first: a chained sector's high bytes take few values (runs of
    # neighbouring clusters, 00 free, FF end), and FAT32 keeps each entry's top nibble 0
    if kind == "fat16" and (len(set(sector[1::2])) > 16 or _steps(sector, 2) < MIN_LINKS):
        return None
    if kind == "fat32" and (max(sector[3::4]) > 0x0F or len(set(sector[2::4])) > 16 or
                            _steps(sector, 4) < MIN_LINKS):
        return None
    per = SECTOR * 8 // ENTRY_BITS[kind]
    values = fat_values(sector, kind)
    bases: Counter[int] = Counter()
    for i, v in enumerate(values):
        if v == 1 or (kind == "fat32" and sector[i * 4 + 3] & 0xF0):
            return None  # never a FAT entry (FAT32's top four bits are reserved, zero here)
        if 2 <= v < EOC[kind] - 1:
            bases[v - i - 1] += 1
    if not bases:
        return None
    base, links = bases.most_common(1)[0]
    if links < MIN_LINKS or base < 0 or base % per:
        return None
    return base // per


def readings(sector: bytes, first: set[str]) -> dict[str, tuple[int, int]]:
    """For each FAT type the sector reads as: (its index in the FAT, chain links in it).
    A FAT12 sector only as a FAT's first one: its entries straddle the others."""
    out: dict[str, tuple[int, int]] = {}
    for kind in ("fat12", "fat16", "fat32"):
        index = 0 if kind in first else None if kind == "fat12" else fat_index(sector, kind)
        if index is None:
            continue
        if kind == "fat12":
            links = 0
            for c in range(2, 340):
                at = c + c // 2
                value = int.from_bytes(sector[at : at + 2], "little")
                links += (value >> 4 if c & 1 else value & 0x0FFF) == c + 1
        else:
            base = index * (SECTOR * 8 // ENTRY_BITS[kind])
            links = sum(1 for i, v in enumerate(fat_values(sector, kind)) if v == base + i + 1)
        out[kind] = (index, links)
    return out


def dir_sector(sector: bytes) -> DirSector | None:
    """The sector as FAT directory entries, or None if it cannot be (FAT spec §6): every
    slot is free, deleted, a long-name part or a short entry with a valid name and
    attributes; at least one live short entry."""
    dot = dotdot = None
    label = False
    entries: list[tuple[str, bool, int, int, int]] = []
    ended = False
    for i in range(0, SECTOR, 32):
        e = sector[i : i + 32]
        first, attr = e[0], e[11]
        if ended or first == 0:
            if any(e):
                return None  # after the end mark every slot is free
            ended = True
            continue
        if first == 0xE5:
            continue
        if attr & 0x3F == 0x0F:  # a long-name part
            if not 1 <= first & 0x3F <= 20 or e[12] or e[26:28] != b"\0\0":
                return None
            continue
        if attr & 0xC0 or any(c < 0x20 and not (c == 0x05 and k == 0)
                              for k, c in enumerate(e[:11])):
            return None
        if any(c in b'"*+,/:;<=>?[\\]|' for c in e[:11]) and e[:11] not in (DOT, DOTDOT):
            return None
        hi, lo, size = struct.unpack_from("<H4xHI", e, 20)
        if e[:11] == DOT and attr & 0x10:
            if i != 0:
                return None
            dot = (hi << 16) | lo
            continue
        if e[:11] == DOTDOT and attr & 0x10:
            if i != 32:
                return None
            dotdot = (hi << 16) | lo
            continue
        if e[:1] == b" " or b"." in e[:11]:
            return None
        if attr & 0x08:
            label = True
            continue
        name = e[:8].rstrip(b" ").decode("cp437", "replace")
        ext = e[8:11].rstrip(b" ").decode("cp437", "replace")
        is_dir = bool(attr & 0x10)
        if is_dir and size:
            return None  # FAT spec §6: a directory's DIR_FileSize is 0
        entries.append((f"{name}.{ext}" if ext else name, is_dir, lo, hi, size))
    if dot is None and not entries and not label:
        return None
    return DirSector(dot, dotdot, label, entries)


def fsinfo(sector: bytes) -> bool:
    """FAT32 FSInfo: its three signatures (FAT spec §5)."""
    return sector[:4] == b"RRaA" and sector[484:488] == b"rrAa" and \
        sector[508:512] == b"\0\0\x55\xaa"


class RefusedError(Exception):
    """Evidence that disagrees: the reason is the message."""


class Inference:
    """Evidence from every command seen while no boot sector is known; a geometry once
    the evidence decides every number and all of it agrees."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.fat_first: dict[int, set[str]] = {}  # LBA -> FAT types its content allows
        self.fat_sectors: dict[int, bytes] = {}  # LBA -> latest content (FAT-looking)
        self.dirs: dict[int, DirSector] = {}  # LBA -> latest directory sector
        self.dir_raw: dict[int, bytes] = {}  # LBA -> its content
        self.seen_at: dict[int, int] = {}  # FAT or directory sector's LBA -> seq last seen
        # a FAT sector's readings, worked out once: type -> (its index in the FAT, links)
        self.readings: dict[int, dict[str, tuple[int, int]]] = {}
        self._now = 0
        self._solved_at = -SOLVE_EVERY
        self.fsinfo: set[int] = set()
        self.writes: dict[int, int] = {}  # LBA -> blocks of the latest write starting there
        self.buffer: deque[Buffered] = deque()
        self.replay_sectors = 0
        self.replay_full_at: int | None = None  # seq from which commands were not kept
        self.dropped = False  # evidence past the bounds
        self.released_before: int | None = None  # rows final (unknown) up to this seq
        self.result: Geometry | None = None
        self.why = "no FAT or directory sector seen yet"
        self.checked: str | None = None  # the boot sector seen after all, against this
        self.accepted: Geometry | None = None  # the geometry a volume was built from
        self.boot_seen = False  # a boot sector governs now
        self.withdrawn: str | None = None
        self.used: Geometry | None = None  # a geometry used, then refused
        self._steps = 0  # chain steps of one solve, bounded
        self._dirty = False

    # ---- collecting ------------------------------------------------------------------

    def observe(self, seq: int, opcode: int, lba: int, blocks: int, data: bytes,
                status: str, write: bool) -> None:
        """Read the sectors of one good READ or WRITE for evidence; keep the command."""
        kept: dict[int, bytes] = {}
        self._now = seq
        count = min(blocks, len(data) // SECTOR)
        for i in range(count):
            piece = data[i * SECTOR : (i + 1) * SECTOR]
            if piece == ZERO_SECTOR:  # nothing to learn; one memcmp, not 512 steps of any()
                continue
            sector = bytes(piece)
            at = lba + i
            if self._classify(at, sector):
                kept[i] = sector
        if write and count:
            if at_most(self.writes, MAX_WRITES, lba):
                self.writes[lba] = blocks
                self._dirty = True
            else:
                self.dropped = True
        self._keep(Buffered(seq, opcode, lba, blocks, len(data), status, kept))

    def _classify(self, at: int, sector: bytes) -> bool:
        """File one sector as evidence; True when replay needs its content."""
        if self.fat_sectors.get(at) == sector or self.dir_raw.get(at) == sector:
            self.seen_at[at] = self._now  # read again, unchanged: nothing new
            return True
        kinds = fat_first_kinds(sector)
        if kinds:
            if at_most(self.fat_first, MAX_SECTORS, at):
                self.fat_first[at] = kinds
            return self._fat(at, sector)
        if fsinfo(sector):
            if len(self.fsinfo) < MAX_SECTORS:
                self.fsinfo.add(at)
                self._dirty = True
            return True
        found = dir_sector(sector)
        if found is not None:
            if at_most(self.dirs, MAX_SECTORS, at):
                self.dirs[at], self.dir_raw[at], self.seen_at[at] = found, sector, self._now
                self.fat_sectors.pop(at, None)
                self.readings.pop(at, None)
                self._dirty = True
            else:
                self.dropped = True
            return True
        self.fat_first.pop(at, None)  # overwritten by something else
        if fat_index(sector, "fat16") is not None or fat_index(sector, "fat32") is not None:
            return self._fat(at, sector)
        self.readings.pop(at, None)
        if self.dirs.pop(at, None) is not None or self.fat_sectors.pop(at, None) is not None:
            self.dir_raw.pop(at, None)
            self.seen_at.pop(at, None)
            self._dirty = True  # what was there is gone
        return False

    def _fat(self, at: int, sector: bytes) -> bool:
        if at_most(self.fat_sectors, MAX_SECTORS, at):
            self.fat_sectors[at], self.seen_at[at] = sector, self._now
            self.readings[at] = readings(sector, self.fat_first.get(at, set()))
            self._dirty = True
        else:
            self.dropped = True
        self.dirs.pop(at, None)
        self.dir_raw.pop(at, None)
        return True

    def seed(self, before: int) -> list[tuple[int, int, bytes]]:
        """(seq, LBA, content) of the FAT and directory sectors last seen before seq
        ``before``: what a volume built now knows of the commands no longer buffered."""
        out = [(seq, at, self.fat_sectors.get(at) or self.dir_raw[at])
               for at, seq in self.seen_at.items() if seq < before and
               (at in self.fat_sectors or at in self.dir_raw)]
        return sorted(out)

    def _keep(self, command: Buffered) -> None:
        if self.replay_full_at is not None:
            return
        if self.replay_sectors + len(command.sectors) > MAX_REPLAY_SECTORS:
            self.replay_full_at = command.seq
            return
        self.replay_sectors += len(command.sectors)
        self.buffer.append(command)

    def rebase(self) -> None:
        """An earlier session's commands were fed: keep the evidence, as seen before
        anything of the session that follows; its commands cannot be attributed again."""
        self.take()
        self.replay_full_at = None
        self.seen_at = dict.fromkeys(self.seen_at, 0)
        self._now, self._solved_at = 0, -SOLVE_EVERY
        self.released_before = None

    def forget(self, upto: int) -> None:
        """Rows of commands up to ``upto`` are final: they can no longer be redone."""
        buffer = self.buffer
        while buffer and buffer[0].seq <= upto:
            gone = buffer.popleft()
            self.replay_sectors -= len(gone.sectors)
            if self.accepted is None:
                self.released_before = max(self.released_before or 0, gone.seq)

    def take(self) -> list[Buffered]:
        """The buffered commands, in order; the buffer starts again empty."""
        out = list(self.buffer)
        self.buffer.clear()
        self.replay_sectors = 0
        return out

    # ---- solving ---------------------------------------------------------------------

    def solve(self, force: bool = True) -> Geometry | None:
        """The geometry if the evidence decides it and all of it agrees; else None, with
        ``why``.  Solved again only when the evidence changed, and unless ``force``d at
        most once every ``SOLVE_EVERY`` commands (a watch that costs little)."""
        if not self._dirty or (not force and self._now - self._solved_at < SOLVE_EVERY):
            return self.result
        self._solved_at = self._now
        self._dirty = False
        self._steps = 0
        try:
            self.result = self._solve()
        except RefusedError as refusal:
            self.result, self.why = None, str(refusal)
        return self.result

    def _solve(self) -> Geometry:
        why: list[str] = []
        kind = self._kind(why)
        bases, read_from = self._bases(kind)
        if not bases:
            raise RefusedError(f"{kind.upper()}: no FAT sector says where its FAT starts")
        fat_start = bases[0]
        why.append(f"FAT starts at LBA {fat_start} ({read_from[fat_start]})")
        if len(bases) > 1:
            gaps = {b - a for a, b in zip(bases, bases[1:])}
            fat_size = min(gaps)
            if any(g % fat_size for g in gaps):
                raise RefusedError(f"FAT copies at LBAs {bases}: not evenly spaced")
            num_fats = (bases[-1] - fat_start) // fat_size + 1
            why.append(f"{num_fats} FAT copies {fat_size} sectors apart (copies at "
                       f"{', '.join(str(b) for b in bases)}: " +
                       ", ".join(read_from[b] for b in bases[1:]) + ")")
        else:
            raise RefusedError(f"{kind.upper()}: one FAT copy seen, at LBA {fat_start}; the FAT's "
                          "size (the second copy) was not seen")
        if fat_size < MIN_FAT_SECTORS[kind]:
            raise RefusedError(f"FAT copies {fat_size} sectors apart are too small for "
                          f"{kind.upper()} (at least {MIN_FAT_SECTORS[kind]})")
        fats_end = fat_start + num_fats * fat_size
        for at in self.fsinfo:
            if at >= fat_start:
                raise RefusedError(f"an FSInfo sector at LBA {at}, after the FAT's start")
        fat = self._fat_of(kind, fat_start, fat_size, num_fats)
        spcs, spc_why = self._cluster_sizes(kind, fat)
        dots = {at: d.dot for at, d in self.dirs.items() if d.dot is not None and d.dot >= 2}
        spc, data_start = self._data(kind, dots, spcs, spc_why, fats_end, why)
        root_start = root_sectors = 0
        if kind != "fat32":
            root_start, root_sectors = fats_end, data_start - fats_end
            if root_sectors * 16 > 0xFFFF:
                raise RefusedError(f"{kind.upper()}: {root_sectors} sectors between the FATs' end "
                                   f"(LBA {fats_end}) and cluster 2 (LBA {data_start}) are more "
                                   "than a root directory can have")
            if root_sectors < 1:
                raise RefusedError(f"{kind.upper()}: no room for the root directory between the "
                              f"FATs' end (LBA {fats_end}) and cluster 2 (LBA {data_start})")
            why.append(f"root directory LBAs {root_start}..{data_start - 1} "
                       f"({root_sectors * 16} entries): between the FATs and cluster 2")
        elif data_start != fats_end:
            raise RefusedError(f"FAT32: cluster 2 at LBA {data_start} does not follow the FATs, "
                          f"which end at LBA {fats_end}")
        root_cluster = self._root_cluster(fat, spc, data_start, why) if kind == "fat32" else 0
        cluster_count = min(MAX_CLUSTERS[kind],
                            fat_size * SECTOR * 8 // ENTRY_BITS[kind] - 2)
        self._check(kind, dots, spc, data_start, root_start, fats_end, cluster_count, fat)
        why.append(f"cluster count not known: up to the {cluster_count} the FAT can number")
        return Geometry(kind, fat_start, fat_size, num_fats, root_start, root_sectors,
                        data_start, spc, cluster_count, root_cluster, tuple(why))

    def _root_cluster(self, fat: dict[int, bytes], spc: int, data_start: int,
                      why: list[str]) -> int:
        """FAT32's root directory cluster: the head of the chain holding the volume label,
        or the entry of a subdirectory whose ".." is 0 (the root)."""
        roots = {c for d in self.dirs.values() if d.dotdot == 0 and d.dot for c in [d.dot]}
        found: dict[int, str] = {}
        for at, d in sorted(self.dirs.items()):
            if at < data_start:
                continue
            holds = [e[0] for e in d.entries if e[1] and ((e[3] << 16) | e[2]) in roots]
            if d.label or holds:
                cluster = (at - data_start) // spc + 2
                found.setdefault(cluster, f"LBA {at} holds " + (
                    "the volume label" if d.label else f"{holds[0]}, whose \"..\" is 0"))
        if not found:
            raise RefusedError("FAT32: the root directory's cluster is not known (no volume "
                          'label and no entry of a directory whose ".." is 0 seen)')
        before: dict[int, int] = {}
        for index, sector in fat.items():
            for i, value in enumerate(fat_values(sector, "fat32")):
                if 2 <= value < EOC["fat32"] - 1:
                    before.setdefault(value, index * 128 + i)
        heads: dict[int, str] = {}
        for cluster, evidence in found.items():
            head, steps = cluster, 0
            while head in before and steps < len(before):
                head, steps = before[head], steps + 1
            heads.setdefault(head, evidence)
        if len(heads) != 1:
            raise RefusedError(f"FAT32: the root directory's chain has more than one head in the "
                          f"FAT seen (clusters {sorted(heads)})")
        root, evidence = next(iter(heads.items()))
        first = self.dirs.get(data_start + (root - 2) * spc)
        if first is not None and first.dot is not None:
            raise RefusedError(f'FAT32: cluster {root}, the root directory by the FAT, holds "."')
        why.append(f"root directory at cluster {root} ({evidence}; the head of its chain in "
                   "the FAT seen)")
        return root

    def _kind(self, why: list[str]) -> str:
        """FAT32 from FSInfo or 32-bit first clusters; else from the FATs' first sectors
        and which decoding of the FAT sectors holds chains."""
        kinds = {"fat12", "fat16", "fat32"}
        reasons = []
        for allowed in self.fat_first.values():
            if allowed:
                kinds &= allowed
        if self.fat_first:
            reasons.append("the FAT's first sector")
        if self.fsinfo:
            kinds &= {"fat32"}
            reasons.append(f"FSInfo at LBA {min(self.fsinfo)}")
        high = [(at, e[0]) for at, d in self.dirs.items() for e in d.entries if e[3]]
        high += [(at, "..") for at, d in self.dirs.items() if (d.dot or 0) > 0xFFFF]
        if high:
            kinds &= {"fat32"}
            reasons.append(f"a first cluster above 16 bits ({high[0][1]} at LBA {high[0][0]})")
        if len(kinds) > 1:
            # read as the wrong type, a FAT holds no chain links and no file's chain
            scores = {k: (self._links(k), self._chains(k)) for k in kinds}
            most = max(scores, key=lambda k: scores[k][0])
            others = max(v[0] for k, v in scores.items() if k != most)
            fitting = [k for k, (links, chains) in scores.items() if links or chains]
            if scores[most][0] >= MIN_LINKS and scores[most][0] >= 4 * others:
                fitting = [most]
            if len(fitting) == 1:
                kinds = set(fitting)
                links, chains = scores[fitting[0]]
                rest = ", ".join(f"{k.upper()} {v[0]} and {v[1]}" for k, v in scores.items()
                                 if k != fitting[0])
                reasons.append(f"read as {fitting[0].upper()}, the FAT holds {links} chain "
                               f"links and {chains} files' whole chains; as {rest}")
        if not kinds:
            raise RefusedError("the FAT type: the evidence fits no type (" +
                          "; ".join(reasons) + ")")
        if len(kinds) > 1:
            raise RefusedError("the FAT type: " + " or ".join(sorted(k.upper() for k in kinds)) +
                          " (" + ("; ".join(reasons) or "no FAT sector seen") + ")")
        kind = next(iter(kinds))
        why.append(f"{kind.upper()} ({'; '.join(reasons)})")
        return kind

    def _links(self, kind: str) -> int:
        """Chain links (entry i holding i + 1) in the FAT sectors read as ``kind``."""
        return sum(reading[kind][1] for reading in self.readings.values() if kind in reading)

    def _chains(self, kind: str) -> int:
        """Files whose chain, read as ``kind``, runs whole from their first cluster to an
        end mark."""
        bases, _ = self._bases(kind)
        if not bases:
            return 0
        size = min((b - a for a, b in zip(bases, bases[1:])), default=1 << 24)
        fat = self._fat_of(kind, bases[0], size, 1)
        count = 0
        for d in self.dirs.values():
            for _, is_dir, lo, hi, size_ in d.entries:
                cluster = (hi << 16) | lo if kind == "fat32" else lo
                if not is_dir and size_ and cluster >= 2 and \
                        self._chain_length(kind, fat, cluster) is not None:
                    count += 1
        return count

    def _bases(self, kind: str) -> tuple[list[int], dict[int, str]]:
        """Where FAT copies start: a first sector's LBA, or a chained sector's LBA less
        its index; with the first evidence for each."""
        found: dict[int, str] = {}
        for at in sorted(self.fat_first):
            if kind in self.fat_first[at]:
                found.setdefault(at, f"a FAT's first sector at LBA {at}")
        if kind != "fat12":
            for at in sorted(self.fat_sectors):
                if self.fat_first.get(at) or kind not in self.readings.get(at, {}):
                    continue
                index = self.readings[at][kind][0]
                if index is not None:
                    found.setdefault(at - index, f"LBA {at} holds the chains of FAT sector "
                                                 f"{index}")
        return sorted(found), found

    def _fat_of(self, kind: str, start: int, size: int, copies: int) -> dict[int, bytes]:
        """The FAT sectors seen, by index in the FAT (the first copy wins)."""
        fat: dict[int, bytes] = {}
        for at in sorted(self.fat_sectors, key=lambda a: (a - start) // size):
            if start <= at < start + copies * size:
                fat.setdefault((at - start) % size, self.fat_sectors[at])
        return fat

    def _entry(self, kind: str, fat: dict[int, bytes], cluster: int) -> int | None:
        if kind == "fat12":
            offset = cluster + cluster // 2
            index, at = divmod(offset, SECTOR)
            raw = fat.get(index)
            if raw is None:
                return None
            if at + 2 > SECTOR:
                nxt = fat.get(index + 1)
                if nxt is None:
                    return None
                pair = raw[at:] + nxt[:1]
            else:
                pair = raw[at : at + 2]
            value = int.from_bytes(pair, "little")
            return value >> 4 if cluster & 1 else value & 0x0FFF
        width = ENTRY_BITS[kind] // 8
        index, at = divmod(cluster * width, SECTOR)
        raw = fat.get(index)
        if raw is None:
            return None
        value = int.from_bytes(raw[at : at + width], "little")
        return value & 0x0FFFFFFF if kind == "fat32" else value

    def _chain_length(self, kind: str, fat: dict[int, bytes], first: int) -> int | None:
        """Clusters in the chain from ``first`` to its EOC, if every entry was seen."""
        seen: set[int] = set()
        cluster = first
        while len(seen) < 1 << 16 and self._steps < MAX_STEPS:
            self._steps += 1
            if cluster in seen:
                return None
            seen.add(cluster)
            value = self._entry(kind, fat, cluster)
            if value is None or value in (0, 1) or value == EOC[kind] - 1:
                return None
            if value >= EOC[kind]:
                return len(seen)
            cluster = value
        return None

    def _cluster_sizes(self, kind: str, fat: dict[int, bytes]) -> tuple[set[int], str]:
        """Sectors per cluster that every file's size and chain length allow."""
        spcs = {1 << s for s in range(8)}
        files = []
        for at, d in sorted(self.dirs.items()):
            for name, is_dir, lo, hi, size in d.entries:
                cluster = (hi << 16) | lo if kind == "fat32" else lo
                if is_dir or size == 0 or cluster < 2:
                    continue
                length = self._chain_length(kind, fat, cluster)
                if length is None:
                    continue
                allowed = {s for s in spcs if -(-size // (s * SECTOR)) == length}
                if not allowed:
                    raise RefusedError(f"{name} (LBA {at}): {size} bytes in a chain of {length} "
                                  f"clusters fit no cluster size the others allow "
                                  f"({sorted(s * SECTOR for s in spcs)} bytes)")
                if allowed != spcs:
                    files.append(f"{name}: {size} bytes in {length} clusters")
                spcs = allowed
        return spcs, "; ".join(files[:4]) + (f" and {len(files) - 4} more"
                                             if len(files) > 4 else "")

    def _data(self, kind: str, dots: dict[int, int], spcs: set[int], spc_why: str,
              fats_end: int, why: list[str]) -> tuple[int, int]:
        """(spc, data_start) from "." entries, the cluster sizes chains allow, FAT32's
        heap after the FATs, and last, writes matched to one entry by their size."""
        pairs = sorted({(c, at) for at, c in dots.items()})
        spc = data_start = None
        if len(spcs) == 1:
            spc = next(iter(spcs))
            why.append(f"{spc * SECTOR}-byte clusters (sizes against chains: {spc_why})")
        if len({c for c, _ in pairs}) >= 2:
            (c1, l1), (c2, l2) = pairs[0], next(p for p in pairs if p[0] != pairs[0][0])
            step, rest = divmod(l2 - l1, c2 - c1)
            if rest or step not in spcs:
                raise RefusedError(f'"." entries of clusters {c1} at LBA {l1} and {c2} at LBA '
                              f"{l2}: {l2 - l1} sectors for {c2 - c1} clusters is no "
                              "cluster size allowed")
            if spc is None:
                why.append(f'{step * SECTOR}-byte clusters ("." of cluster {c1} at LBA '
                           f"{l1}, of cluster {c2} at LBA {l2})")
            spc = step
        if kind == "fat32":
            data_start = fats_end
            why.append(f"cluster 2 at LBA {data_start}: FAT32's clusters follow its FATs")
            if spc is None and pairs:
                c, at = pairs[0]
                step, rest = divmod(at - data_start, c - 2) if c > 2 else (0, 1)
                if not rest and step in spcs:
                    spc = step
                    why.append(f'{spc * SECTOR}-byte clusters ("." of cluster {c} at LBA '
                               f"{at})")
        elif spc is not None and pairs:
            c, at = pairs[0]
            data_start = at - (c - 2) * spc
            why.append(f'cluster 2 at LBA {data_start} ("." of cluster {c} at LBA {at})')
        if spc is None or data_start is None:
            spc, data_start = self._from_writes(kind, spc, data_start, spcs, pairs, why)
        return spc, data_start

    def _from_writes(self, kind: str, spc: int | None, data_start: int | None,
                     spcs: set[int], pairs: list[tuple[int, int]], why: list[str]
                     ) -> tuple[int, int]:
        """The numbers still open.  Each "." entry (cluster C at LBA L) is an exact
        equation; a write of exactly one entry's size in blocks, to one LBA, is taken as
        that file's first cluster where it fits those equations (a match by size that does
        not fit is no evidence: it is left out, and said).  The matches used must agree."""
        def solutions(cluster: int, lba: int) -> set[tuple[int, int]]:
            return {(s, lba - (cluster - 2) * s) for s in ([spc] if spc else sorted(spcs))
                    if data_start is None or lba - (cluster - 2) * s == data_start}

        exact: set[tuple[int, int]] | None = None
        for cluster, lba in pairs:
            found = solutions(cluster, lba)
            exact = found if exact is None else exact & found
        matches = []
        for _, d in sorted(self.dirs.items()):
            for name, is_dir, lo, hi, size in d.entries:
                cluster = (hi << 16) | lo if kind == "fat32" else lo
                if is_dir or size == 0 or cluster < 2:
                    continue
                blocks = -(-size // SECTOR)
                where = [lba for lba, n in self.writes.items() if n == blocks]
                if len(where) == 1:
                    matches.append((name, cluster, where[0]))
        answers = exact
        used, unused = [], 0
        for name, cluster, lba in matches:
            found = solutions(cluster, lba)
            if exact is not None and not found & exact:
                unused += 1
                continue
            used.append(f"{name} (cluster {cluster}) at LBA {lba}")
            answers = found if answers is None else answers & found
            if not answers:
                raise RefusedError(f"{kind.upper()}: writes matched to entries by their size "
                                   f"disagree ({'; '.join(used[-2:])})")
        if answers is not None and len(answers) == 1:
            spc, data_start = next(iter(answers))
            said = []
            if pairs:
                said.append('"." entries ' + ", ".join(f"of cluster {c} at LBA {lba}"
                                                       for c, lba in pairs[:4]))
            if used:
                said.append("writes of exactly one entry's size in blocks: " +
                            ", ".join(used[:4]))
            if unused:
                said.append(f"{unused} writes matched by size did not fit and were not used")
            why.append(f"cluster 2 at LBA {data_start} with {spc * SECTOR}-byte clusters "
                       f"({'; '.join(said)})")
            return spc, data_start
        open_ = [n for n, v in (("the cluster size", spc), ("where cluster 2 is", data_start))
                 if v is None]
        raise RefusedError(f"{kind.upper()}: {' and '.join(open_)} not decided (no two "
                           'subdirectories\' "." entries, no write matched to an entry alone '
                           "that settles it)")

    def _check(self, kind: str, dots: dict[int, int], spc: int, data_start: int,
               root_start: int, fats_end: int, cluster_count: int,
               fat: dict[int, bytes]) -> None:
        """Every piece of evidence must agree with the geometry solved."""
        for at, c in sorted(dots.items()):
            if data_start + (c - 2) * spc != at:
                raise RefusedError(f'the "." entry of cluster {c} is at LBA {at}, but cluster {c} '
                              f"would be at LBA {data_start + (c - 2) * spc}")
            if c >= cluster_count + 2:
                raise RefusedError(f'a "." entry names cluster {c}, beyond the FAT')
        for at, d in sorted(self.dirs.items()):
            if d.label and kind != "fat32" and not root_start <= at < data_start:
                raise RefusedError(f"a volume label at LBA {at}, outside the root directory "
                              f"(LBAs {root_start}..{data_start - 1})")
            if at < fats_end and d.dot is not None:
                raise RefusedError(f"a subdirectory's first sector at LBA {at}, inside the FATs")
        for at in self.fat_sectors:
            if at >= fats_end and self.fat_first.get(at):
                raise RefusedError(f"a FAT's first sector at LBA {at}, past the FATs")
        for at, d in sorted(self.dirs.items()):
            for name, _is_dir, lo, hi, _size in d.entries:
                cluster = (hi << 16) | lo if kind == "fat32" else lo
                if hi and kind != "fat32":
                    raise RefusedError(f"{name} at LBA {at} has a 32-bit first cluster on "
                                  f"{kind.upper()}")
                if cluster >= cluster_count + 2:
                    raise RefusedError(f"{name} at LBA {at}: first cluster {cluster} beyond "
                                  "the FAT")

    def contradicted(self, seq: int, force: bool = False) -> bool:
        """Whether evidence since the geometry was accepted refuses it (or gives another):
        then the volume is withdrawn, and the notes say by which command."""
        g = self.solve(force)
        accepted = self.accepted
        if accepted is None or (g is not None and _numbers(g) == _numbers(accepted)):
            return False
        self.used = accepted
        self.withdrawn = (f"evidence seen by seq {seq} refuses the geometry inferred before "
                          "it: "
                          + (self.why if g is None else "it now gives another geometry")
                          + "; blocks in the window are unknown again, those final before "
                          "rest on the geometry refused")
        self.accepted = None
        self.result = None
        return True

    def _evidence(self) -> bool:
        return bool(self.fat_first or self.fat_sectors or self.dirs or self.fsinfo)

    def compare(self, start: int, kind: str, fat_start: int, fat_size: int, num_fats: int,
                data_start: int, spc: int, bps: int, written: bool) -> bool:
        """A boot sector was seen after all: whether the inferred geometry was its (said in
        the notes).  A boot sector written with no geometry inferred is a format: the
        evidence before it was of another layout, and nothing is said."""
        real = (kind, start + fat_start, fat_size, num_fats, start + data_start, spc)
        self.boot_seen = True
        g = self.solve()
        if g is None:
            return False  # nothing was inferred: the boot sector simply governs
        self.checked = f"a boot sector for LBA {start} was seen later"
        ours = (g.kind, g.fat_start, g.fat_size, g.num_fats, g.data_start, g.spc)
        names = ("type", "FAT start", "FAT size", "FAT copies", "cluster 2", "sectors per "
                 "cluster")
        wrong = [f"{n} {o} (boot sector: {r})" for n, o, r in zip(names, ours, real) if o != r]
        self.checked += (": it agrees with the geometry inferred" if not wrong else
                         ": it DISAGREES with the geometry inferred: " + ", ".join(wrong))
        if bps != SECTOR:
            self.checked += f" ({bps}-byte sectors)"
        return not wrong

    def notes(self) -> list[str]:
        """The geometry and the evidence for each number, or why there is none."""
        self.solve()
        if self.withdrawn is not None and self.used is not None:
            return [_describe(self.used), self.withdrawn]
        if self.checked is not None and self.result is not None:
            return [self.checked + "; evidence: " + "; ".join(self.result.evidence)]
        if self.result is None:
            if not self._evidence() or self.boot_seen:
                return []
            return ["no boot sector seen, and what looks like FAT metadata does not decide a "
                    f"FAT geometry: {self.why}; blocks are unknown"]
        out = [_describe(self.result)]
        if self.released_before is not None:
            out.append(f"blocks of commands up to seq {self.released_before} were final "
                       "before the geometry was inferred: they stay unknown")
        if self.replay_full_at is not None:
            out.append(f"metadata kept to attribute again reached {MAX_REPLAY_SECTORS} "
                       f"sectors at seq {self.replay_full_at}; later blocks until the "
                       "geometry was inferred stay unknown")
        if self.dropped:
            out.append("evidence for the geometry past its bounds was not kept")
        return out


def _describe(g: Geometry) -> str:
    return (f"no boot sector seen: {g.kind.upper()} geometry inferred from the capture "
            f"(FAT at LBA {g.fat_start}, {g.num_fats} x {g.fat_size} sectors; "
            + (f"root directory at LBA {g.root_start}, {g.root_sectors} sectors; "
               if g.root_sectors else "")
            + f"cluster 2 at LBA {g.data_start}; {g.spc * SECTOR}-byte clusters); "
            "where the volume and its boot sector start is not known; evidence: "
            + "; ".join(g.evidence))


def _numbers(g: Geometry) -> tuple[int | str, ...]:
    return (g.kind, g.fat_start, g.fat_size, g.num_fats, g.root_start, g.root_sectors,
            g.data_start, g.spc, g.cluster_count, g.root_cluster)


def at_most(table: Mapping[int, object], limit: int, key: int) -> bool:
    """Whether ``key`` fits a table bounded at ``limit`` entries."""
    return key in table or len(table) < limit
