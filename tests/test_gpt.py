"""GPT sticks: the protective MBR, headers and entry arrays labelled and checked; a FAT32
partition attributed byte for byte; other file systems named, never guessed."""

from __future__ import annotations

import datetime
import io
import random
import sqlite3
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usbtrace.cli import main
from usbtrace.fs import gpt
from usbtrace.fs.shadow import Activity, Attributor
from usbtrace.store.database import Database

from .fileactivity import rebuild
from .gptimage import (
    BASIC_DATA,
    LINUX_FS,
    MKFS_EXT4,
    SGDISK,
    Part,
    ext4_superblock,
    gpt_sectors,
    header,
    write_gpt,
)

SECTOR = 512
DISK = 131072  # 64 MiB
FAT_PART = Part(2048, 83967, BASIC_DATA, "FAT data")
EXT_PART = Part(83968, 131038, LINUX_FS, "linux")
BACKUP_ARRAY = range(131039, 131071)
TREE = {
    "/README.TXT": b"a stick with a GUID partition table\r\n" * 30,
    "/docs/report.bin": random.Random(1).randbytes(70_000),
    "/docs/deep/notes.txt": b"- every byte to its file\n" * 200,
    "/a long name on a GPT stick.dat": random.Random(2).randbytes(5_000),
    "/gone.bin": random.Random(3).randbytes(3_000),
}


class Window(io.RawIOBase):
    """One partition of the disk as a file: what a file system driver sees of it."""

    def __init__(self, disk: Any, start: int, size: int) -> None:
        super().__init__()
        self.disk, self.start, self.size, self.position = disk, start, size, 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position,
                         io.SEEK_END: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def truncate(self, size: int | None = None) -> int:
        return self.size

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.position))
        self.disk.seek(self.start + self.position)
        got = self.disk.readinto(memoryview(buffer)[:n])
        self.position += got
        return int(got)

    def write(self, data: Any) -> int:
        self.disk.seek(self.start + self.position)
        n = int(self.disk.write(bytes(data)))
        self.position += n
        return n

    def close(self) -> None:
        """The disk stays open: it belongs to the test."""


def make_image(path: Path, use_sgdisk: bool, real_ext4: bool = False) -> None:
    with open(path, "wb") as f:
        f.truncate(DISK * SECTOR)
    write_gpt(path, DISK, [FAT_PART, EXT_PART], use_sgdisk)
    with open(path, "r+b") as f:
        if real_ext4:
            assert MKFS_EXT4 is not None
            size_kib = (EXT_PART.last + 1 - EXT_PART.first) * SECTOR // 1024
            subprocess.run([MKFS_EXT4, "-q", "-F", "-E", f"offset={EXT_PART.first * SECTOR}",
                            str(path), f"{size_kib}k"], check=True, capture_output=True)
        else:
            f.seek(EXT_PART.first * SECTOR + 1024)
            f.write(ext4_superblock())


def run_on_stick(image: Path, db_path: Path) -> None:
    """Through the whole stack: read the GPT as a host does, format the first partition
    FAT32 with pyfatfs, copy files, read them back, move one and delete one, and look
    at the second partition."""
    from pyfatfs.PyFatFS import PyFatBytesIOFS

    from usbtrace.devices.image import DiskImage
    from usbtrace.devices.simulated import SimulatedStick
    from usbtrace.machine import DISK_PATH, Machine
    from usbtrace.store.writer import Recorder, SessionWriter
    from usbtrace.workloads import files as files_workload

    database = Database(db_path)
    sid = database.new_session("simulated", "gpt stick", "now", "virtual")
    recorder = Recorder(SessionWriter(database, sid))
    stick = SimulatedStick(DiskImage.open(image))
    machine = Machine(stick, sink=recorder).start()
    w = machine.win32
    handle = w.CreateFile(DISK_PATH)
    try:
        for offset, length in ((0, SECTOR), (SECTOR, SECTOR), (2 * SECTOR, 32 * SECTOR),
                               ((DISK - 1) * SECTOR, SECTOR),
                               (BACKUP_ARRAY[0] * SECTOR, 32 * SECTOR)):
            w.ReadFile(handle, bytearray(length), offset)
        disk = files_workload.DiskFile(w, handle, DISK * SECTOR)
        part = Window(disk, FAT_PART.first * SECTOR,
                      (FAT_PART.last + 1 - FAT_PART.first) * SECTOR)
        files_workload._mkfs(part, "fat32")  # type: ignore[arg-type]
        fs = PyFatBytesIOFS(part, lazy_load=False)
        fs.tz = datetime.timezone.utc
        for path, data in TREE.items():
            fs.makedirs(path.rsplit("/", 1)[0] or "/", recreate=True)
            with fs.openbin(path, "w") as out:
                out.write(data)
        fs.close()
        fs = PyFatBytesIOFS(part, lazy_load=False)  # again: reads come from the stick
        fs.tz = datetime.timezone.utc
        for path, data in TREE.items():
            with fs.openbin(path, "r") as back:
                assert back.read() == data
        fs.move("/README.TXT", "/renamed.txt")
        fs.remove("/gone.bin")
        fs.close()
        w.ReadFile(handle, bytearray(64 * 1024), EXT_PART.first * SECTOR)
    finally:
        w.CloseHandle(handle)
        machine.stop()
        recorder.close()
        stick.close()


