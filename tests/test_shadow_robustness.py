"""The shadow volume on malformed and hostile metadata: it never hangs, never allocates
from a length field, and says what it could not know.

Each scenario that could hang or exhaust memory on a regression runs in a child process
with a time limit, an address-space limit and a measured peak of Python allocations, so a
regression fails the test instead of hanging or swapping the suite.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usbtrace.fs.layouts import exfat_entry_set_checksum
from usbtrace.fs.shadow import (
    MAX_DEPTH,
    Activity,
    Attributor,
    Malformed,
    Node,
    Volume,
    _fat_volume,
)

from .conftest import shared_capture

ROOT = Path(__file__).resolve().parent.parent
SECTOR = 512

_CHILD = """
import json, resource, sys, tracemalloc
from tests import test_shadow_robustness as t
def vm() -> int:
    for line in open('/proc/self/status'):
        if line.startswith('VmSize:'):
            return int(line.split()[1]) * 1024
    return 0
limit = vm() + int(sys.argv[2]) * 2
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
cpu = int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))  # SIGXCPU past the limit
tracemalloc.start()
result = getattr(t, sys.argv[1])(*json.loads(sys.argv[3]))
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"result": result, "peak": peak}))
"""


def bounded(scenario: str, *args: Any, seconds: int = 20, megabytes: int = 100) -> Any:
    """Run ``scenario(*args)`` from this module in a child; fail on an error, on more than
    ``seconds`` of CPU time, or on a peak of Python allocations over ``megabytes``.
    Returns the scenario's result.  The limit is CPU time, as the fuzzer's is: on a
    loaded machine a child waits for a core, and waiting is not work.  A child that
    blocks without spending CPU is still stopped, after ten times the limit."""
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, scenario, str(megabytes << 20),
                               json.dumps(args), str(seconds)], cwd=ROOT, capture_output=True,
                              text=True, timeout=10 * seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{scenario} did not finish in {10 * seconds} s of wall time")
    if proc.returncode == -signal.SIGXCPU:
        pytest.fail(f"{scenario} took more than {seconds} s of CPU time")
    assert proc.returncode == 0, f"{scenario} failed:\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["peak"] < megabytes << 20, f"{scenario} peaked at {out['peak'] >> 20} MiB"
    return out["result"]


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """In-process guard for pure-Python loops: a hang becomes a failure."""
    def expired(*_: Any) -> None:
        raise TimeoutError(f"did not finish in {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- sectors a test can build ------------------------------------------------------------

def fat_boot(bps: int = 512, spc: int = 4, reserved: int = 4, nfats: int = 2,
             root_entries: int = 512, tot16: int = 0, tot32: int = 131072, fatsz16: int = 128,
             fatsz32: int = 0, root_cluster: int = 2, fsinfo: int = 1, backup: int = 6,
             media: int = 0xF8) -> bytes:
    """A FAT boot sector (BPB per Microsoft's FAT spec §3), one sector of ``bps`` bytes."""
    sector = bytearray(max(bps, SECTOR))
    sector[0:3] = b"\xeb\x3c\x90"
    sector[3:11] = b"MSWIN4.1"
    struct.pack_into("<HBHBHHBHHHII", sector, 11, bps, spc, reserved, nfats, root_entries,
                     tot16, media, fatsz16, 32, 8, 0, tot32)
    if fatsz32:
        struct.pack_into("<IHHIHH", sector, 36, fatsz32, 0, 0, root_cluster, fsinfo, backup)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


# the 64 MiB FAT16 volume of the shared QEMU capture: reserved 4, FATs at 4 and 132,
# root directory 260..291, data from 292, 4 sectors a cluster
FAT16 = dict(reserved=4, fat_start=4, root=260, data=292, spc=4)


def fat16_lba(cluster: int) -> int:
    return FAT16["data"] + (cluster - 2) * FAT16["spc"]


def short_entry(name: bytes, cluster: int, size: int, attr: int = 0x20) -> bytes:
    """A FAT 8.3 directory entry (FAT spec §6)."""
    return struct.pack("<11sBBBHHHHHHHI", name.ljust(11), attr, 0, 0, 0, 0, 0, cluster >> 16,
                       0, 0, cluster & 0xFFFF, size)


def fat16_sector(entries: dict[int, int]) -> bytes:
    """A FAT16 FAT sector (the first) with the given cluster -> next entries."""
    sector = bytearray(SECTOR)
    struct.pack_into("<HH", sector, 0, 0xFFF8, 0xFFFF)
    for cluster, value in entries.items():
        struct.pack_into("<H", sector, cluster * 2, value)
    return bytes(sector)


def exfat_boot(bps_shift: int = 9, spc_shift: int = 3, fat_offset: int = 128,
               fat_length: int = 128, heap: int = 256, clusters: int = 16000, root: int = 4,
               volume_length: int | None = None, nfats: int = 1) -> bytes:
    """An exFAT main boot sector (exFAT spec §3.1)."""
    sector = bytearray(1 << bps_shift)
    sector[0:3] = b"\xeb\x76\x90"
    sector[3:11] = b"EXFAT   "
    length = volume_length if volume_length is not None else heap + (clusters << spc_shift)
    struct.pack_into("<QQIIIII", sector, 64, 0, length, fat_offset, fat_length, heap,
                     clusters, root)
    struct.pack_into("<IHH", sector, 100, 0x1234, 0x0100, 0)
    sector[108], sector[109], sector[110] = bps_shift, spc_shift, nfats
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


EXFAT = dict(heap=256, spc=8, root=4)


def exfat_lba(cluster: int) -> int:
    return EXFAT["heap"] + (cluster - 2) * EXFAT["spc"]


def exfat_metadata_entry(kind: int, cluster: int, length: int) -> bytes:
    """An allocation bitmap (0x81) or up-case table (0x82) entry (exFAT spec §7.1, §7.2)."""
    entry = bytearray(32)
    entry[0] = kind
    struct.pack_into("<IQ", entry, 20, cluster, length)
    return bytes(entry)


def exfat_file(name: str, cluster: int, length: int, contiguous: bool = True,
               directory: bool = False) -> bytes:
    """A file entry set: file, stream extension, file names (exFAT spec §7.4, §7.6, §7.7)."""
    encoded = name.encode("utf-16-le")
    parts = [encoded[i : i + 30] for i in range(0, len(encoded), 30)] or [b""]
    file_entry = bytearray(32)
    file_entry[0], file_entry[1] = 0x85, 1 + len(parts)
    struct.pack_into("<H", file_entry, 4, 0x10 if directory else 0x20)
    stream = bytearray(32)
    stream[0], stream[1], stream[3] = 0xC0, 0x01 | (0x02 if contiguous else 0), len(name)
    struct.pack_into("<QIIQ", stream, 8, length, 0, cluster, length)
    names = [bytes([0xC1, 0]) + part.ljust(30, b"\0") for part in parts]
    entry_set = bytes(file_entry) + bytes(stream) + b"".join(names)
    struct.pack_into("<H", file_entry, 2, exfat_entry_set_checksum(entry_set))
    return bytes(file_entry) + entry_set[32:]


def feed_all(a: Attributor, commands: list[tuple[int, int, int, bytes]]) -> list[Activity]:
    """Feed (opcode, lba, blocks, data) commands in order; every row, flushed."""
    rows: list[Activity] = []
    for seq, (opcode, lba, blocks, data) in enumerate(commands, 1):
        rows += a.feed(seq, opcode, lba, blocks, data, "good")
    return rows + a.flush()


def kinds_at(rows: list[Activity], lba: int) -> list[tuple[str, str | None]]:
    return [(r.kind, r.path) for r in rows if r.lba == lba]


# ---- scenarios run in a child process ----------------------------------------------------

def scenario_rename_cycle_capture(capture: str) -> list[list[Any]]:
    """The shared QEMU capture with one WRITE(10)'s LBA changed from 508 to 256: the
    write lands on the root directory, so every name is deleted and created again."""
    from usbtrace.importing import import_capture
    from usbtrace.store.database import Database

    data = Path(capture).read_bytes()
    cdb = bytes.fromhex("2a00000001fc0000f000")  # WRITE(10) LBA 508, 240 blocks
    assert data.count(cdb) == 1
    mutated = data.replace(cdb, bytes.fromhex("2a0000000100" "0000f000"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.pcap"
        path.write_bytes(mutated)
        import_capture(Database(Path(tmp) / "m.db"), path)
        conn = sqlite3.connect(Path(tmp) / "m.db")
        rows = conn.execute("SELECT operation, path, detail FROM file_activity "
                            "WHERE kind = 'event' AND path NOT LIKE '%?%' ORDER BY id").fetchall()
        conn.close()
    return [list(r) for r in rows]


def scenario_exfat_bitmap_huge_length(length: int) -> list[Any]:
    a = Attributor(window=0)
    root = exfat_metadata_entry(0x81, 2, length) + exfat_metadata_entry(0x82, 6, length) + \
        exfat_file("a.txt", 100, 100, contiguous=True)
    rows = feed_all(a, [(0x28, 0, 1, exfat_boot()),
                        (0x28, exfat_lba(EXFAT["root"]), 1, root.ljust(SECTOR, b"\0")),
                        (0x28, exfat_lba(2), 1, bytes(SECTOR)),
                        (0x28, exfat_lba(6), 1, bytes(SECTOR)),
                        (0x28, exfat_lba(9000), 1, bytes(SECTOR))])
    return [kinds_at(rows, exfat_lba(2)), kinds_at(rows, exfat_lba(6)),
            kinds_at(rows, exfat_lba(9000)), a.notes()]


def scenario_exfat_contiguous_huge_length(length: int) -> list[Any]:
    a = Attributor(window=0)
    root = exfat_file("big.bin", 10, length, contiguous=True)
    rows = feed_all(a, [(0x28, 0, 1, exfat_boot()),
                        (0x28, exfat_lba(EXFAT["root"]), 1, root.ljust(SECTOR, b"\0")),
                        (0x28, exfat_lba(10), 1, bytes(SECTOR)),
                        (0x28, exfat_lba(15000), 1, bytes(SECTOR))])
    return [kinds_at(rows, exfat_lba(10)), kinds_at(rows, exfat_lba(15000)), a.notes()]


def scenario_boot_sector_only(sector_hex: str) -> list[Any]:
    a = Attributor(window=0)
    rows = feed_all(a, [(0x28, 0, len(sector_hex) // 2 // SECTOR, bytes.fromhex(sector_hex))])
    return [[r.kind, r.detail] for r in rows]


def scenario_read16_huge(blocks: int) -> list[Any]:
    a = Attributor(window=0)
    root = short_entry(b"FILE    BIN", 3, 4096)
    rows = feed_all(a, [(0x28, 0, 1, fat_boot()),
                        (0x28, FAT16["fat_start"], 1, fat16_sector({3: 4, 4: 0xFFFF})),
                        (0x28, FAT16["root"], 1, root.ljust(SECTOR, b"\0")),
                        (0x88, fat16_lba(3), blocks, bytes(4096))])
    return [[r.kind, r.path, r.file_offset, r.length, r.lba, r.detail] for r in rows
            if r.lba is not None and r.lba >= fat16_lba(3)]


# ---- the findings, one test each -----------------------------------------------------------

def test_rename_matching_cycle_from_one_changed_lba_does_not_hang() -> None:
    """Finding: one changed LBA byte in a WRITE of the QEMU capture made Node.latest()
    loop for ever (a deletion matched the creation of a node already renamed)."""
    capture = shared_capture("linux-qemu-fat16-xhci.usbmon.pcap")
    events = bounded("scenario_rename_cycle_capture", str(capture), seconds=30,
                     megabytes=400)
    # the run still reads as it happened after the damage: the rename and the move
    assert ["renamed", "/big-renamed.bin", "from /big.bin"] in events
    assert ["moved", "/docs/nested-moved.txt", "from /docs/sub/nested.txt"] in events


def test_node_latest_survives_a_cycle() -> None:
    a, b = Node("a", None, False, 5, 1), Node("b", None, False, 5, 1)
    a.successor, b.successor = b, a
    with time_limit(5):
        assert a.latest() in (a, b)


def fat16_root(*entries: bytes) -> bytes:
    return b"".join(entries).ljust(SECTOR, b"\0")


def test_a_deletion_never_pairs_with_a_creation_already_renamed() -> None:
    """The shape of the cycle, on sectors: README created, the root overwritten (all
    deleted), README created again (a rename of the first), then README deleted: that
    deletion must not pair with the first creation, whose node is gone."""
    a = Attributor()
    readme = short_entry(b"README  TXT", 5, 1024)
    junk = bytes([0x41] * 11) + bytes(21)
    commands = [(0x28, 0, 1, fat_boot()), (0x28, FAT16["root"], 1, fat16_root()),
                (0x2A, FAT16["root"], 1, fat16_root(readme)),
                (0x2A, FAT16["root"], 1, fat16_root(junk)),
                (0x2A, FAT16["root"], 1, fat16_root(readme)),
                (0x2A, fat16_lba(5), 2, b"x" * 1024),
                (0x2A, FAT16["root"], 1, fat16_root())]
    with time_limit(5):
        rows = feed_all(a, commands)
    assert [(r.kind, r.path, r.length) for r in rows if r.lba == fat16_lba(5)] == \
        [("data", "/README.TXT", 1024)]
    deleted = [r for r in rows if r.operation == "deleted" and r.path == "/README.TXT"]
    assert deleted, [(r.operation, r.path) for r in rows if r.kind == "event"]


def test_exfat_bitmap_and_upcase_with_huge_data_length() -> None:
    """Finding: a bitmap/up-case entry with a huge DataLength looped ~2^51 times."""
    bitmap, upcase, far, notes = bounded("scenario_exfat_bitmap_huge_length", (1 << 64) - 1,
                                         seconds=20)
    assert bitmap == [["allocation_bitmap", None]]
    assert upcase == [["upcase_table", None]]
    # clamped to the sizes the spec allows: a cluster far past them is nobody's
    assert far and far[0][0] != "allocation_bitmap" and far[0][0] != "upcase_table"
    assert any("allocation bitmap" in n for n in notes)


def test_exfat_contiguous_file_with_huge_size() -> None:
    """Finding: a NoFatChain file with a huge DataLength made Volume.chain() allocate
    a list sized by that length."""
    first, inside, notes = bounded("scenario_exfat_contiguous_huge_length", (1 << 64) - 1,
                                   seconds=20)
    assert first == [["data", "/big.bin"]]
    assert inside == [["data", "/big.bin"]]  # the run reaches the end of the heap, no further
    assert any("/big.bin" in n for n in notes)


def test_bpb_claiming_a_512_mib_fat_allocates_nothing_for_it() -> None:
    """Finding: a BPB that claims a 512 MiB FAT allocated it from a 964-byte capture."""
    fatsz = 1 << 20  # sectors: 512 MiB of FAT, consistent with 2^27 - 2 one-sector clusters
    boot = fat_boot(spc=1, reserved=32, root_entries=0, tot32=32 + 2 * fatsz + (1 << 27) - 2,
                    fatsz16=0, fatsz32=fatsz)
    rows = bounded("scenario_boot_sector_only", boot.hex(), seconds=20, megabytes=20)
    assert rows == [["boot_sector", None]]


def test_fat_size_of_a_4096_byte_sector_volume_is_not_multiplied_twice() -> None:
    """Finding: the FAT size was multiplied by the sector size twice (2 GiB here)."""
    boot = fat_boot(bps=4096, spc=1, reserved=1, nfats=2, root_entries=128,
                    tot32=1 + 2 * 0xFFFF + 1 + 60000,
                    fatsz16=0xFFFF)
    boot = boot[:SECTOR] + bytes(4096 - SECTOR)
    rows = bounded("scenario_boot_sector_only", boot.hex(), seconds=20, megabytes=20)
    assert rows[0] == ["boot_sector", None]


def test_read16_of_0xffffffff_blocks_costs_the_bytes_captured() -> None:
    """Finding: a READ(16) of 0xFFFFFFFF blocks looped once per claimed cluster."""
    rows = bounded("scenario_read16_huge", 0xFFFFFFFF, seconds=20)
    data = [r for r in rows if r[0] == "data"]
    assert data == [["data", "/FILE.BIN", 0, 4096, fat16_lba(3), None]]
    tail = [r for r in rows if r[0] != "data"]
    assert len(tail) == 1 and tail[0][0] == "unknown" and tail[0][4] == fat16_lba(3) + 8
    assert tail[0][3] == (0xFFFFFFFF - 8) * SECTOR and "not captured" in tail[0][5]


# ---- the rest of the class: every count and number on the disk is bounded ------------------

def test_a_malformed_boot_sector_is_named_not_read() -> None:
    a = Attributor(window=0)
    rows = feed_all(a, [(0x28, 0, 1, fat_boot(spc=3)), (0x28, 1000, 2, bytes(1024))])
    assert rows[0].kind == "boot_sector" and rows[0].detail is not None and \
        "malformed" in rows[0].detail and "BPB_SecPerClus 3" in rows[0].detail
    assert [(r.kind, r.path) for r in rows[1:]] == [("unknown", None)]
    assert "malformed" in (rows[1].detail or "")
    assert any("LBA 0 is malformed" in n for n in a.notes())
    assert not a.volumes


@pytest.mark.parametrize("changes, reason", [
    (dict(reserved=0), "BPB_RsvdSecCnt is 0"),
    (dict(nfats=0), "BPB_NumFATs is 0"),
    (dict(media=0x12), "BPB_Media"),
    (dict(fatsz16=0), "no FAT size"),
    (dict(tot32=0), "no sector count"),
    (dict(tot32=200), "fill its"),
    (dict(fatsz16=8), "cannot hold"),
    (dict(root_entries=0), "BPB_RootEntCnt is 0"),
    (dict(bps=4096, spc=128), "at most 64 KiB"),
])
def test_bpb_rules_of_the_fat_spec(changes: dict[str, int], reason: str) -> None:
    found = _fat_volume(0, fat_boot(**changes)[:SECTOR])
    assert isinstance(found, Malformed) and reason in found.reason, found


def test_fat32_bpb_rules() -> None:
    good = dict(spc=8, reserved=32, root_entries=0, fatsz16=0, fatsz32=1024,
                tot32=32 + 2048 + 8 * 130000)
    volume = _fat_volume(0, fat_boot(**good))
    assert isinstance(volume, Volume) and volume.kind == "fat32" and volume.fsinfo == 1
    for changes, reason in ((dict(root_cluster=0), "BPB_RootClus"),
                            (dict(root_entries=512), "is not 0")):
        found = _fat_volume(0, fat_boot(**{**good, **changes}))
        assert isinstance(found, Malformed) and reason in found.reason, found
    # an FSInfo pointer outside the reserved region is no label, not a volume's end
    volume = _fat_volume(0, fat_boot(**{**good, "fsinfo": 0xFFFF, "backup": 500}))
    assert isinstance(volume, Volume) and volume.fsinfo is None and volume.backup_boot is None


@pytest.mark.parametrize("changes, reason", [
    (dict(bps_shift=13), "BytesPerSectorShift"),
    (dict(spc_shift=17), "SectorsPerClusterShift"),
    (dict(nfats=3), "NumberOfFats"),
    (dict(fat_offset=8), "boot region"),
    (dict(fat_length=2), "cannot hold"),
    (dict(heap=200), "inside the FAT region"),
    (dict(volume_length=1000), "VolumeLength"),
    (dict(root=20000), "FirstClusterOfRootDirectory"),
    (dict(clusters=0), "ClusterCount"),
])
def test_exfat_boot_sector_rules(changes: dict[str, int], reason: str) -> None:
    found = _fat_volume(0, exfat_boot(**changes)[:SECTOR])
    assert isinstance(found, Malformed) and reason in found.reason, found
    assert isinstance(_fat_volume(0, exfat_boot()), Volume)


def mbr(*entries: tuple[int, int, int], code: bytes = b"\x33\xc0") -> bytes:
    sector = bytearray(SECTOR)
    sector[: len(code)] = code
    for i, (ptype, first, count) in enumerate(entries):
        sector[446 + 16 * i : 462 + 16 * i] = struct.pack("<B3sB3sII", 0, b"", ptype, b"",
                                                          first, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def test_an_mbr_that_starts_with_a_jump_is_still_a_partition_table() -> None:
    """Boot code may start EB xx 90 with a sector size where a BPB would be; the valid
    partition entries say it is a table, and the partition's volume is read."""
    code = b"\xeb\x63\x90" + bytes(8) + struct.pack("<HB", 512, 3)  # SecPerClus 3: no BPB
    a = Attributor(window=0)
    rows = feed_all(a, [(0x28, 0, 1, mbr((0x06, 2048, 131072), code=code)),
                        (0x28, 2048, 1, fat_boot())])
    assert [r.kind for r in rows] == ["partition_table", "boot_sector"]
    assert [v.start for v in a.volumes] == [2048]


def test_partition_entries_outside_the_disk_or_on_the_table() -> None:
    a = Attributor(window=0)
    rows = feed_all(a, [(0x28, 0, 1, mbr((0x06, 0, 100), (0x83, 0xFFFFFFF0, 0xFFFFFFFF))),
                        (0x28, 100, 1, bytes(SECTOR))])
    assert rows[0].kind == "partition_table"
    assert any("starts at LBA 0" in n for n in a.notes())
    assert a.unsupported == [(0xFFFFFFF0, 0xFFFFFFF0 + 0xFFFFFFFF, "linux (ext2/3/4 or other)")]
    assert rows[1].kind == "outside_volumes"


def test_a_partition_table_rewritten_many_times_tracks_a_bounded_number() -> None:
    a = Attributor(window=0)
    commands = [(0x2A, 0, 1, mbr((0x83, 4096 * (i + 1), 100))) for i in range(80)]
    with time_limit(10):
        feed_all(a, commands)
    assert len(a.unsupported) == 64
    assert any("more than 64 file systems" in n for n in a.notes())


def fat16_volume_commands(root: bytes, fat: dict[int, int]) -> list[tuple[int, int, int, bytes]]:
    return [(0x28, 0, 1, fat_boot()), (0x28, FAT16["fat_start"], 1, fat16_sector(fat)),
            (0x28, FAT16["root"], 1, root.ljust(SECTOR, b"\0"))]


def test_a_fat_loop_is_a_malformed_chain_followed_up_to_the_loop() -> None:
    a = Attributor(window=0)
    commands = fat16_volume_commands(short_entry(b"LOOP    BIN", 3, 10000), {3: 4, 4: 3})
    commands.append((0x28, fat16_lba(3), 12, bytes(12 * SECTOR)))
    with time_limit(5):
        rows = feed_all(a, commands)
    data = [(r.kind, r.path, r.file_offset, r.length) for r in rows if r.lba == fat16_lba(3)]
    assert data == [("data", "/LOOP.BIN", 0, 4096)]  # clusters 3 and 4, then the loop
    assert [r.kind for r in rows if r.lba == fat16_lba(5)] == ["unallocated"]  # FAT says free
    assert any("/LOOP.BIN: malformed cluster chain" in n and "back to cluster 3" in n
               for n in a.notes())


@pytest.mark.parametrize("value, what", [(0xFFF0, "cluster number 65520"),
                                         (0xFFF7, "bad-cluster mark"), (1, "cluster number 1")])
def test_a_chain_to_an_impossible_cluster_is_malformed(value: int, what: str) -> None:
    a = Attributor(window=0)
    commands = fat16_volume_commands(short_entry(b"BAD     BIN", 3, 10000), {3: value})
    commands.append((0x28, fat16_lba(3), 4, bytes(4 * SECTOR)))
    rows = feed_all(a, commands)
    assert [(r.kind, r.path) for r in rows if r.lba == fat16_lba(3)] == [("data", "/BAD.BIN")]
    assert any(what in n for n in a.notes()), a.notes()


def test_a_first_cluster_outside_the_volume_is_noted() -> None:
    a = Attributor(window=0)
    rows = feed_all(a, fat16_volume_commands(short_entry(b"FAR     BIN", 0xFFF0, 10), {}) +
                    [(0x28, fat16_lba(3), 1, bytes(SECTOR))])
    assert rows
    assert any("/FAR.BIN: first cluster 65520 is outside" in n for n in a.notes())


def test_a_directory_that_contains_itself_is_not_followed() -> None:
    dot = short_entry(b".", 3, 0, attr=0x10) + short_entry(b"..", 0, 0, attr=0x10)
    inside = (dot + short_entry(b"SELF", 3, 0, attr=0x10)).ljust(SECTOR, b"\0")
    a = Attributor(window=0)
    commands = fat16_volume_commands(short_entry(b"LOOP", 3, 0, attr=0x10), {3: 0xFFFF})
    commands += [(0x28, fat16_lba(3), 1, inside)] * 5
    with time_limit(5):
        rows = feed_all(a, commands)
    assert {(r.kind, r.path) for r in rows if r.lba == fat16_lba(3)} == \
        {("directory", "/LOOP")}
    assert any("/LOOP/SELF: a directory whose first cluster 3" in n for n in a.notes())


def test_directories_nested_past_the_bound_are_noted_not_followed() -> None:
    a = Attributor(window=0)
    levels = 200
    fat = {c: 0xFFFF for c in range(3, 3 + levels + 1)}
    commands = fat16_volume_commands(short_entry(b"D", 3, 0, attr=0x10), fat)
    for k in range(levels):
        sector = short_entry(b"D", 4 + k, 0, attr=0x10).ljust(SECTOR, b"\0")
        commands.append((0x28, fat16_lba(3 + k), 1, sector))
    with time_limit(10):
        rows = feed_all(a, commands)
    deepest = max(len((r.path or "").split("/")) for r in rows)
    assert 100 < deepest <= 130
    assert any("nested deeper than 128 levels" in n for n in a.notes())


def scenario_exfat_directory_of_huge_length() -> list[Any]:
    """A contiguous exFAT directory whose DataLength reaches the end of a 32 TiB heap:
    a sector read near its end must not walk every index up to it."""
    clusters, spc_shift, heap = 1 << 20, 16, 8448
    boot = exfat_boot(spc_shift=spc_shift, fat_length=8193, heap=heap, clusters=clusters)
    root = exfat_file("d", 10, 1 << 60, contiguous=True, directory=True)
    spc = 1 << spc_shift
    last = heap + (clusters - 1) * spc
    a = Attributor(window=0)
    rows = feed_all(a, [(0x28, 0, 1, boot), (0x28, heap + 2 * spc, 1, root.ljust(SECTOR, b"\0")),
                        (0x88, last, 1, exfat_file("x", 12, 5).ljust(SECTOR, b"\0"))])
    return [[(r.kind, r.path) for r in rows if r.lba == last], a.notes()]


def test_an_exfat_directory_of_huge_length_is_bounded() -> None:
    at_end, notes = bounded("scenario_exfat_directory_of_huge_length", seconds=20)
    assert at_end == [["directory", "/d"]]
    assert any("/d: directory sectors past the spec's largest directory" in n for n in notes)
    assert any("/d: its 1152921504606846976 bytes run past the end" in n for n in notes)


def scenario_many_renames_in_one_window(count: int) -> int:
    """A directory of ``count`` files, every one renamed by one write: each deletion
    finds its creation by cluster, not by a scan of the window."""
    sectors = count * 32 // SECTOR
    clusters = sectors // FAT16["spc"]
    fat = {3 + k: 4 + k for k in range(clusters - 1)}
    fat[2 + clusters] = 0xFFFF
    table = bytearray(fat16_sector({}) + bytes(SECTOR))
    for cluster, value in fat.items():
        struct.pack_into("<H", table, cluster * 2, value)
    fat_sectors = bytes(table)
    a = Attributor()

    def listing(prefix: bytes) -> bytes:
        return b"".join(short_entry(prefix + b"%05d" % k + b"BIN", 1000 + k, 1)
                        for k in range(count))

    commands = [(0x28, 0, 1, fat_boot()), (0x28, FAT16["fat_start"], 2, fat_sectors),
                (0x28, FAT16["root"], 1, fat16_root(short_entry(b"BIG", 3, 0, attr=0x10))),
                (0x28, fat16_lba(3), sectors, bytes(sectors * SECTOR)),
                (0x2A, fat16_lba(3), sectors, listing(b"OLD")),
                (0x2A, fat16_lba(3), sectors, listing(b"NEW"))]
    rows = feed_all(a, commands)
    return sum(1 for r in rows if r.operation == "renamed")


def test_many_renames_in_one_window_pair_in_linear_time() -> None:
    assert bounded("scenario_many_renames_in_one_window", 8192, seconds=20,
                   megabytes=300) == 8192


# ---- property: mutated metadata never raises, hangs or grows without bound -----------------

def _base_fat16() -> list[tuple[int, int, int, bytes]]:
    lfn = bytes([0x41]) + "long".encode("utf-16-le").ljust(10, b"\xff") + b"\x0f\x00" + \
        bytes([0]) + bytes(12) + b"\0\0" + bytes(4)
    root = lfn + short_entry(b"LONG    TXT", 3, 5000) + short_entry(b"SUB", 6, 0, attr=0x10)
    sub = short_entry(b"INNER   BIN", 7, 100)
    return [(0x28, 0, 1, fat_boot()), (0x28, FAT16["fat_start"], 1,
                                       fat16_sector({3: 4, 4: 5, 5: 0xFFFF, 6: 0xFFFF, 7: 0xFFFF})),
            (0x28, FAT16["root"], 1, fat16_root(root)),
            (0x28, fat16_lba(6), 1, sub.ljust(SECTOR, b"\0")),
            (0x2A, fat16_lba(3), 12, bytes(12 * SECTOR)),
            (0x2A, FAT16["root"], 1, fat16_root(short_entry(b"LONG    TXT", 7, 9000)))]


def _base_exfat() -> list[tuple[int, int, int, bytes]]:
    root = exfat_metadata_entry(0x81, 2, 2000) + exfat_metadata_entry(0x82, 3, 5836) + \
        exfat_file("file.bin", 20, 9000, contiguous=False) + \
        exfat_file("dir", 30, 4096, contiguous=True, directory=True)
    fat = bytearray(SECTOR)
    struct.pack_into("<IIIII", fat, 0, 0xFFFFFFF8, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    struct.pack_into("<III", fat, 20 * 4, 21, 22, 0xFFFFFFFF)
    return [(0x28, 0, 1, exfat_boot()), (0x28, 128, 1, bytes(fat)),
            (0x28, exfat_lba(EXFAT["root"]), 1, root.ljust(SECTOR, b"\0")),
            (0x28, exfat_lba(30), 1, exfat_file("x", 40, 10).ljust(SECTOR, b"\0")),
            (0x28, exfat_lba(20), 24, bytes(24 * SECTOR))]


def _base_fat32() -> list[tuple[int, int, int, bytes]]:
    boot = fat_boot(spc=8, reserved=32, root_entries=0, fatsz16=0, fatsz32=1024,
                    tot32=32 + 2048 + 8 * 130000)
    fat = bytearray(SECTOR)
    struct.pack_into("<IIIII", fat, 0, 0x0FFFFFF8, 0x0FFFFFFF, 0x0FFFFFFF, 4, 0x0FFFFFFF)
    data = 32 + 2048
    return [(0x28, 0, 1, boot), (0x28, 32, 1, bytes(fat)),
            (0x28, data, 1, short_entry(b"A       BIN", 3, 8000).ljust(SECTOR, b"\0")),
            (0x28, data + 8, 16, bytes(16 * SECTOR))]


BASES = {"fat16": _base_fat16, "exfat": _base_exfat, "fat32": _base_fat32}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(BASES)),
       mutations=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 511),
                                    st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) |
                                    st.integers(0, 255)), max_size=16),
       claimed=st.sampled_from([None, 0xFFFF, 0xFFFFFFFF]))
def test_mutated_metadata_never_raises_hangs_or_grows(base: str, mutations: list[Any],
                                                      claimed: int | None) -> None:
    commands = BASES[base]()
    for index, offset, value in mutations:
        opcode, lba, blocks, data = commands[index % len(commands)]
        changed = bytearray(data)
        changed[offset % len(changed)] = value
        commands[index % len(commands)] = (opcode, lba, blocks, bytes(changed))
    if claimed is not None:  # a CDB that claims far more than its payload
        opcode, lba, _, data = commands[-1]
        commands[-1] = (0x88, lba, claimed, data)
    tracemalloc.start()
    try:
        with time_limit(5):
            rows = feed_all(Attributor(window=3), commands + commands[1:])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20
    for row in rows:
        assert row.length is None or row.length >= 0
        assert row.path is None or len(row.path.split("/")) <= MAX_DEPTH + 2


def test_a_signed_sector_zero_that_is_no_table_is_noted() -> None:
    sector = bytearray(mbr((0x06, 2048, 100)))
    sector[446] = 0x12  # a status that is neither 00 nor 80
    a = Attributor(window=0)
    rows = feed_all(a, [(0x28, 0, 1, bytes(sector))])
    assert [r.kind for r in rows] == ["unknown"] and not a.expected
    assert any("neither a boot sector nor a partition table" in n for n in a.notes())


def test_an_exfat_entry_set_must_keep_its_rules() -> None:
    """A set whose checksum does not match, or whose SecondaryCount is out of the spec's
    range, names no file: its clusters stay unknown rather than guessed."""
    good = exfat_file("good.bin", 100, 4096)
    bad_sum = bytearray(exfat_file("badsum.bin", 110, 4096))
    bad_sum[40] ^= 0xFF  # a byte of the stream extension, after the checksum was made
    too_many = bytearray(exfat_file("many.bin", 120, 4096))
    too_many[1] = 19
    root = (good + bytes(bad_sum) + bytes(too_many)).ljust(4 * SECTOR, b"\0")
    a = Attributor(window=0)
    rows = feed_all(a, [(0x28, 0, 1, exfat_boot()), (0x28, exfat_lba(EXFAT["root"]), 4, root)] +
                    [(0x28, exfat_lba(c), 1, bytes(SECTOR)) for c in (100, 110, 120)])
    assert [(r.kind, r.path) for r in rows if r.lba in {exfat_lba(c) for c in (100, 110, 120)}] \
        == [("data", "/good.bin"), ("unknown", None), ("unknown", None)]
    assert any("SetChecksum does not match" in n for n in a.notes())
    assert any("SecondaryCount 19" in n for n in a.notes())


def test_a_volume_of_4096_byte_sectors_counts_its_clusters_in_lbas() -> None:
    """BytsPerSec 4096 on a medium of 512-byte blocks: a cluster is 8 LBAs, the FAT and
    the root directory sit where the BPB's 4096-byte sectors put them."""
    boot = fat_boot(bps=4096, spc=1, reserved=1, nfats=2, root_entries=128, fatsz16=3,
                    tot32=1 + 6 + 1 + 5000)
    volume = _fat_volume(0, boot)
    assert isinstance(volume, Volume) and volume.kind == "fat16"
    assert (volume.spc, volume.fat_start, volume.root_start, volume.data_start) == (8, 8, 56, 64)
    a = Attributor(window=0)
    rows = feed_all(a, [(0x28, 0, 8, boot), (0x28, 8, 1, fat16_sector({3: 4, 4: 0xFFFF})),
                        (0x28, 56, 1, fat16_root(short_entry(b"FILE    BIN", 3, 6000))),
                        (0x28, 72, 16, bytes(16 * SECTOR))])
    assert [(r.kind, r.path, r.file_offset, r.length) for r in rows if r.lba == 72] == \
        [("data", "/FILE.BIN", 0, 6000)]


def test_a_file_grown_cluster_by_cluster_is_not_walked_from_its_start_each_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain extended by one cluster per FAT write is walked again from the changed FAT
    sector, not from its first cluster: FAT reads grow with the clusters, not their
    square (a full walk each time would read about 2 million entries here)."""
    reads = 0
    entry = Volume.fat_entry

    def counting(self: Volume, cluster: int, sectors: set[int] | None = None) -> int | None:
        nonlocal reads
        reads += 1
        return entry(self, cluster, sectors)

    monkeypatch.setattr(Volume, "fat_entry", counting)
    clusters = 2048
    table = bytearray(fat16_sector({}) + bytes(16 * SECTOR))
    a = Attributor()
    a.feed(1, 0x28, 0, 1, fat_boot(), "good")
    a.feed(2, 0x28, FAT16["root"], 1,
           fat16_root(short_entry(b"GROWS   BIN", 3, clusters * 2048)), "good")
    seq = 3
    for k in range(clusters):
        cluster = 3 + k
        if k:
            struct.pack_into("<H", table, (cluster - 1) * 2, cluster)
        struct.pack_into("<H", table, cluster * 2, 0xFFFF)
        first = (cluster - 1) * 2 // SECTOR
        a.feed(seq, 0x2A, FAT16["fat_start"] + first, 2,
               bytes(table[first * SECTOR : (first + 2) * SECTOR]), "good")
        a.feed(seq + 1, 0x2A, fat16_lba(cluster), 4, bytes(4 * SECTOR), "good")
        seq += 2
    rows = a.flush()
    assert sum(r.length or 0 for r in rows if r.path == "/GROWS.BIN") == clusters * 2048
    assert reads < clusters * 300, reads


def _owners_from_scratch(volume: Volume) -> dict[int, tuple[Node, int]]:
    """The owners by definition: claims in directory order, the last winning, each
    chain stopping at a cluster a later claim took."""
    claims: list[Node] = []
    for directory in list(volume.dirs.values()):
        if directory.node is volume.root:
            claims.append(volume.root)
        children = list(directory.children.values())
        claims += [n for n in children if not n.is_dir]
        claims += [n for n in children if n.is_dir and n in volume.dirs]
    owners: dict[int, tuple[Node, int]] = {}
    for node in reversed(claims):
        if node.contiguous:
            continue
        for index, cluster in enumerate(volume.chain(node)):
            if cluster in owners:
                break
            owners[cluster] = (node, index)
    return owners


_cluster = st.integers(2, 40)
_fat_write = st.tuples(st.just("fat"), st.sampled_from([0, 128]), st.dictionaries(
    _cluster, st.sampled_from([0, 0xFFFF, 0xFFF7]) | _cluster, min_size=1, max_size=10))
_dir_write = st.tuples(st.just("dir"), st.just(0), st.dictionaries(
    st.integers(0, 19), st.tuples(st.integers(0, 40), st.booleans()), max_size=10))


@settings(max_examples=60, deadline=None)
@given(st.lists(_fat_write | _dir_write, min_size=1, max_size=30))
def test_owners_kept_up_to_date_match_a_build_from_scratch(steps: list[Any]) -> None:
    """Cross-linked, looping and rewritten chains: after every command the owners kept
    up to date are the owners built from nothing."""
    a = Attributor(window=0)
    a.feed(1, 0x28, 0, 1, fat_boot(), "good")
    for seq, (kind, where, content) in enumerate(steps, 2):
        if kind == "fat":
            a.feed(seq, 0x2A, FAT16["fat_start"] + where, 1, fat16_sector(content), "good")
        else:
            entries = [short_entry(b"F%02d     BIN" % k, cluster, 5000,
                                   attr=0x10 if is_dir else 0x20)
                       for k, (cluster, is_dir) in content.items()]
            a.feed(seq, 0x2A, FAT16["root"], 1, fat16_root(*entries), "good")
        volume = a.volumes[0]
        assert volume.owner(2) == _owners_from_scratch(volume).get(2)  # brings it up to date
        assert volume._owners == _owners_from_scratch(volume)


def test_kept_sectors_written_again_move_to_the_end_and_do_not_pile_up() -> None:
    """Sectors of clusters with no owner are kept, the latest ``MAX_KEPT_BYTES`` of them: a
    sector written again is the newest, not a second entry that outlives the first."""
    from usbtrace.fs.shadow import MAX_KEPT_BYTES, SECTOR, Attributor

    attributor = Attributor()
    volume = object()
    sector = b"\x5a" * SECTOR
    for _ in range(10_000):  # a firmware file rewritten to the same free cluster
        attributor._keep(volume, 7, 0, sector, 0, 1)  # type: ignore[arg-type]
    assert attributor._kept_bytes == SECTOR and len(attributor._kept_order) == 1
    room = MAX_KEPT_BYTES // SECTOR
    for cluster in range(100, 100 + room - 1):  # fills the bound exactly
        attributor._keep(volume, cluster, 0, sector, 0, 1)  # type: ignore[arg-type]
    attributor._keep(volume, 7, 0, b"\xa5" * SECTOR, 0, 1)  # the oldest, written again
    attributor._keep(volume, 1 << 20, 0, sector, 0, 1)  # one more than the bound: one goes
    kept = attributor._kept
    assert attributor._kept_bytes == MAX_KEPT_BYTES
    assert kept[(id(volume), 7)][0] == b"\xa5" * SECTOR  # moved to the end, so kept
    assert (id(volume), 100) not in kept  # the oldest not written again went instead
    assert len(attributor._kept_order) == room
