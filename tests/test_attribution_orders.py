"""Attribution whatever order the data, the FAT and the directory entry reach the disk.

A synthetic FAT16 volume (the geometry of ``test_shadow_robustness.fat_boot``) is driven
through the Attributor directly: files are created with their data, FAT and directory
writes in any order, deleted (directory and FAT in either order), and their clusters
reused by later files; the window is kept tiny so that most rows outlive it.
"""

from __future__ import annotations

import random
import struct
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from usbtrace.fs.shadow import Activity, Attributor

from .test_shadow_robustness import EXFAT, exfat_boot, exfat_file, exfat_lba, fat_boot, short_entry

READ, WRITE = 0x28, 0x2A
FAT_LBA, ROOT_LBA, DATA_LBA, SPC = 4, 260, 292, 4
CLUSTER = SPC * 512
POOL = list(range(2, 26))  # the clusters files are given, freed and reused


def cluster_lba(cluster: int) -> int:
    return DATA_LBA + (cluster - 2) * SPC


class Disk:
    """Feeds an Attributor and keeps every command's payload, to rebuild files from rows."""

    def __init__(self, window: int) -> None:
        self.attributor = Attributor(window=window)
        self.payloads: dict[int, bytes] = {}
        self.rows: list[Activity] = []
        self.seq = 0
        self.fat: dict[int, int] = {}
        self.root: dict[int, bytes] = {}  # slot -> entry

    def command(self, opcode: int, lba: int, data: bytes) -> None:
        self.seq += 1
        self.payloads[self.seq] = data
        self.rows += self.attributor.feed(self.seq, opcode, lba, len(data) // 512, data, "good")

    def fat_sector(self) -> bytes:
        sector = bytearray(512)
        struct.pack_into("<HH", sector, 0, 0xFFF8, 0xFFFF)
        for cluster, value in self.fat.items():
            struct.pack_into("<H", sector, cluster * 2, value)
        return bytes(sector)

    def root_sector(self) -> bytes:
        sector = bytearray(512)
        for slot, entry in self.root.items():
            sector[slot * 32 : slot * 32 + 32] = entry
        return bytes(sector)

    def rebuild(self) -> dict[str, bytearray]:
        files: dict[str, bytearray] = defaultdict(bytearray)
        for row in sorted(self.rows, key=lambda r: r.scsi_seq):
            if row.kind != "data" or row.operation != "write":
                continue
            assert row.path is not None and row.file_offset is not None and row.length
            assert row.command_offset is not None
            data = self.payloads[row.scsi_seq][row.command_offset :
                                               row.command_offset + row.length]
            target = files[row.path]
            target.extend(bytes(max(0, row.file_offset + row.length - len(target))))
            target[row.file_offset : row.file_offset + row.length] = data
        return files


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[str, list[object]]]]:
    """A window and a list of steps: ("create", [chain, size, order]) or ("delete", [index,
    order]); orders are permutations of the writes each step makes."""
    window = draw(st.integers(0, 12))
    free = list(POOL)
    live: list[int] = []
    chains: list[list[int]] = []
    steps: list[tuple[str, list[object]]] = []
    for _ in range(draw(st.integers(1, 8))):
        if live and draw(st.booleans()):
            index = draw(st.sampled_from(live))
            live.remove(index)
            steps.append(("delete", [index, draw(st.permutations(["dir", "fat"]))]))
            free += chains[index]
            continue
        if not free:
            continue
        count = draw(st.integers(1, min(5, len(free))))
        chain = draw(st.permutations(free))[:count]
        for cluster in chain:
            free.remove(cluster)
        size = draw(st.integers((count - 1) * CLUSTER + 1, count * CLUSTER))
        writes = ["dir", "fat"] + [f"data{k}" for k in range(count)]
        steps.append(("create", [chain, size, draw(st.permutations(writes))]))
        live.append(len(chains))
        chains.append(chain)
    return window, steps


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_every_byte_goes_to_its_file_in_any_write_order(
        scenario: tuple[int, list[tuple[str, list[object]]]]) -> None:
    window, steps = scenario
    disk = Disk(window)
    disk.command(READ, 0, fat_boot())
    disk.command(READ, FAT_LBA, disk.fat_sector())
    disk.command(READ, ROOT_LBA, disk.root_sector())
    contents: dict[str, bytes] = {}
    chains: list[list[int]] = []
    for kind, args in steps:
        if kind == "create":
            chain, size, order = args
            assert isinstance(chain, list) and isinstance(size, int) and isinstance(order, list)
            index = len(chains)
            chains.append(chain)
            name = f"F{index}.BIN"
            content = random.Random(index).randbytes(size)
            contents[f"/{name}"] = content
            for k, cluster in enumerate(chain):
                disk.fat[cluster] = chain[k + 1] if k + 1 < len(chain) else 0xFFFF
            for write in order:
                if write == "dir":
                    disk.root[index] = short_entry(f"F{index}".encode().ljust(8) + b"BIN",
                                                   chain[0], size)
                    disk.command(WRITE, ROOT_LBA, disk.root_sector())
                elif write == "fat":
                    disk.command(WRITE, FAT_LBA, disk.fat_sector())
                else:
                    k = int(write[4:])
                    piece = content[k * CLUSTER : (k + 1) * CLUSTER].ljust(CLUSTER, b"\0")
                    disk.command(WRITE, cluster_lba(chain[k]), piece)
        else:
            index, order = args
            assert isinstance(index, int) and isinstance(order, list)
            for cluster in chains[index]:
                disk.fat.pop(cluster, None)
            for write in order:
                if write == "dir":
                    disk.root[index] = b"\xe5" + disk.root[index][1:]
                    disk.command(WRITE, ROOT_LBA, disk.root_sector())
                else:
                    disk.command(WRITE, FAT_LBA, disk.fat_sector())
    disk.rows += disk.attributor.flush()
    written = disk.rebuild()
    assert set(written) == set(contents)
    for path, content in contents.items():
        assert bytes(written[path]) == content, path
    data_region = [r for r in disk.rows if r.lba is not None and r.lba >= DATA_LBA]
    assert all(r.kind in ("data", "slack") for r in data_region), \
        [(r.kind, r.lba, r.detail) for r in data_region if r.kind not in ("data", "slack")]