def sectors_of(conn: sqlite3.Connection, where: str, *args: object) -> dict[int, set[tuple]]:
    """LBA -> the (kind, detail) of every row that covers it."""
    out: dict[int, set[tuple]] = {}
    for lba, length, kind, detail in conn.execute(
            f"SELECT lba, length, kind, detail FROM file_activity WHERE lba IS NOT NULL "
            f"AND {where}", args):
        for at in range(lba, lba + -(-length // SECTOR)):
            out.setdefault(at, set()).add((kind, detail))
    return out


def check_stick(conn: sqlite3.Connection, ext_name: str) -> None:
    labels = sectors_of(conn, "1")
    assert labels[0] == {("partition_table", None)}
    assert labels[1] == {("gpt_header", "primary")}
    assert labels[DISK - 1] == {("gpt_header", "backup")}
    for at in [*range(2, 34), *BACKUP_ARRAY]:
        kinds = {kind for kind, _ in labels[at]}
        assert kinds == {"gpt_entries"}, at
        assert all("2 partitions" in (detail or "") for _, detail in labels[at]), labels[at]
    ext = {at: labels[at] for at in range(EXT_PART.first, EXT_PART.last + 1) if at in labels}
    assert ext and all(v == {("unsupported", ext_name)} for v in ext.values())
    # before pyfatfs wrote its boot sector the partition held no file system, and says so;
    # from then on every access to it belongs to the FAT32 volume
    formatted = conn.execute("SELECT min(id) FROM file_activity WHERE kind = 'boot_sector' "
                             "AND operation = 'write' AND lba = ?", (FAT_PART.first,)
                             ).fetchone()[0]
    inside = f"lba BETWEEN {FAT_PART.first} AND {FAT_PART.last}"
    before = sectors_of(conn, f"{inside} AND id < ?", formatted)
    described = "GPT partition 1 'FAT data' (basic data): file system not"
    assert {(kind, (detail or "")[: len(described)]) for v in before.values()
            for kind, detail in v} == {("unknown", described)}
    after = sectors_of(conn, f"{inside} AND id >= ?", formatted)
    kinds = {kind for v in after.values() for kind, _ in v}
    assert {"boot_sector", "fat", "directory", "data"} <= kinds
    assert not kinds & {"unknown", "outside_volumes", "unsupported", "unallocated"}, kinds
    data_lbas = sectors_of(conn, "kind IN ('data', 'slack')")
    assert data_lbas and all(FAT_PART.first <= at <= FAT_PART.last for at in data_lbas)


def check_files(conn: sqlite3.Connection) -> None:
    """Every byte written to or read from each file is attributed to its path.

    pyfatfs moves a file by copying it and deleting the original, and the log says
    exactly that: /renamed.txt is created and written, /README.TXT read and deleted."""
    written, read = rebuild(conn, 1, "write"), rebuild(conn, 1, "read")
    for path, data in {**TREE, "/renamed.txt": TREE["/README.TXT"]}.items():
        assert bytes(written[path]) == data, path
    for path, data in TREE.items():
        assert bytes(read[path]) == data, path
    events = set(conn.execute("SELECT operation, path FROM file_activity WHERE kind='event'"))
    assert {("created", "/docs/deep/notes.txt"), ("created", "/renamed.txt"),
            ("deleted", "/README.TXT"), ("deleted", "/gone.bin")} <= events


@pytest.mark.parametrize("writer", ["spec", "sgdisk"])
def test_gpt_stick_fat32_attributed_and_ext4_named(tmp_path: Path, writer: str) -> None:
    if writer == "sgdisk" and SGDISK is None:
        pytest.skip("sgdisk is not installed (Debian package gdisk; .ci/run installs it)")
    image = tmp_path / "gpt.img"
    make_image(image, writer == "sgdisk")
    run_on_stick(image, tmp_path / "g.db")
    conn = sqlite3.connect(tmp_path / "g.db")
    check_stick(conn, "ext4")
    check_files(conn)
    log = CliRunner().invoke(main, ["log", "1", "--db", str(tmp_path / "g.db")])
    assert log.exit_code == 0, log.output
    for said in ("partition_table", "gpt_header primary", "gpt_header backup",
                 "gpt_entries primary, 2 partitions", "unsupported ext4", "/docs/report.bin @0"):
        assert said in log.output, said


def test_gpt_stick_with_a_real_ext4_made_by_mkfs(tmp_path: Path) -> None:
    if MKFS_EXT4 is None:
        pytest.skip("mkfs.ext4 is not installed (Debian package e2fsprogs)")
    image = tmp_path / "gpt.img"
    make_image(image, use_sgdisk=False, real_ext4=True)
    run_on_stick(image, tmp_path / "g.db")
    check_stick(sqlite3.connect(tmp_path / "g.db"), "ext4")


# ---- the decoder alone, fed the commands a host would send --------------------------------

def feed(a: Attributor, sectors: dict[int, bytes], reads: list[tuple[int, int]],
         opcode: int = 0x28) -> list[Activity]:
    rows: list[Activity] = []
    for seq, (lba, count) in enumerate(reads, 1):
        data = b"".join(sectors.get(at, bytes(SECTOR)) for at in range(lba, lba + count))
        rows += a.feed(seq, opcode, lba, count, data, "good")
    return rows + a.flush()


def by_lba(rows: list[Activity]) -> dict[int, list[tuple[str, str | None]]]:
    out: dict[int, list[tuple[str, str | None]]] = {}
    for r in rows:
        if r.lba is not None and r.length is not None:
            for at in range(r.lba, r.lba + -(-r.length // SECTOR)):
                out.setdefault(at, []).append((r.kind, r.detail))
    return out


def fat16_boot(total: int) -> bytes:
    """A FAT16 boot sector (Microsoft FAT spec §3.1, §3.2) for ``total`` sectors."""
    boot = bytearray(SECTOR)
    boot[0:3] = b"\xeb\x3c\x90"
    boot[3:11] = b"MSWIN4.1"
    struct.pack_into("<HBHBHHBHHHII", boot, 11, 512, 4, 4, 2, 512, total, 0xF8, 32, 32, 2,
                     0, 0)
    boot[38] = 0x29
    boot[54:62] = b"FAT16   "
    boot[510:512] = b"\x55\xaa"
    return bytes(boot)


SMALL = 16384  # an 8 MiB disk for the decoder-only tests
SMALL_PARTS = [Part(2048, 10239, BASIC_DATA, "fat"), Part(10240, 16349, LINUX_FS, "x")]


def small_disk() -> dict[int, bytes]:
    sectors = gpt_sectors(SMALL, SMALL_PARTS)
    sectors[2048] = fat16_boot(8192)
    return sectors


def test_a_header_whose_crc_fails_is_reported_and_the_backup_used() -> None:
    sectors = small_disk()
    bad = bytearray(sectors[1])
    bad[60] ^= 0x01  # a bit of PartitionEntryLBA: the stored CRC32 no longer matches
    sectors[1] = bytes(bad)
    a = Attributor(window=0)
    rows = feed(a, sectors, [(0, 1), (1, 1), (2, 32), (2048, 1)])
    labels = by_lba(rows)
    assert labels[1][0][0] == "gpt_header"
    assert "CRC32 mismatch" in (labels[1][0][1] or "") and "not trusted" in (labels[1][0][1]
                                                                              or "")
    assert not any(kind == "gpt_entries" for at in range(2, 34) for kind, _ in labels[at])
    assert labels[2048] == [("outside_volumes", None)]
    assert not a.volumes  # nothing from the untrusted header
    # the backup header at the last LBA is found by its own MyLBA and checked sums
    rows = feed(a, sectors, [(SMALL - 33, 33), (2048, 1), (2049, 1)])
    labels = by_lba(rows)
    assert labels[SMALL - 1] == [("gpt_header", "backup")]
    assert all(labels[at][0][0] == "gpt_entries" for at in range(SMALL - 33, SMALL - 1))
    assert [v.start for v in a.volumes] == [2048]
    assert labels[2049][0][0] == "reserved"  # inside the FAT16 volume now


def test_an_entry_array_whose_crc_fails_is_not_trusted() -> None:
    sectors = small_disk()
    sectors[2] = sectors[2][:100] + bytes([sectors[2][100] ^ 0xFF]) + sectors[2][101:]
    a = Attributor(window=0)
    rows = feed(a, sectors, [(0, 34), (2048, 2)])
    labels = by_lba(rows)
    assert labels[1] == [("gpt_header", "primary")]
    assert "entry array CRC32 mismatch" in (labels[2][0][1] or "")
    assert not a.volumes and all(kind != "boot_sector" for kind, _ in labels[2048])
    # the backup array, where the trusted header's AlternateLBA points, is intact
    rows = feed(a, sectors, [(SMALL - 33, 33), (2048, 2)])
    labels = by_lba(rows)
    assert labels[SMALL - 2] == [("gpt_entries", "backup, 2 partitions")]
    assert [v.start for v in a.volumes] == [2048] and labels[2048] == [("boot_sector", None)]


def test_a_partial_entry_array_is_not_used_until_its_crc_is_checked() -> None:
    a = Attributor(window=0)
    rows = feed(a, small_disk(), [(0, 2), (2, 8), (2048, 1)])
    labels = by_lba(rows)
    assert labels[5] == [("gpt_entries", "primary: 8 of 32 sectors seen, CRC32 not checked yet")]
    assert not a.volumes
    rows = feed(a, small_disk(), [(10, 24), (2048, 1)])
    assert [v.start for v in a.volumes] == [2048]


def test_a_gpt_behind_an_mbr_that_is_not_protective_is_ignored_and_said_so() -> None:
    sectors = small_disk()
    mbr = bytearray(sectors[0])
    mbr[446 + 4] = 0x0C  # a FAT32 MBR partition where the protective record was
    sectors[0] = bytes(mbr)
    rows = feed(Attributor(window=0), sectors, [(0, 1), (1, 1)])
    detail = by_lba(rows)[1][0]
    assert detail[0] == "gpt_header" and "not a protective MBR" in (detail[1] or "")


SIGNATURES: dict[str, tuple[int, int, bytes]] = {  # name -> (sector, offset, bytes)
    "ntfs": (0, 3, b"NTFS    "),
    "apfs": (0, 32, b"NXSB"),
    "hfs+": (2, 0, b"H+\x00\x04"),
    "hfsx": (2, 0, b"HX\x00\x05"),
    "iso9660": (64, 0, b"\x01CD001\x01"),
}


def with_signature(name: str) -> dict[int, bytes]:
    if name.startswith("ext"):
        sb = bytearray(ext4_superblock()[:SECTOR])
        compat, incompat = {"ext2": (0, 0), "ext3": (4, 0), "ext4": (4, 0x40)}[name]
        struct.pack_into("<II", sb, 92, compat, incompat)
        return {2: bytes(sb)}
    rel, offset, raw = SIGNATURES[name]
    sector = bytearray(SECTOR)
    sector[offset : offset + len(raw)] = raw
    return {rel: bytes(sector)}


@pytest.mark.parametrize("table", ["gpt", "mbr"])
@pytest.mark.parametrize("name", ["ntfs", "ext2", "ext3", "ext4", "iso9660", "hfs+", "hfsx",
                                  "apfs"])
def test_other_file_systems_are_named_in_gpt_and_mbr_partitions(table: str, name: str) -> None:
    start, end = 10240, 16350
    if table == "gpt":
        sectors = gpt_sectors(SMALL, SMALL_PARTS)
    else:
        mbr = bytearray(SECTOR)
        mbr[446:462] = struct.pack("<B3sB3sII", 0, b"", 0x83, b"", start, end - start)
        mbr[510:512] = b"\x55\xaa"
        sectors = {0: bytes(mbr)}
    for rel, sector in with_signature(name).items():
        sectors[start + rel] = sector
    rows = feed(Attributor(window=0), sectors, [(0, 34), (start, 128), (end - 8, 9)])
    labels = by_lba(rows)
    assert {labels[at][0] for at in range(start, start + 128)} == {("unsupported", name)}
    assert labels[end - 1] == [("unsupported", name)]
    after = labels[end][0]
    assert after[0] in ("gpt_entries", "outside_volumes"), after  # the partition ends there


def test_a_partition_whose_file_system_was_not_seen_says_so() -> None:
    a = Attributor(window=0)
    rows = feed(a, gpt_sectors(SMALL, SMALL_PARTS), [(0, 34), (10241, 1), (10240, 1)])
    labels = by_lba(rows)
    assert labels[10241] == [("unknown", "GPT partition 2 'x' (Linux filesystem): file "
                                         "system not seen")]
    assert labels[10240] == [("unknown", "GPT partition 2 'x' (Linux filesystem): file "
                                         "system not recognised")]


@pytest.mark.parametrize("field,value,problem", [
    (12, 600, "HeaderSize 600"),
    (84, 100, "SizeOfPartitionEntry 100"),
    (84, 384, "SizeOfPartitionEntry 384"),
    (80, 0xFFFFFFFF, "beyond the"),
    (72, 20, "PartitionEntryLBA 20"),
])
def test_absurd_headers_are_refused_even_with_a_good_crc(field: int, value: int,
                                                        problem: str) -> None:
    raw = bytearray(gpt_sectors(SMALL, SMALL_PARTS)[1])
    fmt = "<Q" if field in (24, 32, 40, 48, 72) else "<I"
    struct.pack_into(fmt, raw, field, value)
    size = struct.unpack_from("<I", raw, 12)[0]
    struct.pack_into("<I", raw, 16, 0)
    if size <= SECTOR:
        struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw[:size])))
    parsed = gpt.parse_header(1, bytes(raw))
    assert parsed is not None and problem in (parsed.problem or "")
    rows = feed(Attributor(window=0), {0: gpt_sectors(SMALL, SMALL_PARTS)[0], 1: bytes(raw)},
                [(0, 2), (2, 4096)])
    labels = by_lba(rows)
    assert problem in (labels[1][0][1] or "")
    assert len(labels) == 2 + 4096  # one label per sector, no more


def layouts() -> st.SearchStrategy[tuple[list[Part], int, int]]:
    """Partitions in random places and sizes, entry arrays of random shapes."""
    def build(cuts: list[int], count_exp: int, size_exp: int) -> tuple[list[Part], int, int]:
        count, size = 4 << count_exp, 128 << size_exp
        first_usable = 2 + -(-count * size // SECTOR)
        last_usable = 4095 - 1 - -(-count * size // SECTOR)
        points = sorted({min(max(c, first_usable), last_usable + 1) for c in cuts})
        parts = [Part(a, b - 1, LINUX_FS if i % 2 else BASIC_DATA, f"p{i}")
                 for i, (a, b) in enumerate(zip(points[::2], points[1::2])) if b > a]
        return parts[: count], count, size
    return st.builds(build, st.lists(st.integers(0, 4096), min_size=2, max_size=12),
                     st.integers(0, 5), st.integers(0, 2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), st.randoms(use_true_random=False))
def test_random_layouts_label_every_sector_once_and_rightly(layout: tuple[list[Part], int, int],
                                                           rng: random.Random) -> None:
    parts, count, size = layout
    sectors = gpt_sectors(4096, parts, count, size)
    array_sectors = -(-count * size // SECTOR)
    reads: Iterator[tuple[int, int]]
    cuts = sorted({0, 4096, *(rng.randrange(4096) for _ in range(12))})
    reads = iter(list(zip(cuts, [b - a for a, b in zip(cuts, cuts[1:])])))
    a = Attributor(window=0)
    # the host reads the table and the backup header first (as Linux and Windows do),
    # then the disk in pieces, then all of it again
    rows = feed(a, sectors, [(0, 2 + array_sectors), (4095, 1), *reads, (0, 4096)])
    labels = by_lba(rows)
    for at in range(4096):
        assert len({kind for kind, _ in labels[at]}) == 1, (at, labels[at])
        got = labels[at][-1]
        if at == 0:
            assert got == ("partition_table", None)
        elif at in (1, 4095):
            assert got == ("gpt_header", "primary" if at == 1 else "backup")
        elif at < 2 + array_sectors or at >= 4095 - array_sectors:
            assert got[0] == "gpt_entries" and f", {len(parts)} partitions" in (got[1] or "")
        else:
            owner = [i for i, p in enumerate(parts) if p.first <= at <= p.last]
            if owner:
                p = parts[owner[0]]
                assert got[0] == "unknown" and f"GPT partition {owner[0] + 1} '{p.name}'" in \
                    (got[1] or ""), (at, got)
            else:
                assert got == ("outside_volumes", None), (at, got)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
       st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.sampled_from([128, 256, 0, 129]),
       st.binary(min_size=SECTOR, max_size=SECTOR))
def test_any_header_with_a_good_crc_costs_only_the_sectors_seen(
        alternate: int, first_usable: int, last_usable: int, entry_lba: int, count: int,
        size: int, entries: bytes) -> None:
    """Whatever a header claims, the decoder reads only what passed, and never fails."""
    raw = header(1, alternate, first_usable, last_usable, entry_lba, count, size,
                 zlib.crc32(entries), bytes(16))
    sectors = {0: gpt_sectors(SMALL, SMALL_PARTS)[0], 1: raw, 2: entries,
               (alternate if alternate < 4096 else 3): raw}
    a = Attributor(window=0)
    rows = feed(a, sectors, [(0, 64), (64, 4032)])
    labels = by_lba(rows)
    assert len(labels) == 4096 and all(len(v) == 1 for v in labels.values())
    assert labels[1][0][0] == "gpt_header"
    assert sum(len(t.sectors) for t in a.layout.tables.values()) <= 4096


def test_a_stick_repartitioned_in_the_session_takes_the_new_table() -> None:
    """A host writing a new GPT may write the array before the header that checks it."""
    a = Attributor(window=0)
    feed(a, small_disk(), [(0, 34)])
    parts = [*SMALL_PARTS[:1], Part(10240, 12287, LINUX_FS, "x"),
             Part(12288, 16349, LINUX_FS, "new")]
    table = gpt_sectors(SMALL, parts)
    rows = feed(a, table, [(2, 32), (1, 1)], opcode=0x2A)
    labels = by_lba(rows)
    assert labels[2][0][0] == "gpt_entries" and "CRC32 mismatch" in (labels[2][0][1] or "")
    assert labels[1] == [("gpt_header", "primary")]
    rows = feed(a, table, [(12300, 1)])
    assert by_lba(rows)[12300] == [("unknown", "GPT partition 3 'new' (Linux filesystem): "
                                               "file system not seen")]


@pytest.mark.parametrize("name", ["ext2", "ext4", "iso9660", "hfs+"])
def test_a_stick_without_a_partition_table_is_named_too(name: str) -> None:
    rows = feed(Attributor(window=0), with_signature(name), [(0, 128)])
    labels = by_lba(rows)
    assert {labels[at][0] for at in range(1, 128)} == {("unsupported", name)}


def test_a_stick_repartitioned_from_mbr_to_gpt_forgets_the_mbr_partitions() -> None:
    mbr = bytearray(SECTOR)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"", 0x83, b"", 100, 900)
    mbr[510:512] = b"\x55\xaa"
    a = Attributor(window=0)
    feed(a, {0: bytes(mbr)}, [(0, 1)])
    assert [p.start for p in a.layout.partitions] == [100]
    feed(a, small_disk(), [(0, 34)], opcode=0x2A)
    assert [(p.scheme, p.start) for p in a.layout.partitions] == [("GPT", 2048), ("GPT", 10240)]
