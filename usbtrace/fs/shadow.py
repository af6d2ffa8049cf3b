"""File-level attribution: which file every block belongs to, from the wire alone.

The shadow volume is built only from sectors seen in READ and WRITE commands,
in order: the partition table, the boot sector, FAT sectors, and directory
sectors.  From them it keeps, per volume, the FAT (the sectors seen of it),
every directory's entries, and so the owner of each cluster.  Each data
access becomes rows of ``file_activity``: (path, file offset, length) for file
data, or a label for metadata (boot sector, FAT, directory of PATH).  Writes to
directories become file events: created, deleted, extended, truncated,
renamed (same directory) and moved (another directory).

Two things happen on the wire in an order that does not suit a naive reader:
operating systems write file data before the directory entry that names its
clusters, and write the new entry of a rename apart from the removal of the old
one.  So rows wait in a short window (``WINDOW`` commands) before they are
final: a cluster with no known owner is resolved when the window closes, a
write is clipped at the file's size then, and a deletion and a creation of the
same first cluster inside the window become one rename or move.

What was never seen is never guessed: with no boot sector, every access is
``unknown``; NTFS and ext2/3/4 are named and reported ``unsupported``.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from usbtrace.fs.layouts import FAT_PARTITION_TYPES, lfn_checksum
from usbtrace.fs.partitions import GPT_PARTITION, DiskLayout

WINDOW = 4096  # commands a row waits for the metadata that explains it
SECTOR = 512
READS = {0x08, 0x28, 0xA8, 0x88}
WRITES = {0x0A, 0x2A, 0xAA, 0x8A}

EOC = {"fat12": 0xFF8, "fat16": 0xFFF8, "fat32": 0x0FFFFFF8, "exfat": 0xFFFFFFF7}


@dataclass(slots=True)
class Activity:
    scsi_seq: int
    path: str | None
    operation: str  # read, write; created, deleted, renamed, moved, extended, truncated
    kind: str  # data, slack, directory, fat, boot_sector, fsinfo, ..., unknown, unsupported
    file_offset: int | None
    length: int | None
    lba: int | None
    command_offset: int | None = None
    detail: str | None = None


@dataclass(eq=False)
class Node:
    """A file or directory, as its directory entry describes it."""

    name: str
    parent: Node | None
    is_dir: bool
    first_cluster: int
    size: int
    contiguous: bool = False  # exFAT NoFatChain
    deleted: bool = False
    successor: Node | None = None  # the entry it was renamed or moved to

    def latest(self) -> Node:
        node = self
        while node.successor is not None:
            node = node.successor
        return node

    @property
    def path(self) -> str:
        if self.parent is None:
            return "/"
        base = self.parent.path
        return (base if base.endswith("/") else base + "/") + self.name


@dataclass
class Entry:
    slot: int
    name: str
    is_dir: bool
    first_cluster: int
    size: int
    contiguous: bool = False


@dataclass
class Directory:
    node: Node
    sectors: dict[int, bytes] = field(default_factory=dict)  # index in the directory
    entries: dict[int, Entry] = field(default_factory=dict)  # by slot
    children: dict[int, Node] = field(default_factory=dict)  # by slot
    parsed: bool = False


class Volume:
    """One FAT12/16/32 or exFAT file system at ``start`` (an absolute LBA)."""

    def __init__(self, start: int, kind: str, bps: int, spc: int, reserved: int,
                 fat_start: int, fat_size: int, num_fats: int, root_start: int,
                 root_sectors: int, data_start: int, cluster_count: int, root_cluster: int,
                 fsinfo: int | None = None, backup_boot: int | None = None) -> None:
        self.start = start
        self.kind = kind
        self.bps = bps
        self.spc = spc
        self.cluster_bytes = bps * spc
        self.reserved = reserved
        self.fat_start = fat_start
        self.fat_size = fat_size
        self.num_fats = num_fats
        self.root_start = root_start
        self.root_sectors = root_sectors
        self.data_start = data_start
        self.cluster_count = cluster_count
        self.root_cluster = root_cluster
        self.fsinfo = fsinfo
        self.backup_boot = backup_boot
        self.end = start + data_start + cluster_count * spc
        self.fat = bytearray(fat_size * bps)
        self.fat_known: set[int] = set()  # FAT sectors seen
        self.root = Node("", None, True, root_cluster, 0)
        self.dirs: dict[Node, Directory] = {self.root: Directory(self.root)}
        self.metadata: dict[int, str] = {}  # first cluster -> label (exFAT bitmap, up-case)
        self._owners: dict[int, tuple[Node, int]] = {}
        self._dirty = True

    # ---- the FAT ---------------------------------------------------------------------

    def fat_entry(self, cluster: int) -> int | None:
        kind = self.kind
        if kind == "fat12":
            offset = cluster + cluster // 2
        elif kind == "fat16":
            offset = cluster * 2
        else:
            offset = cluster * 4
        if offset // self.bps not in self.fat_known or (offset + 1) // self.bps not in \
                self.fat_known:
            return None
        fat = self.fat
        if kind == "fat12":
            value = fat[offset] | (fat[offset + 1] << 8)
            return value >> 4 if cluster & 1 else value & 0x0FFF
        if kind == "fat16":
            return fat[offset] | (fat[offset + 1] << 8)
        value = struct.unpack_from("<I", fat, offset)[0]
        return value & 0x0FFFFFFF if kind == "fat32" else value

    def chain(self, node: Node) -> list[int]:
        """The clusters of ``node`` as far as the FAT seen so far tells."""
        first = node.first_cluster
        if first < 2:
            return []
        if node.contiguous:
            count = max(1, -(-node.size // self.cluster_bytes))
            return list(range(first, first + count))
        out = [first]
        eoc = EOC[self.kind]
        limit = self.cluster_count + 2
        seen = {first}
        cluster = first
        while True:
            nxt = self.fat_entry(cluster)
            if nxt is None or nxt < 2 or nxt >= eoc or nxt >= limit or nxt in seen:
                return out
            out.append(nxt)
            seen.add(nxt)
            cluster = nxt

    def owners(self) -> dict[int, tuple[Node, int]]:
        if self._dirty:
            owners: dict[int, tuple[Node, int]] = {}
            for directory in list(self.dirs.values()):
                nodes = [directory.node] if directory.node is self.root else []
                nodes += [n for n in directory.children.values() if not n.is_dir]
                for node in nodes:
                    for index, cluster in enumerate(self.chain(node)):
                        owners[cluster] = (node, index)
                for node in directory.children.values():
                    if node.is_dir:
                        for index, cluster in enumerate(self.chain(node)):
                            owners[cluster] = (node, index)
            self._owners = owners
            self._dirty = False
        return self._owners


def _fat_volume(start: int, sector: bytes) -> Volume | str | None:
    """A FAT volume from its boot sector; 'ntfs'/'exfat' names; None if not a volume."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        if sector[3:11] == b"NTFS    ":
            return "ntfs"
        return None
    if sector[3:11] == b"NTFS    ":
        return "ntfs"
    if sector[3:11] == b"EXFAT   ":
        return _exfat_volume(start, sector)
    if sector[0] not in (0xEB, 0xE9):
        return None
    (bps, spc, reserved, nfats, root_entries, tot16, _media, fatsz16, _spt, _heads, _hidden,
     tot32) = struct.unpack_from("<HBHBHHBHHHII", sector, 11)
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or nfats == 0 \
            or reserved == 0:
        return None
    fatsz32, _flags, _ver, root_cluster, fsinfo, backup = struct.unpack_from("<IHHIHH",
                                                                             sector, 36)
    fat_size = fatsz16 or fatsz32
    total = tot16 or tot32
    root_sectors = (root_entries * 32 + bps - 1) // bps
    data_start = reserved + nfats * fat_size + root_sectors
    if fat_size == 0 or total <= data_start:
        return None
    clusters = (total - data_start) // spc
    kind = "fat12" if clusters < 4085 else "fat16" if clusters < 65525 else "fat32"
    scale = bps // SECTOR  # the model counts 512-byte LBAs
    if kind == "fat32":
        return Volume(start, kind, bps, spc, reserved * scale, reserved * scale,
                      fat_size * scale, nfats, 0, 0, data_start * scale, clusters, root_cluster,
                      fsinfo * scale if fsinfo else None, backup * scale if backup else None)
    return Volume(start, kind, bps, spc, reserved * scale, reserved * scale, fat_size * scale,
                  nfats, (reserved + nfats * fat_size) * scale, root_sectors * scale,
                  data_start * scale, clusters, 0)


