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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from usbtrace.fs.shadow import Activity, Attributor, Node

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
tracemalloc.start()
result = getattr(t, sys.argv[1])(*json.loads(sys.argv[3]))
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"result": result, "peak": peak}))
"""


def bounded(scenario: str, *args: Any, seconds: float = 20, megabytes: int = 100) -> Any:
    """Run ``scenario(*args)`` from this module in a child; fail on a timeout, an error or
    a peak of Python allocations over ``megabytes``.  Returns the scenario's result."""
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, scenario, str(megabytes << 20),
                               json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                              timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{scenario} did not finish in {seconds} s")
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
    return bytes(file_entry) + bytes(stream) + b"".join(names)


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