EXFAT_ROOT = exfat_lba(EXFAT["root"])
EXFAT_CLUSTER = EXFAT["spc"] * 512
SLOTS = 8  # places of four clusters each, from cluster 10: files are contiguous (NoFatChain)


@st.composite
def exfat_scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[str, list[object]]]]:
    """Like ``scenarios``, for contiguous exFAT files: a file takes 1..4 clusters at the
    start of a free place; a deleted file's place is reused."""
    window = draw(st.integers(0, 12))
    free = list(range(SLOTS))
    live: list[int] = []
    places: list[int] = []
    steps: list[tuple[str, list[object]]] = []
    for _ in range(draw(st.integers(1, 8))):
        if live and draw(st.booleans()):
            index = draw(st.sampled_from(live))
            live.remove(index)
            free.append(places[index])
            steps.append(("delete", [index]))
            continue
        if not free:
            continue
        place = draw(st.sampled_from(free))
        free.remove(place)
        count = draw(st.integers(1, 4))
        size = draw(st.integers((count - 1) * EXFAT_CLUSTER + 1, count * EXFAT_CLUSTER))
        order = draw(st.permutations(["dir"] + [f"data{k}" for k in range(count)]))
        steps.append(("create", [10 + 4 * place, size, order]))
        live.append(len(places))
        places.append(place)
    return window, steps


