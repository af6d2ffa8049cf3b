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
same first cluster inside the window become one rename or move (unless the FAT
showed the cluster free in between: a new file took it).  A big file's data comes
long before its FAT and directory entry, so a row whose cluster has no owner when
the window closes is parked by cluster (``MAX_PARKED`` rows at most) and goes back
into the window when the metadata names the owner: rows can come out of command
order.  Sectors written to unowned clusters are kept (``MAX_KEPT_BYTES``) in case
the FAT links them to a directory that grew.

What was never seen is never guessed: with no boot sector, every access is
``unknown``; NTFS and ext2/3/4 are named and reported ``unsupported``.

Every number on the disk is untrusted.  A boot sector that breaks the rules of
Microsoft's FAT and exFAT specifications is reported as malformed (its region
``unknown``), not read.  Work and memory follow the bytes captured, never a
length field: the FAT keeps only the sectors seen, a contiguous exFAT file is a
range (not a list of its clusters), a chain stops at a loop or an impossible
cluster number, and a command is attributed over the blocks its payload holds
(the rest is one ``unknown`` row that says so).  What was cut short is said in
``Attributor.notes()``.
"""

from __future__ import annotations

import heapq
import struct
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from usbtrace.fs.infer import Geometry, Inference
from usbtrace.fs.layouts import FAT_PARTITION_TYPES, exfat_entry_set_checksum, lfn_checksum
from usbtrace.fs.partitions import GPT_PARTITION, DiskLayout

WINDOW = 4096  # commands a row waits for the metadata that explains it
# rows of clusters with no known owner kept past the window, until metadata names the
# owner (a big file's data comes long before its FAT and directory entry): about 1 GiB
# of 4 KiB clusters; past that the oldest go out unresolved, with a note
MAX_PARKED = 1 << 18
# sectors written to clusters with no owner yet, kept (the latest, up to this many bytes)
# in case the FAT makes them a directory's: a directory that grows gets its new cluster
# written before the FAT links it, and its entries must be read then
MAX_KEPT_BYTES = 8 << 20
SECTOR = 512
READS = {0x08, 0x28, 0xA8, 0x88}
WRITES = {0x0A, 0x2A, 0xAA, 0x8A}
READS_WRITES = frozenset(READS | WRITES)
# the kinds of row that ``Attributor._final`` may change; the others are final as made
LATE_KINDS = frozenset({"event", "unallocated", "data"})
# reads whose rows are kept to be given again (``Attributor._recent``): at most this many
# commands, holding at most this many payload bytes (compared when asked again)
MAX_RECENT = 4096
MAX_RECENT_BYTES = 8 << 20
# the kinds of row a read inside a volume makes without learning anything: a read made of
# only these gives the same rows while nothing changed (an unallocated one waits, filed
# by its cluster, for metadata to name the owner, as when it was made)
RECENT_KINDS = frozenset({"data", "directory", "fat", "boot_sector", "fsinfo", "reserved",
                          "allocation_bitmap", "upcase_table", "unknown", "unallocated"})

# FAT entry values at or above EOC end a chain; BAD marks a bad cluster (FAT spec §4,
# exFAT spec §4.1: 0xFFFFFFF7 bad, 0xFFFFFFFF end of chain)
EOC = {"fat12": 0xFF8, "fat16": 0xFFF8, "fat32": 0x0FFFFFF8, "exfat": 0xFFFFFFF8}
BAD = {"fat12": 0xFF7, "fat16": 0xFFF7, "fat32": 0x0FFFFFF7, "exfat": 0xFFFFFFF7}
ENTRY_BITS = {"fat12": 12, "fat16": 16, "fat32": 32, "exfat": 32}
MAX_FAT_DIR_ENTRIES = 65536  # FAT spec §6: a directory holds at most 65,536 entries
MAX_EXFAT_DIR_BYTES = 256 << 20  # exFAT spec §6: a directory is at most 256 MiB
MAX_UPCASE_BYTES = 2 * 65536  # exFAT spec §7.2: one 16-bit mapping per UCS-2 character
MAX_DEPTH = 128  # directory nesting followed; deeper ones are noted, not read
MAX_FILESYSTEMS = 64  # volumes, unsupported and malformed regions tracked per medium
MAX_NOTES = 64  # notes kept per volume (and per attributor)
_VOLUME = object()  # ``Attributor._boot``: the sector made a volume


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
        """The node this one was last renamed or moved to.  Links are made so that they
        cannot loop; the visited set keeps that a property of this method too."""
        node = self
        seen = {id(node)}
        while node.successor is not None and id(node.successor) not in seen:
            node = node.successor
            seen.add(id(node))
        return node

    @property
    def path(self) -> str:
        """Built by a loop, not recursion: nesting comes from the disk.  Directories
        deeper than ``MAX_DEPTH`` are not followed, so the bound here never cuts a real
        path; if it did, the path would say so with a leading "…"."""
        names: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            if len(names) > MAX_DEPTH + 1:
                names.append("…")
                break
            names.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(names))


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


@dataclass(frozen=True)
class Malformed:
    """A sector that claims to be a FAT or exFAT boot sector but breaks its spec."""

    reason: str


class Volume:
    """One FAT12/16/32 or exFAT file system at ``start`` (an absolute LBA).

    Offsets and sizes are in 512-byte LBAs, as the model counts them (``spc`` too);
    ``bps`` is the file system's own sector size.
    """

    def __init__(self, start: int, kind: str, bps: int, spc: int, reserved: int,
                 fat_start: int, fat_size: int, num_fats: int, root_start: int,
                 root_sectors: int, data_start: int, cluster_count: int, root_cluster: int,
                 fsinfo: int | None = None, backup_boot: int | None = None) -> None:
        self.start = start
        self.kind = kind
        self.bps = bps
        self.spc = spc
        self.cluster_bytes = spc * SECTOR
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
        self.fat_end = fat_start + num_fats * fat_size  # past the last FAT copy (relative)
        # the FAT is sparse: only the 512-byte sectors seen, by index in the FAT; never
        # sized from the boot sector, which may claim anything
        self.fat: dict[int, bytes] = {}
        self.root = Node("", None, True, root_cluster, 0)
        self.dirs: dict[Node, Directory] = {self.root: Directory(self.root)}
        # exFAT allocation bitmap and up-case table: first cluster -> (end cluster, label)
        self.metadata: dict[int, tuple[int, str]] = {}
        self.notes: dict[str, None] = {}  # what could not be read as the spec says, in order
        self._owners: dict[int, tuple[Node, int]] = {}  # clusters of FAT chains
        self._runs: list[tuple[int, int, Node, int]] = []  # contiguous: start, end, node, first
        self._run_starts: list[int] = []
        # what the owners were built from, so that a change redoes only what it touches:
        # the claims (and what of them decides ownership), each claim's priority (0 wins),
        # the clusters each chain took, the FAT sectors each walk read, and the chains
        # that stopped on another's cluster
        self._signature: list[tuple[Node, int, bool, int]] = []
        self._rank: dict[Node, int] = {}
        self._taken: dict[Node, list[int]] = {}
        self._read: dict[Node, dict[int, int]] = {}  # FAT sector -> first chain index
        self._resume: dict[Node, int] = {}  # chains to walk again from an index
        self._readers: dict[int, set[Node]] = {}
        self._blocked: dict[Node, set[Node]] = {}
        self._stale_fat: set[int] = set()
        self._dirty = True  # the directories changed: check the claims
        # clusters given an owner since the attributor last asked (rows parked on them
        # can be resolved), and whether the contiguous runs were rebuilt
        self._newly_owned: list[int] = []
        self._runs_changed = False

    def note(self, text: str) -> None:
        """Keep a note once; a bounded number of them."""
        if text in self.notes or len(self.notes) > MAX_NOTES:
            return
        self.notes[text if len(self.notes) < MAX_NOTES else "further notes left out"] = None

    # ---- the FAT ---------------------------------------------------------------------

    def fat_changed(self, index: int) -> None:
        """A FAT sector (by index in the FAT) was seen with new content."""
        self._stale_fat.add(index)

    def fat_entry(self, cluster: int, reads: set[int] | None = None) -> int | None:
        """The FAT entry of ``cluster``, or None if its sector was not seen.  ``reads``
        collects the FAT sectors the answer depends on (seen or not)."""
        if not 0 <= cluster < self.cluster_count + 2:
            return None
        kind = self.kind
        if kind == "fat12":
            offset, width = cluster + cluster // 2, 2
        elif kind == "fat16":
            offset, width = cluster * 2, 2
        else:
            offset, width = cluster * 4, 4
        index, at = divmod(offset, SECTOR)
        if reads is not None:
            reads.add(index)
            if at + width > SECTOR:
                reads.add(index + 1)
        sector = self.fat.get(index)
        if sector is None:
            return None
        if at + width > SECTOR:  # a FAT12 entry across two sectors
            following = self.fat.get(index + 1)
            if following is None:
                return None
            raw = sector[at:] + following[: at + width - SECTOR]
        else:
            raw = sector[at : at + width]
        value = int.from_bytes(raw, "little")
        if kind == "fat12":
            return value >> 4 if cluster & 1 else value & 0x0FFF
        return value & 0x0FFFFFFF if kind == "fat32" else value

    def _first(self, node: Node) -> int | None:
        """The first cluster of a FAT chain, or None (noted when outside the volume)."""
        cluster = node.first_cluster
        if cluster < 2:
            return None
        if cluster >= self.cluster_count + 2:
            self.note(f"{node.path}: first cluster {cluster} is outside the volume's "
                      f"{self.cluster_count} clusters; its data is not attributed")
            return None
        return cluster

    def _step(self, node: Node, cluster: int, reads: set[int] | None = None) -> int | None:
        """The cluster after ``cluster`` in a chain, or None where the FAT seen ends it:
        not seen yet, free (not yet updated), the end, or (noted) an impossible value."""
        nxt = self.fat_entry(cluster, reads)
        if nxt is None or nxt == 0 or nxt >= EOC[self.kind]:
            return None
        if nxt == BAD[self.kind] or nxt == 1 or nxt >= self.cluster_count + 2:
            what = "a bad-cluster mark" if nxt == BAD[self.kind] else f"cluster number {nxt}"
            self.note(f"{node.path}: malformed cluster chain, cluster {cluster} leads to "
                      f"{what}; the chain is followed up to it")
            return None
        return nxt

    def _loop(self, node: Node, cluster: int, nxt: int) -> None:
        self.note(f"{node.path}: malformed cluster chain, cluster {cluster} leads back to "
                  f"cluster {nxt}; the chain is followed up to the loop")

    def _fat_chain(self, node: Node) -> Iterator[int]:
        """The clusters of a FAT chain as far as the FAT seen tells; at most one per
        cluster of the volume: a loop or an impossible number ends it, with a note."""
        cluster = self._first(node)
        seen = set()
        while cluster is not None:
            yield cluster
            seen.add(cluster)
            nxt = self._step(node, cluster)
            if nxt is not None and nxt in seen:
                self._loop(node, cluster, nxt)
                return
            cluster = nxt

    def _span(self, node: Node) -> tuple[int, int] | None:
        """The cluster range of a contiguous (NoFatChain) node, within the volume."""
        first = node.first_cluster
        limit = self.cluster_count + 2
        if first < 2:
            return None
        if first >= limit:
            self.note(f"{node.path}: first cluster {first} is outside the volume's "
                      f"{self.cluster_count} clusters; its data is not attributed")
            return None
        count = max(1, -(-node.size // self.cluster_bytes))
        if count > limit - first:
            self.note(f"{node.path}: its {node.size} bytes run past the end of the cluster "
                      f"heap; attributed up to the heap's last cluster")
            count = limit - first
        return first, first + count

    def chain(self, node: Node) -> Sequence[int]:
        """The clusters of ``node`` as far as the FAT seen so far tells (a range, not a
        list, for a contiguous exFAT file: its length is a field, not bytes seen)."""
        if node.contiguous:
            span = self._span(node)
            return range(*span) if span else range(0)
        return list(self._fat_chain(node))

    # ---- owners ------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Who owns each cluster: the last claim in directory order wins (a rename's new
        entry over its old one until the old one is gone), each cluster once.

        Claims are walked from the last: a chain stops at a cluster a later claim holds,
        so the work is one step per cluster owned, whatever the chains share.  After a
        FAT change a chain is walked again only from the first of its entries in a
        changed sector (a file that grows is walked over its new clusters, not from its
        first one), with the chains that stopped on it; a directory change that leaves
        every claim's first cluster as it was costs one pass over the claims.
        """
        if self._dirty:
            self._dirty = False
            claims: list[Node] = []
            for directory in list(self.dirs.values()):
                if directory.node is self.root:
                    claims.append(self.root)
                children = list(directory.children.values())
                claims += [n for n in children if not n.is_dir]
                claims += [n for n in children if n.is_dir and n in self.dirs]
            signature = [(n, n.first_cluster, n.contiguous, n.size if n.contiguous else 0)
                         for n in claims]
            if signature != self._signature:
                self._signature = signature
                self._full(claims)
                return
        if self._stale_fat:
            stale, self._stale_fat = self._stale_fat, set()
            todo: dict[Node, int] = {}
            for index in stale:
                for node in self._readers.get(index, ()):
                    first = self._read[node][index]
                    todo[node] = min(todo.get(node, first), first)
            if todo:
                self._rewalk(todo)
                if self._dirty:
                    self._rebuild()  # the walk gave up: afresh

    def _full(self, claims: list[Node]) -> None:
        self._owners, self._taken, self._read, self._readers, self._blocked = {}, {}, {}, {}, {}
        self._stale_fat, self._resume, self._rank = set(), {}, {}
        spans: list[tuple[int, int, int, Node]] = []
        heap: list[tuple[int, int, Node]] = []
        for node in reversed(claims):
            if node in self._rank:
                continue
            rank = self._rank[node] = len(self._rank)
            if node.contiguous:
                span = self._span(node)
                if span is not None:
                    spans.append((span[0], span[1], rank, node))
            else:
                self._walk(node, heap)
        runs = _disjoint(spans)
        if runs != self._runs:
            self._runs_changed = True
        self._runs = runs
        self._run_starts = [run[0] for run in self._runs]

    def _claim(self, node: Node, cluster: int, index: int,
               heap: list[tuple[int, int, Node]]) -> bool:
        """Take ``cluster`` for ``node`` unless a higher claim holds it (then note that
        ``node`` stopped on it); a lower claim that held it walks again."""
        holder = self._owners.get(cluster)
        if holder is not None:
            other = holder[0]
            if self._rank[other] < self._rank[node]:
                self._blocked.setdefault(other, set()).add(node)
                return False  # cross-linked: the rest of the chain is a later entry's
            self._evict(other, heap)
        self._owners[cluster] = (node, index)
        self._newly_owned.append(cluster)  # one per walk step: bounded by the walk's work
        return True

    def _walk(self, node: Node, heap: list[tuple[int, int, Node]],
              start: int | None = None) -> None:
        """Walk a chain from its ``start``-th cluster (kept from an earlier walk), or
        afresh; record the FAT sectors read and the first index reading each."""
        if start is None:
            taken: list[int] = []
            read: dict[int, int] = {}
            self._taken[node], self._read[node] = taken, read
            cluster = self._first(node)
            if cluster is None or not self._claim(node, cluster, 0, heap):
                return
            taken.append(cluster)
        else:
            taken, read = self._taken[node], self._read[node]
            cluster = taken[start]
        sectors: set[int] = set()
        while True:
            index = len(taken) - 1
            nxt = self._step(node, cluster, sectors)
            for sector in sectors:
                if sector not in read:
                    read[sector] = index
                    self._readers.setdefault(sector, set()).add(node)
            sectors.clear()
            if nxt is None:
                return
            holder = self._owners.get(nxt)
            if holder is not None and holder[0] is node:
                self._loop(node, cluster, nxt)
                return
            if not self._claim(node, nxt, index + 1, heap):
                return
            taken.append(nxt)
            cluster = nxt

    def _forget(self, node: Node, keep: int) -> None:
        """Drop what a chain took after its first ``keep`` clusters, and its reads from
        the ``keep - 1``-th on (those entries are read again)."""
        owners = self._owners
        taken = self._taken[node]
        for cluster in taken[keep:]:
            if owners.get(cluster, (None,))[0] is node:
                del owners[cluster]
        del taken[keep:]
        read = self._read[node]
        for sector in [s for s, i in read.items() if i >= keep - 1]:
            del read[sector]
            readers = self._readers.get(sector)
            if readers is not None:
                readers.discard(node)

    def _evict(self, node: Node, heap: list[tuple[int, int, Node]]) -> None:
        """Forget all a chain took; it, and the chains that stopped on it (which may now
        run further), walk again from their first cluster."""
        stack = [node]
        while stack:
            node = stack.pop()
            if node not in self._taken:
                continue  # already waiting to walk again
            self._forget(node, 0)
            del self._taken[node], self._read[node]
            self._resume.pop(node, None)
            heapq.heappush(heap, (self._rank[node], id(node), node))
            stack += self._blocked.pop(node, set())

    def _rewalk(self, todo: dict[Node, int]) -> None:
        """Walk chains again from the index given for each, by priority: a higher claim
        is settled before a lower one can stop on it."""
        heap: list[tuple[int, int, Node]] = []
        for node, start in todo.items():
            if node not in self._taken:
                continue
            self._forget(node, start + 1)
            self._resume[node] = start
            heapq.heappush(heap, (self._rank[node], id(node), node))
            for other in self._blocked.pop(node, set()):
                self._evict(other, heap)
        walks = 0
        while heap:  # priorities only grow as it runs: each chain is settled once
            _, _, node = heapq.heappop(heap)
            if node in self._taken and node not in self._resume:
                continue
            walks += 1
            if walks > len(self._rank):  # cannot happen; if it did, start again afresh
                self._signature, self._dirty = [], True
                return
            self._walk(node, heap, self._resume.pop(node, None))

    def owner(self, cluster: int) -> tuple[Node, int] | None:
        """The node that owns ``cluster`` and the cluster's index in it."""
        self._rebuild()
        hit = self._owners.get(cluster)
        if hit is not None:
            return hit
        i = bisect_right(self._run_starts, cluster) - 1
        if i >= 0:
            start, end, node, first = self._runs[i]
            if cluster < end:
                return node, cluster - first
        return None

    def newly_owned(self) -> tuple[list[int], bool]:
        """The clusters that took an owner since the last call, and whether contiguous
        runs changed (then any cluster may have): rows waiting for an owner look here
        rather than at every cluster they wait on."""
        self._rebuild()
        claimed, self._newly_owned = self._newly_owned, []
        runs, self._runs_changed = self._runs_changed, False
        return claimed, runs

    def metadata_label(self, cluster: int) -> str | None:
        for first, (end, label) in self.metadata.items():
            if first <= cluster < end:
                return label
        return None

    def add_metadata(self, label: str, cluster: int, length: int) -> None:
        """An allocation bitmap or up-case table, clamped to the size the spec allows."""
        name = label.replace("_", " ")
        limit = self.cluster_count + 2
        if not 2 <= cluster < limit:
            self.note(f"{name} entry: first cluster {cluster} is outside the volume")
            return
        allowed = -(-self.cluster_count // 8) if label == "allocation_bitmap" else \
            MAX_UPCASE_BYTES
        if length > allowed:
            self.note(f"{name} entry claims {length} bytes, more than the {allowed} the "
                      "spec allows here; labelled up to that size")
            length = allowed
        end = min(limit, cluster + max(1, -(-length // self.cluster_bytes)))
        if cluster in self.metadata or len(self.metadata) < 4:  # one bitmap (two in TexFAT)
            self.metadata[cluster] = (end, label)
        else:
            self.note(f"{name} entry beyond the four a volume can have; not labelled")


def _disjoint(spans: list[tuple[int, int, int, Node]]) -> list[tuple[int, int, Node, int]]:
    """Overlapping (start, end, rank, node) ranges as disjoint (start, end, node, first)
    runs, the lowest rank winning where they overlap: one sweep, O(n log n)."""
    if not spans:
        return []
    spans.sort(key=lambda s: (s[0], s[2]))
    points = sorted({p for s in spans for p in (s[0], s[1])})
    heap: list[tuple[int, int, int, Node]] = []
    out: list[tuple[int, int, Node, int]] = []
    i = 0
    for k in range(len(points) - 1):
        point = points[k]
        while i < len(spans) and spans[i][0] <= point:
            start, end, rank, node = spans[i]
            heapq.heappush(heap, (rank, end, start, node))
            i += 1
        while heap and heap[0][1] <= point:
            heapq.heappop(heap)
        if not heap:
            continue
        _, _, first, node = heap[0]
        if out and out[-1][2] is node and out[-1][1] == point and out[-1][3] == first:
            out[-1] = (out[-1][0], points[k + 1], node, first)
        else:
            out.append((point, points[k + 1], node, first))
    return out


def _partition_entries(sector: bytes) -> list[tuple[int, int, int]] | None:
    """The MBR's (type, first LBA, count) entries, or None if they cannot be a table."""
    out = []
    for i in range(4):
        entry = sector[446 + 16 * i : 462 + 16 * i]
        if entry[0] not in (0x00, 0x80):
            return None
        ptype = entry[4]
        first, count = struct.unpack_from("<II", entry, 8)
        if ptype and count:
            out.append((ptype, first, count))
    return out


def _fat_volume(start: int, sector: bytes) -> Volume | Malformed | str | None:
    """A FAT volume from its boot sector; 'ntfs' for NTFS; Malformed for a boot sector
    that breaks the spec; None if the sector is not a boot sector at all."""
    if len(sector) < SECTOR:
        return None
    if sector[3:11] == b"NTFS    ":
        return "ntfs"
    if sector[510:512] != b"\x55\xaa":
        return None
    if sector[3:11] == b"EXFAT   ":
        return _exfat_volume(start, sector)
    if sector[0] not in (0xEB, 0xE9):
        return None
    (bps, spc, reserved, nfats, root_entries, tot16, media, fatsz16, _spt, _heads, _hidden,
     tot32) = struct.unpack_from("<HBHBHHBHHHII", sector, 11)
    if bps not in (512, 1024, 2048, 4096):
        return None  # no BPB here (an MBR's boot code, say)
    fatsz32, _flags, _ver, root_cluster, fsinfo, backup = struct.unpack_from("<IHHIHH",
                                                                             sector, 36)
    # FAT spec §3.1, §3.5: the rules a BPB keeps
    problems = []
    if spc == 0 or spc & (spc - 1) or spc > 128:
        problems.append(f"BPB_SecPerClus {spc} is not a power of two up to 128")
    elif bps * spc > 64 * 1024:
        problems.append(f"clusters of {bps * spc} bytes (at most 64 KiB)")
    if reserved == 0:
        problems.append("BPB_RsvdSecCnt is 0")
    if nfats == 0:
        problems.append("BPB_NumFATs is 0")
    if media != 0xF0 and media < 0xF8:
        problems.append(f"BPB_Media 0x{media:02x} is not a media type")
    fat_size = fatsz16 or fatsz32
    total = tot16 or tot32
    if fat_size == 0:
        problems.append("no FAT size (BPB_FATSz16 and BPB_FATSz32 are 0)")
    if total == 0:
        problems.append("no sector count (BPB_TotSec16 and BPB_TotSec32 are 0)")
    root_sectors = (root_entries * 32 + bps - 1) // bps
    data_start = reserved + nfats * fat_size + root_sectors
    if not problems and total < data_start + spc:
        problems.append(f"its regions ({data_start} sectors before the data) fill its "
                        f"{total} sectors")
    if problems:
        return Malformed("; ".join(problems))
    clusters = (total - data_start) // spc
    kind = "fat12" if clusters < 4085 else "fat16" if clusters < 65525 else "fat32"
    if kind == "fat32":
        if root_entries or fatsz16:
            problems.append(f"{clusters} clusters make it FAT32, but BPB_RootEntCnt or "
                            "BPB_FATSz16 is not 0")
        if clusters > 0x0FFFFFF5:
            problems.append(f"{clusters} clusters, more than FAT32 can number")
        if not 2 <= root_cluster < clusters + 2:
            problems.append(f"BPB_RootClus {root_cluster} is outside the volume")
    elif root_entries == 0:
        problems.append(f"{clusters} clusters make it {kind.upper()}, but BPB_RootEntCnt is 0")
    needed = -(-(clusters + 2) * ENTRY_BITS[kind] // 8)
    if fat_size * bps < needed:
        problems.append(f"a FAT of {fat_size * bps} bytes cannot hold {clusters} clusters")
    if problems:
        return Malformed("; ".join(problems))
    scale = bps // SECTOR  # the model counts 512-byte LBAs
    if kind == "fat32":
        fsinfo_at = fsinfo * scale if 1 <= fsinfo < reserved else None
        backup_at = backup * scale if 1 <= backup < reserved else None
        return Volume(start, kind, bps, spc * scale, reserved * scale, reserved * scale,
                      fat_size * scale, nfats, 0, 0, data_start * scale, clusters, root_cluster,
                      fsinfo_at, backup_at)
    return Volume(start, kind, bps, spc * scale, reserved * scale, reserved * scale,
                  fat_size * scale, nfats, (reserved + nfats * fat_size) * scale,
                  root_sectors * scale, data_start * scale, clusters, 0)


def _inferred_volume(g: Geometry) -> Volume:
    """A volume from an inferred geometry: it starts at its FAT (where its boot sector
    is, is not known), so the LBAs before the FAT stay unknown."""
    start = g.fat_start
    return Volume(start, g.kind, SECTOR, g.spc, 0, 0, g.fat_size, g.num_fats,
                  g.root_start - start if g.root_sectors else 0, g.root_sectors,
                  g.data_start - start, g.cluster_count, g.root_cluster)


def _exfat_volume(start: int, sector: bytes) -> Volume | Malformed:
    """An exFAT volume from its main boot sector, checked as exFAT spec §3.1 requires."""
    volume_length = struct.unpack_from("<Q", sector, 72)[0]
    fat_offset, fat_length, heap, count, root = struct.unpack_from("<IIIII", sector, 80)
    bps_shift, spc_shift, nfats = sector[108], sector[109], sector[110]
    problems = []
    if sector[0:3] != b"\xeb\x76\x90":
        problems.append("JumpBoot is not EB 76 90")
    if any(sector[11:64]):
        problems.append("MustBeZero is not zero")
    if not 9 <= bps_shift <= 12:
        problems.append(f"BytesPerSectorShift {bps_shift} is not 9..12")
    elif spc_shift > 25 - bps_shift:
        problems.append(f"SectorsPerClusterShift {spc_shift} makes clusters over 32 MiB")
    if nfats not in (1, 2):
        problems.append(f"NumberOfFats {nfats} is not 1 or 2")
    if problems:
        return Malformed("; ".join(problems))
    bps = 1 << bps_shift
    if volume_length < (1 << 20) // bps:
        problems.append(f"VolumeLength {volume_length} is under 1 MiB")
    if fat_offset < 24:
        problems.append(f"FatOffset {fat_offset} is inside the boot region")
    if not 1 <= count <= 0xFFFFFFF5:
        problems.append(f"ClusterCount {count} is out of range")
    if fat_length * bps < (count + 2) * 4:
        problems.append(f"FatLength {fat_length} cannot hold {count} clusters")
    if heap < fat_offset + fat_length * nfats:
        problems.append(f"ClusterHeapOffset {heap} is inside the FAT region")
    if heap + (count << spc_shift) > volume_length:
        problems.append("the cluster heap runs past VolumeLength")
    if not 2 <= root < count + 2:
        problems.append(f"FirstClusterOfRootDirectory {root} is outside the heap")
    if problems:
        return Malformed("; ".join(problems))
    scale = bps // SECTOR
    return Volume(start, "exfat", bps, (1 << spc_shift) * scale, 24 * scale,
                  fat_offset * scale, fat_length * scale, nfats, 0, 0, heap * scale, count,
                  root)


class Attributor:
    """Fed SCSI commands in order; returns ``file_activity`` rows as they become final."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.volumes: list[Volume] = []
        self.unsupported: list[tuple[int, int | None, str]] = []  # (start, end, name)
        # boot sectors that break their spec: (start, end, reason); their region is unknown
        self.malformed: list[tuple[int, int | None, str]] = []
        self.expected: dict[int, int] = {}  # partition start LBA -> partition type
        self._extent: dict[int, int] = {}  # partition start LBA -> its end, from the table
        self._notes: dict[str, None] = {}
        self.partition_table_seen = False
        self.layout = DiskLayout()  # partitions (MBR and GPT), GPT sectors, other file systems
        # rows wait here; the third item says what to look up when the row is final:
        # the Node whose size clips a data row, or (volume, cluster) for an unowned one
        self._queue: deque[list[Any]] = deque()  # [seq, row, pending]
        # rows of clusters nobody owns yet, by (volume, cluster): resolved in place
        self._unowned: dict[tuple[int, int], list[list[Any]]] = {}
        self._seq = 0
        self._changed: set[Volume] = set()
        # creations and deletions in the window not yet paired into a rename, by the
        # first cluster their node has now; and where each creation is filed
        self._created: dict[int, list[list[Any]]] = {}
        self._deleted: dict[int, list[list[Any]]] = {}
        self._created_at: dict[Node, tuple[int, list[Any]]] = {}
        # rows that left the window with no owner for their cluster, by (volume, cluster),
        # and in the order they were parked (the oldest goes first when there are too many)
        self._parked: dict[tuple[int, int], list[Activity]] = {}
        self._parked_order: deque[tuple[tuple[int, int], Activity]] = deque()
        self._parked_count = 0
        self._volume_by_id: dict[int, Volume] = {}
        # sectors of unowned clusters, by (volume, cluster) -> sector in the cluster
        self._kept: dict[tuple[int, int], dict[int, bytes]] = {}
        # the same sectors in the order they were (last) written: the oldest go first; a
        # dict, so a sector written again moves to the end instead of piling up
        self._kept_order: dict[tuple[tuple[int, int], int], None] = {}
        self._kept_bytes = 0
        # no boot sector seen: the geometry inferred from other metadata (infer.py)
        self._inference = Inference(window)
        self._inferred: Volume | None = None
        self._stale: tuple[int, int, int] | None = None  # an inferred volume's rows after it
        # reads inside a volume that changed nothing, by (LBA, blocks): (its payload's
        # length, its payload or None when only the length counts, the rows' fields after
        # scsi_seq and what each waits on, whether one waits for an owner).  The same
        # read again, while nothing it looked at has changed, makes the same rows: a
        # command that changes a FAT or directory sector, and a volume or file system
        # learnt or withdrawn, empty it (``_moved``).  Hosts re-read the same FAT and
        # directory sectors and files again and again.
        self._recent: dict[tuple[int, int], tuple[int, bytes | None,
                                                  list[tuple[tuple[Any, ...], Any]], bool]] = {}
        self._recent_bytes = 0
        self._moves = 0  # times ``_recent`` was emptied
        # boot sectors and partition tables parsed, by LBA: (the sector, what
        # ``_fat_volume`` made of it, ``_VOLUME`` for a volume; and the partition entries,
        # for sector 0).  Hosts read them again at every mount: the same bytes parse the
        # same (both functions are pure), so they are not parsed again (``_boot``)
        self._boots: dict[int, tuple[bytes, Malformed | str | object | None,
                                     list[tuple[int, int, int]] | None]] = {}

    def _moved(self) -> None:
        """Something a read's rows depend on changed: forget the reads kept."""
        self._moves += 1
        if self._recent:
            self._recent = {}
            self._recent_bytes = 0

    def notes(self) -> list[str]:
        """What the shadow volumes could not read as their spec says, for the session."""
        out = list(self._notes) + self._inference.notes()
        for volume in self.volumes:
            where = f"file system at LBA {volume.start}: "
            out += [where + note for note in volume.notes]
        if len(out) > MAX_NOTES:
            out = out[:MAX_NOTES] + [f"{len(out) - MAX_NOTES} further notes left out"]
        return out

    def _note(self, text: str) -> None:
        if text not in self._notes and len(self._notes) < MAX_NOTES:
            self._notes[text] = None
    # ---- entry points ------------------------------------------------------------------

    def feed(self, seq: int, opcode: int, lba: int | None, blocks: int | None,
             data: bytes, status: str) -> list[Activity]:
        self._seq = seq
        if lba is None or not blocks or opcode not in READS_WRITES or status != "good":
            # most such commands release nothing: ``_release``'s tests, inline
            queue = self._queue
            if queue and queue[0][0] <= seq - self.window or \
                    self._parked_count > MAX_PARKED or not self.volumes or \
                    self._inferred is not None:
                return self._release()
            return []
        write = opcode in WRITES
        blind, inferred = not self.volumes, self._inferred
        # sector 0 too: a read of it is given again only with the same bytes (its rows
        # are kept only when it was a volume's boot sector, which then taught nothing)
        recent = not write and not blind and inferred is None
        if recent:
            moves = self._moves
            hit = self._recent.get((lba, blocks))
            if hit is not None and hit[0] == len(data) and (hit[1] is None or hit[1] == data):
                # partitions and signatures are probed as always (they may learn); the
                # rows inside the volume are those of last time unless that changed it
                layout = self.layout
                if self.expected or lba < layout.quiet_from and \
                        not layout.quiet(lba, len(data) // SECTOR):
                    self._probe(lba, blocks, data)
                if moves == self._moves:
                    queue = self._queue
                    if hit[3]:  # some wait for an owner: filed as ``_emit`` files them
                        for fields, pending in hit[2]:
                            self._emit(Activity(seq, *fields), pending)
                    else:
                        for fields, pending in hit[2]:
                            queue.append([seq, Activity(seq, *fields), pending])
                    if queue and queue[0][0] <= seq - self.window or \
                            self._parked_count > MAX_PARKED \
                            or not self.volumes or self._inferred is not None:
                        return self._release()
                    return []  # nothing due (``_release``'s tests, inline)
                self._changed = set()
                self._access(seq, lba, blocks, data, write, probe=False)
                self._moved()
                return self._settle(seq, (opcode, lba, blocks, data, status), blind, inferred)
            first = len(self._queue)
        if blind or inferred is not None:  # an inferred volume stays under watch
            self._inference.observe(seq, opcode, lba, blocks, data, status, write)
        self._changed = set()
        self._access(seq, lba, blocks, data, write)
        if self._changed:
            self._moved()
        elif recent and moves == self._moves:
            self._remember(lba, blocks, data, first)
        return self._settle(seq, (opcode, lba, blocks, data, status), blind, inferred)

    def _settle(self, seq: int, command: tuple[int, int, int, bytes, str], blind: bool,
                inferred: Volume | None) -> list[Activity]:
        """After a command's access: a boot sector that came late, an inferred volume
        under watch, and what the metadata it changed resolves; then the rows due."""
        if (blind and self.volumes) or (inferred is not None and self._inferred is None):
            self._late_boot_sector(seq, command, inferred)
        elif self._inferred is not None:
            self._watch(seq, False)
        for volume in self._changed:
            self._resolve_pending(volume)
            for _ in range(MAX_DEPTH):  # a directory read may name more owners
                if not self._resolve_parked(volume, seq):
                    break
            if self._deleted:
                self._forget_freed(volume)
        return self._release()

    def _remember(self, lba: int, blocks: int, data: bytes, first: int) -> None:
        """Keep a read's rows (those from ``first`` in the window) to give them again,
        if it lies inside one volume and its rows wait on nothing but a file's size.
        Its payload is kept to be compared unless only file data was read.  Rows final
        as made are kept merged as ``_append`` would merge them (a FAT read sector by
        sector is one row): giving them again makes fewer rows to pass along."""
        end = lba + blocks
        if not any(v.start <= lba and end <= v.end for v in self.volumes):
            return  # outside volumes: the partition layout labels it
        rows: list[tuple[tuple[Any, ...], Any]] = []
        only_data = True  # then the payload is not read: only its length counts
        waits = False
        queue = self._queue
        last: Activity | None = None  # the last row kept, if final as made
        for k in range(first, len(queue)):
            _, row, pending = queue[k]
            kind = row.kind
            if kind not in RECENT_KINDS or not (pending is None or type(pending) is int or
                                                kind == "unallocated"):
                return
            waits = waits or kind == "unallocated"
            only_data = only_data and kind not in ("fat", "directory")
            if kind in LATE_KINDS:
                last = None
            elif last is not None and _continues(last, row):
                last = Activity(last.scsi_seq, last.path, last.operation, kind,
                                last.file_offset, last.length + row.length, last.lba,
                                last.command_offset, row.detail)
                rows[-1] = (_fields(last), None)
                continue
            else:
                last = row
            rows.append((_fields(row), pending))
        # sector 0's bytes decide what it is (a boot sector, a partition table): compared
        kept = None if only_data and lba > 0 else data
        size = len(kept) if kept is not None else 0
        old = self._recent.get((lba, blocks))
        if old is not None and old[1] is not None:
            self._recent_bytes -= len(old[1])
        if len(self._recent) >= MAX_RECENT or self._recent_bytes + size > MAX_RECENT_BYTES:
            self._recent = {}
            self._recent_bytes = 0
        self._recent[(lba, blocks)] = (len(data), kept, rows, waits)
        self._recent_bytes += size

    def warm(self, commands: Iterable[tuple[int, int, int | None, int | None, bytes, str]]
             ) -> None:
        """Learn the volume from an earlier session of the same medium; keep no rows."""
        for command in commands:
            self.feed(*command)
        self.flush()
        self._seq = 0
        self._inference.rebase()  # its evidence counts; its commands are not this session's

    def flush(self) -> list[Activity]:
        self._moved()
        out: list[Activity] = []
        if self._inferred is not None:
            self._watch(self._seq, True)
        self._infer()
        while self._queue:
            self._finish(out, self._queue.popleft())
        for key, row in self._parked_order:
            if row.kind == "unallocated":
                self._append(out, self._give_up(key, row, "no metadata named its owner by "
                                                "the end of the capture"))
        self._parked.clear()
        self._parked_order.clear()
        self._parked_count = 0
        self._kept.clear()
        self._kept_order.clear()
        self._kept_bytes = 0
        self._mark_inferred(out)
        self._unowned.clear()
        self._created.clear()
        self._deleted.clear()
        self._created_at.clear()
        return out

    def _release(self) -> list[Activity]:
        out: list[Activity] = []
        queue = self._queue
        limit = self._seq - self.window
        if queue and queue[0][0] <= limit:
            if not self.volumes:
                self._infer()  # the last moment: rows become final
                queue = self._queue
            finish, append, add = self._finish, self._append, out.append
            while queue and queue[0][0] <= limit:
                entry = queue.popleft()
                row = entry[1]
                kind = row.kind
                if kind in LATE_KINDS:
                    size = entry[2]
                    if kind != "data" or size.__class__ is not int:
                        finish(out, entry)
                        continue
                    # a read's data, clipped at the size the file had when it was read
                    # (``_finish`` and ``_final``, inline)
                    if row.file_offset is not None and row.length is not None:
                        _clip(row, size, row.file_offset, row.length)
                    if out and out[-1].scsi_seq == row.scsi_seq:
                        append(out, row)
                    else:
                        add(row)
                elif kind == "merged" or out and out[-1].scsi_seq == row.scsi_seq:
                    append(out, row)  # final as made (a FAT, a directory, ...): merged?
                else:
                    add(row)  # the first of its command: ``_append`` would add it
        while self._parked_count > MAX_PARKED:
            key, row = self._parked_order.popleft()
            if row.kind != "unallocated":
                continue  # resolved since
            self._unpark(key, row)
            self._note(f"more than {MAX_PARKED} writes waited for the metadata naming "
                       "their owner; the oldest were logged unresolved (their detail says so)")
            self._append(out, self._give_up(key, row, f"its owner was not known after "
                                            f"{MAX_PARKED} further rows waited; not resolved"))
        if not self.volumes or self._inferred is not None:
            self._inference.forget(limit)
        if out and (self._inferred is not None or self._stale is not None):
            self._mark_inferred(out)
        return out

    def _finish(self, out: list[Activity], entry: list[Any]) -> None:
        """Make a row final, or park a write whose cluster still has no owner.  A read is
        not parked: what it read was free space then, whoever takes the cluster later."""
        row, pending = entry[1], entry[2]
        if row.kind == "unallocated" and isinstance(pending, tuple) and \
                row.operation == "write":
            volume, cluster = pending
            self._unowned.pop((id(volume), cluster), None)
            if volume.owner(cluster) is None and volume.metadata_label(cluster) is None:
                key = (id(volume), cluster)
                self._volume_by_id[id(volume)] = volume
                self._parked.setdefault(key, []).append(row)
                self._parked_order.append((key, row))
                self._parked_count += 1
                return
        if row.kind == "data" and row.operation == "write" and isinstance(pending, Node) \
                and pending.deleted and pending.successor is None and row.detail is None:
            row.detail = self._taken_since(row, pending)
        self._append(out, self._final(*entry) if row.kind in LATE_KINDS else row)

    def _taken_since(self, row: Activity, node: Node) -> str | None:
        """Whether a file took the clusters of this write to a file since deleted.  The
        write stays the deleted file's (its entry named the cluster when it was written),
        but an OS may write a new file's data into freed clusters before the old entry's
        deletion reaches the disk: the two cannot be told apart on the wire, so say so."""
        volume = self._volume_of(node)
        if volume is None or row.lba is None or row.length is None:
            return None
        start = row.lba - volume.start - volume.data_start
        end = start + max(1, -(-row.length // SECTOR))
        for cluster in range(start // volume.spc + 2, (end - 1) // volume.spc + 3):
            owner = volume.owner(cluster)
            if owner is not None and owner[0] is not node and not owner[0].deleted:
                return (f"{node.path} was deleted and {owner[0].path} took cluster "
                        f"{cluster}: this may be that file's data, written before the "
                        "deletion reached the disk")
        return None

    def _unpark(self, key: tuple[int, int], row: Activity) -> None:
        rows = self._parked.get(key)
        if rows is not None:
            rows[:] = [r for r in rows if r is not row]
            if not rows:
                del self._parked[key]
        self._parked_count -= 1

    def _give_up(self, key: tuple[int, int], row: Activity, why: str) -> Activity:
        """A parked row goes out with what is known: free or allocated to no one seen."""
        volume = self._volume_by_id.get(key[0])
        fat = volume.fat_entry(key[1]) if volume is not None else None
        row.kind = "unallocated" if fat == 0 else "unknown"
        row.file_offset = None
        state = "free in the FAT seen" if fat == 0 else "not free in the FAT seen" \
            if fat is not None else "its FAT entry was not seen"
        row.detail = f"cluster {key[1]} ({state}): {why}"
        return row

    def _keep(self, volume: Volume, cluster: int, within: int, data: bytes,
              offset: int, count: int) -> None:
        """Keep the sectors written to a cluster nobody owns (the latest, bounded)."""
        key = (id(volume), cluster)
        self._volume_by_id[key[0]] = volume
        sectors = self._kept.setdefault(key, {})
        order = self._kept_order
        for i in range(count):
            at = offset + i * SECTOR
            if at + SECTOR > len(data):
                break
            if within + i not in sectors:
                self._kept_bytes += SECTOR
            sectors[within + i] = bytes(data[at : at + SECTOR])
            order.pop((key, within + i), None)
            order[(key, within + i)] = None
        while self._kept_bytes > MAX_KEPT_BYTES and order:
            old, index = next(iter(order))
            del order[(old, index)]
            held = self._kept.get(old)
            if held is not None and held.pop(index, None) is not None:
                self._kept_bytes -= SECTOR
                if not held:
                    del self._kept[old]
        # sectors a directory adopted leave their places behind: drop them, amortised O(1)
        # (after this the order holds exactly the kept sectors)
        if len(order) > 4 * (self._kept_bytes // SECTOR) + 4096:
            self._kept_order = {(k, i): None for k, i in order if i in self._kept.get(k, {})}

    def _adopt_kept(self, volume: Volume, keys: list[tuple[int, int]], seq: int) -> bool:
        """Kept sectors of clusters a directory now owns become its entries; True when a
        directory changed (its entries may name further owners)."""
        changed: list[Directory] = []
        for key in keys:
            sectors = self._kept.pop(key, None)
            if sectors is None:
                continue
            self._kept_bytes -= SECTOR * len(sectors)
            owner = volume.owner(key[1])
            if owner is None or not owner[0].is_dir:
                continue
            directory = volume.dirs.get(owner[0])
            if directory is None:
                continue
            base = owner[1] * volume.spc
            for within, sector in sectors.items():
                if _store(directory, base + within, sector) and directory not in changed:
                    changed.append(directory)
        for directory in changed:
            self._directory_changed(volume, directory, seq, True)
        return bool(changed)

    def _resolve_parked(self, volume: Volume, seq: int) -> bool:
        """Parked rows of clusters that just took an owner go back into the window, so
        that a write is still clipped at the size the file's entry reaches; kept sectors
        of clusters a directory took are read as its entries.  True when a directory
        changed so (then owners may have changed again)."""
        claimed, runs = volume.newly_owned()
        vid = id(volume)
        again = False
        if self._kept:
            if runs:
                kept = [k for k in self._kept if k[0] == vid]
            else:
                kept = [(vid, c) for c in claimed if (vid, c) in self._kept]
            again = self._adopt_kept(volume, kept, seq)
        if not self._parked:
            return again
        if runs:
            keys = [k for k in self._parked if k[0] == vid]
        else:
            keys = [(vid, c) for c in claimed if (vid, c) in self._parked]
        for key in keys:
            owner = volume.owner(key[1])
            if owner is None or key not in self._parked:
                continue
            node, index = owner
            rows = self._parked.pop(key)
            self._parked_count -= len(rows)
            for row in rows:
                row.path = node.path
                if node.is_dir:
                    row.kind, row.file_offset = "directory", None
                    pending: Node | None = None
                else:
                    row.kind = "data"
                    row.file_offset = index * volume.cluster_bytes + (row.file_offset or 0)
                    pending = node
                self._queue.append([self._seq, row, pending])
        order = self._parked_order
        if len(order) > 2 * self._parked_count + 4096:  # drop the resolved: amortised O(1)
            self._parked_order = deque((k, r) for k, r in order if r.kind == "unallocated")
        return again

    # ---- no boot sector: a geometry inferred from the other metadata (infer.py) -------

    def _infer(self) -> None:
        """Once the evidence decides a geometry, build its volume and attribute again the
        commands whose rows are still in the window (their rows were all unknown)."""
        if self.volumes or self._inference.solve() is None:
            return
        geometry = self._inference.result
        assert geometry is not None
        self._inference.accepted = geometry
        self._inferred = volume = _inferred_volume(geometry)
        self._add_volume(volume)
        self._redo(None)

    def _watch(self, seq: int, force: bool) -> None:
        """An inferred volume that later evidence refuses is withdrawn: the window's rows
        are unknown again (those final before rest on it, as the notes say)."""
        if self._inferred is not None and self._inference.contradicted(seq, force):
            withdrawn, self._inferred = self._inferred, None
            self.volumes.remove(withdrawn)
            self._moved()
            self._redo(None, [(withdrawn.start, withdrawn.end)])

    def _late_boot_sector(self, seq: int, command: tuple[int, int, int, bytes, str],
                          inferred: Volume | None) -> None:
        """A boot sector came after other metadata.  Read, or written with the geometry
        the evidence before it gave (a dirty flag set or cleared), it held before: its
        volumes start afresh and the window's earlier commands are attributed again, then
        this one.  Written otherwise, it is a format: what came before was another layout."""
        written = command[0] in WRITES
        agreed = [self._inference.compare(v.start, v.kind, v.fat_start, v.fat_size,
                                          v.num_fats, v.data_start, v.spc, v.bps, written)
                  for v in self.volumes]
        if written and not all(agreed):
            self._inference.take()
            if inferred is not None:  # rows of the window still rest on the inferred one
                self._stale = (inferred.start, inferred.end, seq)
            return
        for i, volume in enumerate(self.volumes):
            self.volumes[i] = Volume(volume.start, volume.kind, volume.bps, volume.spc,
                                     volume.reserved, volume.fat_start, volume.fat_size,
                                     volume.num_fats, volume.root_start, volume.root_sectors,
                                     volume.data_start, volume.cluster_count,
                                     volume.root_cluster, volume.fsinfo, volume.backup_boot)
        self._redo((seq, *command))

    def _redo(self, current: tuple[int, int, int, int, bytes, str] | None,
              ranges: list[tuple[int, int]] | None = None) -> None:
        """Attribute again the buffered commands whose rows are still in the window and
        that touch the volumes (or ``ranges``); then ``current`` with its whole payload.
        Commands elsewhere keep their rows: only metadata was kept of their payload."""
        self._moved()  # volumes were replaced, added or withdrawn
        spans = ranges if ranges is not None else [(v.start, v.end) for v in self.volumes]
        buffered = [c for c in self._inference.take()
                    if (current is None or c.seq < current[0]) and
                    any(a < c.lba + c.blocks and c.lba < b for a, b in spans)]
        redone = {c.seq for c in buffered} | ({current[0]} if current else set())
        old, self._queue = self._queue, deque()
        now = self._seq
        if self.volumes:  # what the commands before the window showed, rows discarded;
            # twice, so that a directory seen before its parent's entry is kept too
            first = buffered[0].seq if buffered else current[0] if current else now + 1
            seed = self._inference.seed(first)
            for seq, at, sector in seed + seed:
                self._replay(seq, 0x28, at, 1, sector)
            self._queue = deque()
            self._unowned, self._created, self._deleted, self._created_at = {}, {}, {}, {}
        for c in buffered:
            data = bytearray(c.length)
            for index, sector in c.sectors.items():
                data[index * SECTOR : (index + 1) * SECTOR] = sector
            self._replay(c.seq, c.opcode, c.lba, c.blocks, bytes(data))
        if current is not None:
            self._replay(current[0], current[1], current[2], current[3], current[4])
        self._seq = now
        # in command order (a stable sort keeps each command's rows as they were)
        self._queue = deque(sorted([*self._queue, *(e for e in old if e[0] not in redone)],
                                   key=lambda e: e[0]))

    def _replay(self, seq: int, opcode: int, lba: int, blocks: int, data: bytes) -> None:
        self._seq, self._changed = seq, set()
        self._access(seq, lba, blocks, data, opcode in WRITES)
        for changed in self._changed:
            self._resolve_pending(changed)

    def _mark_inferred(self, rows: list[Activity]) -> None:
        """Rows of an inferred volume say so; a rename's or move's detail stays "from
        PATH", which readers parse (its path's other rows say it)."""
        volume = self._inferred
        start, end, before = (volume.start, volume.end, None) if volume is not None else \
            self._stale if self._stale is not None else (0, 0, 0)
        if volume is None and self._stale is None:
            return
        for row in rows:
            if before is not None and row.scsi_seq >= before:
                continue
            inside = row.lba is not None and start <= row.lba < end
            if not inside and not (row.lba is None and row.path is not None):
                continue
            if row.detail is None:
                row.detail = "inferred"
            elif "inferred" not in row.detail and row.operation not in ("renamed", "moved"):
                row.detail += "; inferred"

    @staticmethod
    def _append(out: list[Activity], row: Activity) -> None:
        """Merge a row into the previous one when it continues the same run."""
        if row.kind == "merged":
            return
        if out:
            last = out[-1]
            if last.scsi_seq == row.scsi_seq and _continues(last, row):
                assert last.length is not None and row.length is not None
                last.length += row.length
                last.detail = row.detail
                return
        out.append(row)

    def _emit(self, row: Activity, pending: Node | tuple[Volume, int] | int | None = None
              ) -> None:
        entry = [row.scsi_seq, row, pending]
        kind = row.kind
        if kind == "event":
            self._match_events(entry)
        self._queue.append(entry)
        if kind == "unallocated" and isinstance(pending, tuple):
            self._unowned.setdefault((id(pending[0]), pending[1]), []).append(entry)

    # ---- routing an access to volumes and regions ----------------------------------

    def _access(self, seq: int, lba: int, blocks: int, data: bytes, write: bool,
                probe: bool = True) -> None:
        op = "write" if write else "read"
        claimed_end = lba + blocks
        # the work follows the payload, never the block count a CDB claims
        end = min(claimed_end, lba + -(-len(data) // SECTOR))
        position = lba
        if lba == 0 and self._sector_zero(seq, data[:SECTOR], op):
            position = 1  # reported as the partition table
        if probe:
            self._probe(lba, blocks, data)
        while position < end:
            for volume in self.volumes:  # _volume_at, inline: asked for every command
                if volume.start <= position < volume.end:
                    break
            else:
                volume = None
            if volume is not None:
                stop = min(end, volume.end)
                self._volume_access(volume, seq, position, stop, lba, data, op, write)
                position = stop
                continue
            unsupported = self._unsupported_at(position)
            malformed = self._malformed_at(position)
            starts = [v.start for v in self.volumes] + [s for s, _, _ in self.unsupported] + \
                [s for s, _, _ in self.malformed]
            nxt = min([s for s in starts if s > position] + [end])
            if unsupported is not None:
                nxt = min(nxt, unsupported[1] or end)
                self._emit(Activity(seq, None, op, "unsupported", None,
                                    (nxt - position) * SECTOR, position,
                                    (position - lba) * SECTOR, unsupported[2]))
            elif malformed is not None:
                start, stop_at, reason = malformed
                nxt = min(nxt, stop_at or end)
                if position == start:
                    self._emit(Activity(seq, None, op, "boot_sector", None, SECTOR, position,
                                        (position - lba) * SECTOR, f"malformed: {reason}"))
                    position += 1
                if position < nxt:
                    self._emit(Activity(seq, None, op, "unknown", None,
                                        (nxt - position) * SECTOR, position,
                                        (position - lba) * SECTOR,
                                        f"in the file system at LBA {start}, whose boot "
                                        "sector is malformed"))
            else:
                kind = "unknown" if not self.partition_table_seen and not self.volumes \
                    else "outside_volumes"
                for first, stop, label, detail in self.layout.label(
                        position, nxt, kind, {v.start for v in self.volumes}):
                    self._emit(Activity(seq, None, op, label, None, (stop - first) * SECTOR,
                                        first, (first - lba) * SECTOR, detail))
            position = nxt
        if position < end:
            position = end
        if position < claimed_end:
            self._emit(Activity(seq, None, op, "unknown", None, (claimed_end - position) * SECTOR,
                                position, (position - lba) * SECTOR,
                                f"{claimed_end - position} blocks past the {len(data)} bytes "
                                "captured: not captured, not attributed"))

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

    def _malformed_at(self, lba: int) -> tuple[int, int | None, str] | None:
        for start, end, reason in self.malformed:
            if lba >= start and (end is None or lba < end):
                return start, end, reason
        return None

    def _sector_zero(self, seq: int, sector: bytes, op: str) -> bool:
        """Learn from sector 0; True when it was a partition table (and reported)."""
        if len(sector) < SECTOR:
            return False
        found, entries = self._boot(0, sector)
        if isinstance(found, Volume):
            self._add_volume(found)
            return False
        if isinstance(found, str):
            self._add_unsupported(0, None, found)
            return False
        if isinstance(found, Malformed) and not entries:
            # a boot sector, not a partition table (some MBR code starts with a jump too)
            self._add_malformed(0, None, found.reason)
            return False
        if entries is not None:
            self.partition_table_seen = True
            self._emit(Activity(seq, None, op, "partition_table", None, SECTOR, 0, 0))
            # the table read now is the one that counts: no stale starts to probe
            self.expected, self._extent = {}, {}
            for ptype, first, count in entries:
                if first == 0:
                    self._note(f"a partition of type 0x{ptype:02x} starts at LBA 0, on the "
                               "partition table itself; not followed")
                    continue
                self.expected[first] = ptype
                self._extent[first] = first + count
                if ptype not in FAT_PARTITION_TYPES and ptype != 0xEE:
                    name = {0x83: "linux (ext2/3/4 or other)", 0x82: "linux swap",
                            0xAF: "hfs+"}.get(ptype, f"partition type 0x{ptype:02x}")
                    self._add_unsupported(first, first + count, name)
            return True
        if sector[510:512] == b"\x55\xaa":
            self._note("sector 0 ends in 55 AA but is neither a boot sector nor a partition "
                       "table (a partition entry's status is not 00 or 80)")
        return False

    def _probe(self, lba: int, blocks: int, data: bytes) -> None:
        """Boot sectors of expected partitions and ext2/3/4 superblocks, where they pass;
        the partitions of a GPT and other file systems' signatures (``partitions.py``)."""
        layout = self.layout
        quiet = layout.quiet(lba, len(data) // SECTOR)  # else something to learn or name
        if not quiet:
            table = lba == 0 and self.partition_table_seen and self._volume_at(0) is None \
                and self._unsupported_at(0) is None  # sector 0 was taken for a partition table
            for start in layout.observe(lba, data, table):
                self.expected.setdefault(start, GPT_PARTITION)
        end = lba + blocks
        expected = self.expected
        for start in list(expected) if expected else ():
            if lba <= start < end and len(data) >= (start - lba + 1) * SECTOR:
                sector = data[(start - lba) * SECTOR : (start - lba + 1) * SECTOR]
                found = self._boot(start, sector)[0]
                if isinstance(found, Volume):
                    self._add_volume(found)
                    del self.expected[start]
                elif isinstance(found, str):
                    self._add_unsupported(start, None, found)
                    del self.expected[start]
                elif isinstance(found, Malformed):
                    self._add_malformed(start, self._extent.get(start), found.reason)
                    del self.expected[start]
        for base in (0, *expected) if expected else (0,):
            sb = base + 2  # the ext superblock sits 1024 bytes into the volume
            if lba <= sb < end and len(data) >= (sb - lba) * SECTOR + 58:
                offset = (sb - lba) * SECTOR
                if data[offset + 56 : offset + 58] == b"\x53\xef" and \
                        self._volume_at(base) is None:
                    self._add_unsupported(base, None, "ext2/3/4")
        if quiet:
            return
        for start, stop, name in layout.detect(lba, data):  # named, with its extent
            if self._volume_at(start) is None:
                self.unsupported = [u for u in self.unsupported if u[0] != start]
                self._moved()
                self._add_unsupported(start, stop, name)

    def _boot(self, start: int, sector: bytes
              ) -> tuple[Volume | Malformed | str | None, list[tuple[int, int, int]] | None]:
        """``_fat_volume(start, sector)``, and the partition entries of sector 0 (None
        unless it ends in 55 AA and they can be a table).  A sector parsed at ``start``
        before is not parsed again: what it made then, it makes again.  A volume is made
        again only if adding it could change anything; else the volume already there at
        ``start`` is given (``_add_volume`` then returns at once, as with a new one)."""
        seen = self._boots.get(start)
        if seen is not None and seen[0] == sector:
            found = seen[1]
            if found is not _VOLUME:
                return found, seen[2]  # type: ignore[return-value]
            if self._inferred is None:
                for volume in self.volumes:
                    if volume.start == start:
                        return volume, seen[2]
        made = _fat_volume(start, sector)
        entries = _partition_entries(sector) if start == 0 and \
            sector[510:512] == b"\x55\xaa" else None
        if len(self._boots) >= MAX_FILESYSTEMS:
            self._boots = {}
        self._boots[start] = (bytes(sector), _VOLUME if isinstance(made, Volume) else made,
                              entries)
        return made, entries

    def _room(self, start: int) -> bool:
        """Whether one more file system can be tracked (a bounded number of them)."""
        if len(self.volumes) + len(self.unsupported) + len(self.malformed) < MAX_FILESYSTEMS:
            return True
        self._note(f"more than {MAX_FILESYSTEMS} file systems on the medium; the one at LBA "
                   f"{start} and later ones are not tracked")
        return False

    def _add_volume(self, volume: Volume) -> None:
        if self._inferred is not None and volume is not self._inferred:
            self.volumes.remove(self._inferred)  # a boot sector: the volume it describes
            self._inferred = None
            self._moved()
        if any(v.start == volume.start for v in self.volumes):
            return
        # a good boot sector written over a malformed one (a format) is the volume now
        self.malformed = [m for m in self.malformed if m[0] != volume.start]
        if not self._room(volume.start):
            return
        self.volumes.append(volume)
        self.volumes.sort(key=lambda v: v.start)
        self._moved()

    def _add_unsupported(self, start: int, end: int | None, name: str) -> None:
        if not any(s == start for s, _, _ in self.unsupported) and self._room(start):
            self.unsupported.append((start, end, name))
            self._moved()

    def _add_malformed(self, start: int, end: int | None, reason: str) -> None:
        if any(v.start == start for v in self.volumes) or \
                any(s == start for s, _, _ in self.malformed) or not self._room(start):
            return
        self.malformed.append((start, end, reason))
        self._moved()
        self._note(f"the boot sector at LBA {start} is malformed ({reason}); its file "
                   "system is not read")

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
            fat_end = volume.fat_end
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
        fat = volume.fat
        fat_start, fat_size = volume.fat_start, volume.fat_size
        for i in range(rel, nxt):  # nxt is within the payload: bounded by the bytes seen
            copy, within = divmod(i - fat_start, fat_size)
            if copy > 0 and within in fat:
                continue  # the first FAT is the one kept; others only fill gaps
            off = cmd_offset + (i - rel) * SECTOR
            if off + SECTOR > len(data):
                continue
            new = bytes(data[off : off + SECTOR])
            if fat.get(within) == new:
                continue  # read again, unchanged
            fat[within] = new
            volume.fat_changed(within)
            self._changed.add(volume)

    def _data_region(self, volume: Volume, seq: int, rel: int, rel_end: int, lba: int,
                     data: bytes, op: str, write: bool) -> int:
        spc = volume.spc
        first_dir_change: list[Directory] = []
        last: Activity | None = None
        while rel < rel_end:
            cluster = (rel - volume.data_start) // spc + 2
            within = (rel - volume.data_start) % spc
            nxt = min(rel_end, rel + spc - within)
            cmd_offset = (volume.start + rel - lba) * SECTOR
            length = (nxt - rel) * SECTOR
            owner = volume.owner(cluster)
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
                label = volume.metadata_label(cluster)
                if label is not None:
                    self._emit(Activity(seq, None, op, label, None, length, volume.start + rel,
                                        cmd_offset))
                else:
                    # nobody owns it yet: the window may bring its directory entry
                    if write:
                        self._keep(volume, cluster, within, data, cmd_offset, nxt - rel)
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
        known = directory.sectors
        if not known:
            return
        # runs of consecutive sectors seen, in order: the work is the sectors seen, not
        # the highest index (a contiguous directory's index comes from a length field)
        if volume.kind == "exfat":
            limit, parse = MAX_EXFAT_DIR_BYTES // SECTOR, _parse_exfat_dir
        else:
            limit, parse = MAX_FAT_DIR_ENTRIES * 32 // SECTOR, _parse_fat_dir
        indexes = sorted(known)
        if indexes[-1] >= limit:
            volume.note(f"{directory.node.path}: directory sectors past the spec's largest "
                        "directory are not read")
            indexes = [i for i in indexes if i < limit]
        entries: dict[int, Entry] = {}
        run: list[bytes] = []
        for k, index in enumerate(indexes):
            run.append(known[index])
            if k + 1 == len(indexes) or indexes[k + 1] != index + 1:
                first = index + 1 - len(run)
                entries.update(parse(b"".join(run), first * (SECTOR // 32), volume))
                run = []
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
                node.size = entry.size
                if node.first_cluster != entry.first_cluster:
                    self._refile_created(node, entry.first_cluster)
                    node.first_cluster = entry.first_cluster
                    if node.is_dir and node in volume.dirs and \
                            _nesting_problem(node) is not None:
                        volume.note(_nesting_problem(node) or "")
                        volume.dirs.pop(node, None)
                node.contiguous = entry.contiguous
                new_children[slot] = node
                continue
            node = Node(entry.name, directory.node, entry.is_dir, entry.first_cluster,
                        entry.size, entry.contiguous)
            new_children[slot] = node
            is_new = write and directory.parsed
            if entry.is_dir and node not in volume.dirs:
                problem = _nesting_problem(node)
                if problem is not None:
                    volume.note(problem)  # named, but its entries are not followed
                else:
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
        key_volume = id(volume)
        for key in [k for k in self._unowned if k[0] == key_volume]:
            owner = volume.owner(key[1])
            if owner is None:
                continue
            node, index = owner
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

    # ---- renames: a deletion and a creation of the same first cluster -------------------

    def _match_events(self, entry: list[Any]) -> None:
        """A deletion and a creation of the same first cluster are one rename or move.

        The created entry's cluster is read from its node now, not when it was
        written: an OS may write the new entry before it fills in the cluster (so
        creations are refiled when their node's cluster changes).  A link goes only
        from a node with no successor to a live node with no successor, so the links
        never loop; and each candidate is found by its cluster, not by a scan.
        """
        row, node = entry[1], entry[2]
        if row.operation not in ("created", "deleted") or not isinstance(node, Node):
            return
        cluster = node.first_cluster
        if row.operation == "deleted":
            other = _take(self._created, cluster, "created", lambda o: (
                o is not node and not o.deleted and o.successor is None and
                o.is_dir == node.is_dir and self._same_data(node, o)))
            if other is None:
                if cluster >= 2 and node.successor is None:
                    self._deleted.setdefault(cluster, []).append(entry)
                return
            self._created_at.pop(other[2], None)
            old, new, old_node, new_node = row, other[1], node, other[2]
        else:
            other = _take(self._deleted, cluster, "deleted", lambda o: (
                o is not node and o.successor is None and o.is_dir == node.is_dir and
                self._same_data(o, node)))
            if other is None:
                self._created_at[node] = (cluster, entry)
                if cluster >= 2:
                    self._created.setdefault(cluster, []).append(entry)
                return
            old, new, old_node, new_node = other[1], row, other[2], node
        assert old.path is not None and new.path is not None
        old_node.successor = new_node
        same_dir = old.path.rsplit("/", 1)[0] == new.path.rsplit("/", 1)[0]
        kept = other[1]  # the earlier row in the log carries the event
        kept.operation = "renamed" if same_dir else "moved"
        kept.detail = f"from {old.path}"
        kept.path = new.path
        kept.length = new_node.size
        row.kind = "merged"  # dropped when final

    def _volume_of(self, node: Node) -> Volume | None:
        """The volume whose root ``node`` hangs from (nesting is bounded by MAX_DEPTH)."""
        root = node
        for _ in range(MAX_DEPTH + 2):
            if root.parent is None:
                break
            root = root.parent
        return next((v for v in self.volumes if v.root is root), None)

    def _same_data(self, old: Node, new: Node) -> bool:
        """Whether a deleted entry and a created one can be one file renamed or moved: a
        rename changes directory entries alone, so the first cluster is never free in the
        FAT (the size may change: a file can be written to once moved).  A cluster freed
        and given to a new file, of the same name or not, is a deletion and a creation.
        A contiguous exFAT file has no FAT chain to show that: a rename copies its stream
        extension, so its size stays the same."""
        volume = self._volume_of(old)
        if volume is not None and volume.kind == "exfat" and not old.is_dir and \
                (old.contiguous or new.contiguous) and old.size != new.size:
            return False
        return volume is None or volume.fat_entry(old.first_cluster) != 0

    def _forget_freed(self, volume: Volume) -> None:
        """Deletions whose first cluster the FAT now shows free can no longer pair: the
        file is gone, and a later entry on that cluster is a new file."""
        for cluster in [c for c in self._deleted if volume.fat_entry(c) == 0]:
            entries = [e for e in self._deleted[cluster]
                       if self._volume_of(e[2]) is not volume]
            if entries:
                self._deleted[cluster] = entries
            else:
                del self._deleted[cluster]

    def _refile_created(self, node: Node, cluster: int) -> None:
        """A created node's cluster was filled in: file its creation under the new one."""
        filed = self._created_at.get(node)
        if filed is None:
            return
        old, entry = filed
        entries = self._created.get(old)
        if entries:
            entries[:] = [e for e in entries if e is not entry]
            if not entries:
                del self._created[old]
        self._created_at[node] = (cluster, entry)
        if cluster >= 2:
            self._created.setdefault(cluster, []).append(entry)

    def _unfile(self, row: Activity, pending: Any) -> None:
        """An event leaves the window: it can no longer pair."""
        if not isinstance(pending, Node) or row.operation not in ("created", "deleted"):
            return
        if row.operation == "created":
            filed = self._created_at.pop(pending, None)
            cluster, index = (filed[0] if filed else None), self._created
        else:
            cluster, index = pending.first_cluster, self._deleted
        if cluster is None or not index.get(cluster):
            return
        entries = index[cluster]
        entries[:] = [e for e in entries if e[1] is not row]
        if not entries:
            del index[cluster]

    # ---- making rows final --------------------------------------------------------------

    def _final(self, seq: int, row: Activity,
               pending: Node | tuple[Volume, int] | int | None) -> Activity:
        if row.kind == "event":
            self._unfile(row, pending)
        if row.kind == "unallocated" and isinstance(pending, tuple):
            self._unowned.pop((id(pending[0]), pending[1]), None)
        if row.kind == "data" and isinstance(pending, (Node, int)):
            size = pending.latest().size if isinstance(pending, Node) else pending
            if row.file_offset is not None and row.length is not None:
                _clip(row, size, row.file_offset, row.length)
        elif row.kind == "unallocated" and isinstance(pending, tuple):
            volume, cluster = pending
            owner = volume.owner(cluster)
            if owner is not None:
                node, index = owner
                offset = index * volume.cluster_bytes + (row.file_offset or 0)
                if node.is_dir:
                    row.path, row.kind, row.file_offset = node.path, "directory", None
                else:
                    row.path, row.kind, row.file_offset = node.path, "data", offset
                    _clip(row, node.size, offset, row.length or 0)
            else:
                fat = volume.fat_entry(cluster)
                row.kind = "unallocated" if fat == 0 else "unknown"
                row.file_offset = None
        return row


def _clip(row: Activity, size: int, offset: int, length: int) -> None:
    """Clip a data row at the file's ``size``: the part past it is slack, said in the
    detail (a cluster holds more than the file's last bytes)."""
    inside = max(0, min(length, size - offset))
    if inside < length:
        row.detail = f"{length - inside} bytes past the end of the file"
        if inside == 0:
            row.kind = "slack"
        else:
            row.length = inside


def _continues(last: Activity, row: Activity) -> bool:
    """Whether ``row`` continues ``last`` (of the same command) as one run: the same kind
    of the same path, the next blocks (and the next bytes of the file)."""
    return (last.kind == row.kind and last.path == row.path and
            last.operation == row.operation and row.kind != "event" and
            last.detail is None and last.length is not None and row.length is not None and
            last.lba is not None and row.lba is not None and
            last.lba + last.length // SECTOR == row.lba and
            (last.file_offset is None) == (row.file_offset is None) and
            (last.file_offset is None or last.file_offset + last.length == row.file_offset))


def _fields(row: Activity) -> tuple[Any, ...]:
    """A row's fields after ``scsi_seq``, as ``Activity`` takes them."""
    return (row.path, row.operation, row.kind, row.file_offset, row.length, row.lba,
            row.command_offset, row.detail)


def _take(index: dict[int, list[list[Any]]], cluster: int, operation: str,
          accept: Any) -> list[Any] | None:
    """The latest event filed under ``cluster`` still ``operation`` that ``accept`` takes,
    removed from the index; events that can never pair again are dropped on the way."""
    entries = index.get(cluster) if cluster >= 2 else None
    if not entries:
        return None
    for k in range(len(entries) - 1, -1, -1):
        other = entries[k]
        node = other[2]
        if other[1].kind != "event" or other[1].operation != operation or \
                node.successor is not None or (operation == "created" and node.deleted):
            del entries[k]
            continue
        if accept(node):
            del entries[k]
            if not entries:
                del index[cluster]
            return other
    return None


def _nesting_problem(node: Node) -> str | None:
    """Why a directory's entries cannot be followed: it is its own ancestor (a loop of
    directories) or it is nested past ``MAX_DEPTH``; None if it can."""
    if node.first_cluster < 2:
        return None  # no cluster yet (or the FAT12/16 root): nothing to follow
    depth = 0
    parent = node.parent
    while parent is not None:
        if parent.first_cluster == node.first_cluster:
            return (f"{node.path}: a directory whose first cluster {node.first_cluster} is "
                    "an enclosing directory's; its entries are not followed")
        depth += 1
        if depth >= MAX_DEPTH:
            return (f"{node.path}: directories nested deeper than {MAX_DEPTH} levels are "
                    "not followed")
        parent = parent.parent
    return None


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
            volume.add_metadata(label, cluster, length)  # a range, clamped: not a loop
        elif kind == 0x85:
            secondary = entry[1]
            if i + secondary >= n:
                i += 1  # the rest of the set was not seen
                continue
            if not 2 <= secondary <= 18:  # exFAT spec §7.4: a stream and 1..17 names
                volume.note(f"a file entry set with SecondaryCount {secondary} (2..18): "
                            "not read")
                i += 1
                continue
            stream = blob[(i + 1) * 32 : (i + 2) * 32]
            if stream[0] != 0xC0:
                i += 1
                continue
            checksum = struct.unpack_from("<H", entry, 2)[0]
            if exfat_entry_set_checksum(blob[i * 32 : (i + 1 + secondary) * 32]) != checksum:
                volume.note("a file entry set whose SetChecksum does not match: not read")
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