def _exfat_volume(start: int, sector: bytes) -> Volume | None:
    (fat_offset, fat_length, heap_offset, count, root) = struct.unpack_from("<IIIII", sector, 80)
    bps_shift, spc_shift, nfats = sector[108], sector[109], sector[110]
    if not 9 <= bps_shift <= 12 or spc_shift > 25 - bps_shift:
        return None
    bps = 1 << bps_shift
    scale = bps // SECTOR
    volume = Volume(start, "exfat", bps, 1 << spc_shift, 24 * scale, fat_offset * scale,
                    fat_length * scale, max(nfats, 1), 0, 0, heap_offset * scale, count, root)
    return volume


class Attributor:
    """Fed SCSI commands in order; returns ``file_activity`` rows as they become final."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.volumes: list[Volume] = []
        self.unsupported: list[tuple[int, int | None, str]] = []  # (start, end, name)
        self.expected: dict[int, int] = {}  # partition start LBA -> partition type
        self.partition_table_seen = False
        self.layout = DiskLayout()  # partitions (MBR and GPT), GPT sectors, other file systems
        # rows wait here; the third item says what to look up when the row is final:
        # the Node whose size clips a data row, or (volume, cluster) for an unowned one
        self._queue: deque[list[Any]] = deque()  # [seq, row, pending]
        # rows of clusters nobody owns yet, by (volume, cluster): resolved in place
        self._unowned: dict[tuple[int, int], list[list[Any]]] = {}
        self._seq = 0
        self._changed: set[Volume] = set()

    # ---- entry points ------------------------------------------------------------------

    def feed(self, seq: int, opcode: int, lba: int | None, blocks: int | None,
             data: bytes, status: str) -> list[Activity]:
        self._seq = seq
        if lba is None or not blocks or (opcode not in READS and opcode not in WRITES):
            return self._release()
        if status != "good":
            return self._release()
        write = opcode in WRITES
        self._changed = set()
        self._access(seq, lba, blocks, data, write)
        for volume in self._changed:
            self._resolve_pending(volume)
        return self._release()

    def warm(self, commands: Iterable[tuple[int, int, int | None, int | None, bytes, str]]
             ) -> None:
        """Learn the volume from an earlier session of the same medium; keep no rows."""
        for command in commands:
            self.feed(*command)
        self.flush()
        self._seq = 0

    def flush(self) -> list[Activity]:
        out: list[Activity] = []
        while self._queue:
            self._append(out, self._final(*self._queue.popleft()))
        self._unowned.clear()
        return out

    def _release(self) -> list[Activity]:
        out: list[Activity] = []
        queue = self._queue
        limit = self._seq - self.window
        while queue and queue[0][0] <= limit:
            self._append(out, self._final(*queue.popleft()))
        return out

    @staticmethod
    def _append(out: list[Activity], row: Activity) -> None:
        """Merge a row into the previous one when it continues the same run."""
        if row.kind == "merged":
            return
        if out:
            last = out[-1]
            if (last.scsi_seq == row.scsi_seq and last.kind == row.kind and
                    last.path == row.path and last.operation == row.operation and
                    row.kind not in ("event",) and last.detail is None and
                    last.length is not None and row.length is not None and
                    last.lba is not None and row.lba is not None and
                    last.lba + last.length // SECTOR == row.lba and
                    (last.file_offset is None) == (row.file_offset is None) and
                    (last.file_offset is None or last.file_offset + last.length ==
                     row.file_offset)):
                last.length += row.length
                last.detail = row.detail
                return
        out.append(row)

    def _emit(self, row: Activity, pending: Node | tuple[Volume, int] | int | None = None
              ) -> None:
        if row.kind == "event":
            self._match_events(row, pending if isinstance(pending, Node) else None)
        entry = [row.scsi_seq, row, pending]
        self._queue.append(entry)
        if row.kind == "unallocated" and isinstance(pending, tuple):
            self._unowned.setdefault((id(pending[0]), pending[1]), []).append(entry)

    # ---- routing an access to volumes and regions ----------------------------------

    def _access(self, seq: int, lba: int, blocks: int, data: bytes, write: bool) -> None:
        op = "write" if write else "read"
        end = lba + blocks
        position = lba
        if lba == 0 and self._sector_zero(seq, data[:SECTOR], op):
            position = 1  # reported as the partition table
        elif lba == 0 and self._volume_at(0) is None and self._unsupported_at(0) is None:
            position = 0  # neither a volume nor a partition table: unknown below
        self._probe(lba, blocks, data)
        while position < end:
            volume = self._volume_at(position)
            if volume is not None:
                stop = min(end, volume.end)
                self._volume_access(volume, seq, position, stop, lba, data, op, write)
                position = stop
                continue
            unsupported = self._unsupported_at(position)
            nxt = min([v.start for v in self.volumes if v.start > position] + [end])
            if unsupported is not None:
                nxt = min(nxt, unsupported[1] or end)
                self._emit(Activity(seq, None, op, "unsupported", None,
                                    (nxt - position) * SECTOR, position,
                                    (position - lba) * SECTOR, unsupported[2]))
            else:
                kind = "unknown" if not self.partition_table_seen and not self.volumes \
                    else "outside_volumes"
                for first, stop, label, detail in self.layout.label(
                        position, nxt, kind, {v.start for v in self.volumes}):
                    self._emit(Activity(seq, None, op, label, None, (stop - first) * SECTOR,
                                        first, (first - lba) * SECTOR, detail))
            position = nxt

    def _volume_at(self, lba: int) -> Volume | None:
        for volume in self.volumes:
            if volume.start <= lba < volume.end:
                return volume
        return None

    def _unsupported_at(self, lba: int) -> tuple[int, int | None, str] | None:
        for start, end, name in self.unsupported:
            if lba >= start and (end is None or lba < end):
                return start, end, name
        return None

    def _sector_zero(self, seq: int, sector: bytes, op: str) -> bool:
        """Learn from sector 0; True when it was a partition table (and reported)."""
        if len(sector) < SECTOR:
            return False
        found = _fat_volume(0, sector)
        if isinstance(found, Volume):
            self._add_volume(found)
            return False
        if isinstance(found, str):
            self._add_unsupported(0, None, found)
            return False
        if sector[510:512] == b"\x55\xaa":
            self.partition_table_seen = True
            self._emit(Activity(seq, None, op, "partition_table", None, SECTOR, 0, 0))
            for i in range(4):
                entry = sector[446 + 16 * i : 462 + 16 * i]
                ptype = entry[4]
                first, count = struct.unpack_from("<II", entry, 8)
                if ptype and count:
                    self.expected[first] = ptype
                    if ptype not in FAT_PARTITION_TYPES and ptype != 0xEE:
                        name = {0x83: "linux (ext2/3/4 or other)", 0x82: "linux swap",
                                0xAF: "hfs+"}.get(ptype, f"partition type 0x{ptype:02x}")
                        self._add_unsupported(first, first + count, name)
            return True
        return False

    def _probe(self, lba: int, blocks: int, data: bytes) -> None:
        """Boot sectors of expected partitions and ext2/3/4 superblocks, where they pass;
        the partitions of a GPT and other file systems' signatures (``partitions.py``)."""
        table = lba == 0 and self.partition_table_seen and self._volume_at(0) is None and \
            self._unsupported_at(0) is None  # sector 0 was just taken for a partition table
        for start in self.layout.observe(lba, data, table):
            self.expected.setdefault(start, GPT_PARTITION)
        for start in list(self.expected):
            if lba <= start < lba + blocks and len(data) >= (start - lba + 1) * SECTOR:
                sector = data[(start - lba) * SECTOR : (start - lba + 1) * SECTOR]
                found = _fat_volume(start, sector)
                if isinstance(found, Volume):
                    self._add_volume(found)
                    del self.expected[start]
                elif isinstance(found, str):
                    self._add_unsupported(start, None, found)
                    del self.expected[start]
        for base in [0, *self.expected]:
            sb = base + 2  # the ext superblock sits 1024 bytes into the volume
            if lba <= sb < lba + blocks and len(data) >= (sb - lba) * SECTOR + 58:
                offset = (sb - lba) * SECTOR
                if data[offset + 56 : offset + 58] == b"\x53\xef" and \
                        self._volume_at(base) is None:
                    self._add_unsupported(base, None, "ext2/3/4")
        for start, stop, name in self.layout.detect(lba, data):  # named, with its extent
            if self._volume_at(start) is None:
                self.unsupported = [u for u in self.unsupported if u[0] != start]
                self._add_unsupported(start, stop, name)

    def _add_volume(self, volume: Volume) -> None:
        if any(v.start == volume.start for v in self.volumes):
            return
        self.volumes.append(volume)
        self.volumes.sort(key=lambda v: v.start)

    def _add_unsupported(self, start: int, end: int | None, name: str) -> None:
        if not any(s == start for s, _, _ in self.unsupported):
            self.unsupported.append((start, end, name))

    # ---- inside a volume -------------------------------------------------------------

    def _volume_access(self, volume: Volume, seq: int, begin: int, stop: int, lba: int,
                       data: bytes, op: str, write: bool) -> None:
        rel = begin - volume.start
        rel_end = stop - volume.start
        while rel < rel_end:
            cmd_offset = (volume.start + rel - lba) * SECTOR
            if rel < volume.reserved:
                nxt = min(rel_end, volume.reserved)
                self._reserved_region(volume, seq, rel, nxt, cmd_offset, op)
                rel = nxt
                continue
            fat_end = volume.fat_start + volume.num_fats * volume.fat_size
            if volume.fat_start <= rel < fat_end:
                nxt = min(rel_end, fat_end)
                self._fat_region(volume, rel, nxt, data, cmd_offset)
                self._emit(Activity(seq, None, op, "fat", None, (nxt - rel) * SECTOR,
                                    volume.start + rel, cmd_offset))
                rel = nxt
                continue
            if volume.root_sectors and volume.root_start <= rel < volume.root_start + \
                    volume.root_sectors:
                nxt = min(rel_end, volume.root_start + volume.root_sectors)
                directory = volume.dirs[volume.root]
                changed = False
                for i in range(rel, nxt):
                    off = cmd_offset + (i - rel) * SECTOR
                    if off + SECTOR <= len(data):
                        changed |= _store(directory, i - volume.root_start,
                                          data[off : off + SECTOR])
                if changed:
                    self._directory_changed(volume, directory, seq, write)
                self._emit(Activity(seq, "/", op, "directory", None, (nxt - rel) * SECTOR,
                                    volume.start + rel, cmd_offset))
                rel = nxt
                continue
            if rel < volume.data_start:  # the gap between regions (exFAT alignment)
                nxt = min(rel_end, volume.data_start)
                self._emit(Activity(seq, None, op, "reserved", None, (nxt - rel) * SECTOR,
                                    volume.start + rel, cmd_offset))
                rel = nxt
                continue
            rel = self._data_region(volume, seq, rel, rel_end, lba, data, op, write)

    def _reserved_region(self, volume: Volume, seq: int, rel: int, nxt: int, cmd_offset: int,
                         op: str) -> None:
        for i in range(rel, nxt):
            if i == 0 or (volume.backup_boot is not None and i == volume.backup_boot) or \
                    (volume.kind == "exfat" and i < 24):
                kind = "boot_sector"
            elif volume.fsinfo is not None and i == volume.fsinfo:
                kind = "fsinfo"
            else:
                kind = "reserved"
            self._emit(Activity(seq, None, op, kind, None, SECTOR, volume.start + i,
                                cmd_offset + (i - rel) * SECTOR))

    def _fat_region(self, volume: Volume, rel: int, nxt: int, data: bytes,
                    cmd_offset: int) -> None:
        bps_sectors = volume.bps // SECTOR
        for i in range(rel, nxt):
            within = (i - volume.fat_start) % volume.fat_size
            copy = (i - volume.fat_start) // volume.fat_size
            fat_sector = within // bps_sectors
            if copy > 0 and fat_sector in volume.fat_known:
                continue  # the first FAT is the one kept; others only fill gaps
            off = cmd_offset + (i - rel) * SECTOR
            if off + SECTOR > len(data):
                continue
            new = data[off : off + SECTOR]
            if fat_sector in volume.fat_known and \
                    volume.fat[within * SECTOR : (within + 1) * SECTOR] == new:
                continue  # read again, unchanged
            volume.fat[within * SECTOR : (within + 1) * SECTOR] = new
            if bps_sectors == 1 or (within + 1) % bps_sectors == 0:
                volume.fat_known.add(fat_sector)
            volume._dirty = True
            self._changed.add(volume)

    def _data_region(self, volume: Volume, seq: int, rel: int, rel_end: int, lba: int,
                     data: bytes, op: str, write: bool) -> int:
        spc = volume.spc
        owners = volume.owners()
        first_dir_change: list[Directory] = []
        last: Activity | None = None
        while rel < rel_end:
            cluster = (rel - volume.data_start) // spc + 2
            within = (rel - volume.data_start) % spc
            nxt = min(rel_end, rel + spc - within)
            cmd_offset = (volume.start + rel - lba) * SECTOR
            length = (nxt - rel) * SECTOR
            owner = owners.get(cluster)
            if owner is not None:
                node, index = owner
                if node.is_dir:
                    directory = volume.dirs.get(node)
                    if directory is not None:
                        base = index * spc
                        changed = False
                        for i in range(rel, nxt):
                            off = cmd_offset + (i - rel) * SECTOR
                            if off + SECTOR <= len(data):
                                changed |= _store(directory, base + within + (i - rel),
                                                  data[off : off + SECTOR])
                        if changed and directory not in first_dir_change:
                            first_dir_change.append(directory)
                    row = Activity(seq, node.path, op, "directory", None, length,
                                   volume.start + rel, cmd_offset)
                    self._emit(row)
                    last = None
                else:
                    file_offset = index * volume.cluster_bytes + within * SECTOR
                    if last is not None and last.path == node.path and last.kind == "data" \
                            and last.file_offset is not None and last.length is not None \
                            and last.file_offset + last.length == file_offset:
                        last.length += length  # one row for a run of the same file
                    else:
                        last = Activity(seq, node.path, op, "data", file_offset, length,
                                        volume.start + rel, cmd_offset)
                        # a read is clipped at the size the file had when it was read; a
                        # write at the size its entry reaches later (data comes first)
                        self._emit(last, node if write else node.size)
            else:
                label = volume.metadata.get(cluster)
                if label is not None:
                    self._emit(Activity(seq, None, op, label, None, length, volume.start + rel,
                                        cmd_offset))
                else:
                    # nobody owns it yet: the window may bring its directory entry
                    self._emit(Activity(seq, None, op, "unallocated", within * SECTOR, length,
                                        volume.start + rel, cmd_offset), (volume, cluster))
                last = None
            rel = nxt
        for directory in first_dir_change:
            self._directory_changed(volume, directory, seq, write)
        return rel

    # ---- directories -------------------------------------------------------------------

    def _directory_changed(self, volume: Volume, directory: Directory, seq: int,
                           write: bool) -> None:
        blob_parts = []
        index = 0
        known = directory.sectors
        if not known:
            return
        top = max(known)
        entries: dict[int, Entry] = {}
        spans: list[tuple[int, bytes]] = []
        while index <= top:
            if index in known:
                start = index
                while index in known:
                    blob_parts.append(known[index])
                    index += 1
                spans.append((start * (SECTOR // 32), b"".join(blob_parts)))
                blob_parts = []
            else:
                index += 1
        parse = _parse_exfat_dir if volume.kind == "exfat" else _parse_fat_dir
        for first_slot, blob in spans:
            entries.update(parse(blob, first_slot, volume))
        children = directory.children
        # match by name, not slot: a file system may rewrite a directory compacted
        by_name = {node.name.casefold(): node for node in children.values()}
        new_children: dict[int, Node] = {}
        created: list[Node] = []
        for slot, entry in entries.items():
            node = by_name.pop(entry.name.casefold(), None)
            if node is not None and node.is_dir == entry.is_dir:
                if write and not entry.is_dir and entry.size != node.size:
                    event = "extended" if entry.size > node.size else "truncated"
                    self._emit(Activity(seq, node.path, event, "event", None, entry.size, None,
                                        detail=f"{node.size} -> {entry.size} bytes"))
                node.name = entry.name
                node.size, node.first_cluster = entry.size, entry.first_cluster
                node.contiguous = entry.contiguous
                new_children[slot] = node
                continue
            node = Node(entry.name, directory.node, entry.is_dir, entry.first_cluster,
                        entry.size, entry.contiguous)
            new_children[slot] = node
            is_new = write and directory.parsed
            if entry.is_dir and node not in volume.dirs:
                # a directory created before our eyes is known to start empty
                volume.dirs[node] = Directory(node, parsed=is_new)
            if is_new:
                created.append(node)
        for node in by_name.values():
            node.deleted = True
            if node.is_dir:
                volume.dirs.pop(node, None)
            if write and directory.parsed:
                self._emit(Activity(seq, node.path, "deleted", "event", None, node.size,
                                    None, detail=f"first cluster {node.first_cluster}"), node)
        for node in created:
            self._emit(Activity(seq, node.path, "created", "event", None, node.size, None,
                                detail="directory" if node.is_dir else None), node)
        directory.entries = entries
        directory.children = new_children
        directory.parsed = True
        volume._dirty = True
        self._changed.add(volume)

    def _resolve_pending(self, volume: Volume) -> None:
        """Rows of clusters nobody owned take the owner that metadata just named."""
        if not self._unowned:
            return
        owners = volume.owners()
        key_volume = id(volume)
        for key in [k for k in self._unowned if k[0] == key_volume and k[1] in owners]:
            node, index = owners[key[1]]
            for entry in self._unowned.pop(key):
                row = entry[1]
                if row.kind != "unallocated":
                    continue
                row.path = node.path
                if node.is_dir:
                    row.kind, row.file_offset = "directory", None
                    entry[2] = None
                else:
                    row.kind = "data"
                    row.file_offset = index * volume.cluster_bytes + (row.file_offset or 0)
                    entry[2] = node

    def _match_events(self, row: Activity, node: Node | None) -> None:
        """A deletion and a creation of the same first cluster are one rename or move.

        The created entry's cluster is read from its node now, not when it was
        written: an OS may write the new entry before it fills in the cluster.
        """
        if row.operation not in ("created", "deleted") or node is None:
            return
        cluster = node.first_cluster
        for _, other, other_node in reversed(self._queue):  # noqa: B007
            if other.kind != "event" or not isinstance(other_node, Node) or other_node is node:
                continue
            if row.operation == "deleted" and other.operation == "created" and cluster >= 2 \
                    and other_node.first_cluster == cluster and other_node.is_dir == node.is_dir:
                old, new = row, other
            elif row.operation == "created" and other.operation == "deleted" and \
                    cluster >= 2 and other_node.first_cluster == cluster:
                old, new = other, row
            else:
                continue
            assert old.path is not None and new.path is not None
            old_node, new_node = (node, other_node) if row.operation == "deleted" else \
                (other_node, node)
            old_node.successor = new_node
            same_dir = old.path.rsplit("/", 1)[0] == new.path.rsplit("/", 1)[0]
            other.operation = "renamed" if same_dir else "moved"
            other.detail = f"from {old.path}"
            other.path = new.path
            other.length = node.size if row.operation == "created" else other_node.size
            row.kind = "merged"  # dropped when final
            return

    # ---- making rows final --------------------------------------------------------------

    def _final(self, seq: int, row: Activity,
               pending: Node | tuple[Volume, int] | int | None) -> Activity:
        if row.kind == "unallocated" and isinstance(pending, tuple):
            self._unowned.pop((id(pending[0]), pending[1]), None)
        if row.kind == "data" and isinstance(pending, (Node, int)):
            size = pending.latest().size if isinstance(pending, Node) else pending
            if row.file_offset is not None and row.length is not None:
                inside = max(0, min(row.length, size - row.file_offset))
                if inside < row.length:
                    row.detail = f"{row.length - inside} bytes past the end of the file"
                    if inside == 0:
                        row.kind = "slack"
                    else:
                        row.length = inside
        elif row.kind == "unallocated" and isinstance(pending, tuple):
            volume, cluster = pending
            owner = volume.owners().get(cluster)
            if owner is not None:
                node, index = owner
                offset = index * volume.cluster_bytes + (row.file_offset or 0)
                if node.is_dir:
                    row.path, row.kind, row.file_offset = node.path, "directory", None
                else:
                    row.path, row.kind, row.file_offset = node.path, "data", offset
                    length = row.length or 0
                    inside = max(0, min(length, node.size - offset))
                    if inside < length:
                        row.detail = f"{length - inside} bytes past the end of the file"
                        if inside == 0:
                            row.kind = "slack"
                        else:
                            row.length = inside
            else:
                fat = volume.fat_entry(cluster)
                row.kind = "unallocated" if fat == 0 else "unknown"
                row.file_offset = None
        return row


def _store(directory: Directory, index: int, sector: bytes) -> bool:
    """Keep a directory sector; True when it is new or differs from what was seen."""
    if directory.sectors.get(index) == sector:
        return False
    directory.sectors[index] = sector
    return True


def _fat_name(raw: bytes, nt_res: int) -> str:
    base = raw[:8].rstrip(b" ")
    ext = raw[8:11].rstrip(b" ")
    if base[:1] == b"\x05":
        base = b"\xe5" + base[1:]
    name = base.decode("cp437", "replace")
    extension = ext.decode("cp437", "replace")
    if nt_res & 0x08:
        name = name.lower()
    if nt_res & 0x10:
        extension = extension.lower()
    return f"{name}.{extension}" if extension else name


def _parse_fat_dir(blob: bytes, first_slot: int, volume: Volume) -> dict[int, Entry]:
    """FAT directory entries with their long names (checksums checked), by slot."""
    out: dict[int, Entry] = {}
    lfn: dict[int, str] = {}
    lfn_sum: int | None = None
    for i in range(0, len(blob) - 31, 32):
        entry = blob[i : i + 32]
        first = entry[0]
        if first == 0x00:
            break
        attr = entry[11]
        if first == 0xE5:
            lfn, lfn_sum = {}, None
            continue
        if attr & 0x3F == 0x0F:
            order = first & 0x3F
            if first & 0x40:
                lfn, lfn_sum = {}, entry[13]
            elif lfn_sum != entry[13]:
                lfn, lfn_sum = {}, None
                continue
            chars = entry[1:11] + entry[14:26] + entry[28:32]
            lfn[order] = chars.decode("utf-16-le", "replace")
            continue
        if attr & 0x08:  # volume label
            lfn, lfn_sum = {}, None
            continue
        raw = entry[:11]
        if raw in (b".          ", b"..         "):
            lfn, lfn_sum = {}, None
            continue
        name = _fat_name(raw, entry[12])
        if lfn and lfn_sum == lfn_checksum(raw) and sorted(lfn) == list(range(1, len(lfn) + 1)):
            long_name = "".join(lfn[k] for k in sorted(lfn))
            long_name = long_name.split("\x00", 1)[0]
            if long_name:
                name = long_name
        hi, lo, size = struct.unpack_from("<H4xHI", entry, 20)
        cluster = (hi << 16) | lo if volume.kind == "fat32" else lo
        out[first_slot + i // 32] = Entry(first_slot + i // 32, name, bool(attr & 0x10),
                                          cluster, size)
        lfn, lfn_sum = {}, None
    return out


def _parse_exfat_dir(blob: bytes, first_slot: int, volume: Volume) -> dict[int, Entry]:
    """exFAT entry sets (file, stream extension, file names), and the volume's metadata."""
    out: dict[int, Entry] = {}
    n = len(blob) // 32
    i = 0
    while i < n:
        entry = blob[i * 32 : i * 32 + 32]
        kind = entry[0]
        if kind == 0x00:
            break
        if kind in (0x81, 0x82):
            cluster, length = struct.unpack_from("<IQ", entry, 20)
            label = "allocation_bitmap" if kind == 0x81 else "upcase_table"
            count = max(1, -(-length // volume.cluster_bytes))
            for c in range(cluster, cluster + count):
                volume.metadata[c] = label
        elif kind == 0x85:
            secondary = entry[1]
            if i + secondary >= n or secondary < 2:
                i += 1
                continue
            stream = blob[(i + 1) * 32 : (i + 2) * 32]
            if stream[0] != 0xC0:
                i += 1
                continue
            attributes = struct.unpack_from("<H", entry, 4)[0]
            flags, name_length = stream[1], stream[3]
            first_cluster, data_length = struct.unpack_from("<IQ", stream, 20)
            name = b""
            for k in range(2, secondary + 1):
                part = blob[(i + k) * 32 : (i + k + 1) * 32]
                if part[0] != 0xC1:
                    break
                name += part[2:32]
            text = name.decode("utf-16-le", "replace")[:name_length]
            out[first_slot + i] = Entry(first_slot + i, text, bool(attributes & 0x10),
                                        first_cluster, data_length, bool(flags & 0x02))
            i += 1 + secondary
            continue
        i += 1
    return out