@settings(max_examples=200, deadline=None)
@given(exfat_scenarios())
def test_exfat_every_byte_goes_to_its_file_in_any_write_order(
        scenario: tuple[int, list[tuple[str, list[object]]]]) -> None:
    window, steps = scenario
    disk = Disk(window)
    entries: dict[int, bytes] = {}

    def root() -> bytes:
        return b"".join(entries.get(k, bytes(96)) for k in range(16)).ljust(4096, b"\0")

    disk.command(READ, 0, exfat_boot())
    disk.command(READ, EXFAT_ROOT, root())
    contents: dict[str, bytes] = {}
    for kind, args in steps:
        if kind == "delete":
            index = args[0]
            assert isinstance(index, int)
            entry = bytearray(entries[index])
            for at in range(0, len(entry), 32):
                entry[at] &= 0x7F  # InUse cleared (exFAT spec §6.2.1.1)
            entries[index] = bytes(entry)
            disk.command(WRITE, EXFAT_ROOT, root())
            continue
        first, size, order = args
        assert isinstance(first, int) and isinstance(size, int) and isinstance(order, list)
        index = len(entries)
        name = f"f{index}.bin"
        content = random.Random(index).randbytes(size)
        contents[f"/{name}"] = content
        for write in order:
            if write == "dir":
                entries[index] = exfat_file(name, first, size).ljust(96, b"\0")
                disk.command(WRITE, EXFAT_ROOT, root())
            else:
                k = int(write[4:])
                piece = content[k * EXFAT_CLUSTER : (k + 1) * EXFAT_CLUSTER]
                disk.command(WRITE, exfat_lba(first + k), piece.ljust(EXFAT_CLUSTER, b"\0"))
    disk.rows += disk.attributor.flush()
    written = disk.rebuild()
    assert set(written) == set(contents)
    for path, content in contents.items():
        assert bytes(written[path]) == content, path
    data_region = [r for r in disk.rows if r.lba is not None and r.lba >= exfat_lba(10)]
    assert all(r.kind in ("data", "slack") for r in data_region), \
        [(r.kind, r.lba, r.detail) for r in data_region if r.kind not in ("data", "slack")]


def test_writes_that_wait_too_long_go_out_unresolved_and_say_so(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The rows waiting past the window are bounded: the oldest go out with a detail and a
    session note; the rest still take their owner; what is left at the end says so."""
    from usbtrace.fs import shadow

    monkeypatch.setattr(shadow, "MAX_PARKED", 2)
    disk = Disk(window=0)
    disk.command(READ, 0, fat_boot())
    disk.command(READ, FAT_LBA, disk.fat_sector())
    disk.command(READ, ROOT_LBA, disk.root_sector())
    for cluster in range(2, 7):  # a file of 5 clusters, data first
        disk.command(WRITE, cluster_lba(cluster), bytes([cluster]) * CLUSTER)
    disk.fat.update({2: 3, 3: 4, 4: 5, 5: 6, 6: 0xFFFF})
    disk.command(WRITE, FAT_LBA, disk.fat_sector())
    disk.root[0] = short_entry(b"BIG     BIN", 2, 5 * CLUSTER)
    disk.command(WRITE, ROOT_LBA, disk.root_sector())
    disk.command(WRITE, cluster_lba(9), b"z" * CLUSTER)  # a cluster no file ever takes
    disk.rows += disk.attributor.flush()
    by_lba = {r.lba: r for r in disk.rows if r.operation == "write" and r.lba is not None
              and r.lba >= DATA_LBA}
    dropped = [by_lba[cluster_lba(c)] for c in (2, 3, 4)]
    assert all(r.kind == "unallocated" and r.path is None and "not resolved" in
               (r.detail or "") for r in dropped), dropped
    assert [(by_lba[cluster_lba(c)].path, by_lba[cluster_lba(c)].file_offset)
            for c in (5, 6)] == [("/BIG.BIN", 3 * CLUSTER), ("/BIG.BIN", 4 * CLUSTER)]
    leftover = by_lba[cluster_lba(9)]
    assert leftover.kind == "unallocated" and "end of the capture" in (leftover.detail or "")
    assert any("waited for the metadata" in note for note in disk.attributor.notes())
