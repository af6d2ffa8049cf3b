"""File events on FAT32, where every directory (the root too) is a cluster chain: a move
is one entry written in the target directory and one removed from the source, with the
same first cluster; a file deleted and created again under its name is two files."""

from __future__ import annotations

import struct

import pytest

from usbtrace.fs.shadow import Activity, Attributor

from .test_shadow_robustness import fat_boot, short_entry

READ, WRITE = 0x28, 0x2A
RESERVED, FAT_SECTORS = 32, 1024
DATA = RESERVED + 2 * FAT_SECTORS  # one sector a cluster
ROOT, DOCS, SUB = 2, 3, 4


def boot() -> bytes:
    return fat_boot(spc=1, reserved=RESERVED, root_entries=0, fatsz16=0, tot32=131072,
                    fatsz32=FAT_SECTORS, root_cluster=ROOT)


def lba(cluster: int) -> int:
    return DATA + cluster - 2


def fat(entries: dict[int, int]) -> bytes:
    sector = bytearray(512)
    struct.pack_into("<II", sector, 0, 0x0FFFFFF8, 0x0FFFFFFF)
    for cluster, value in entries.items():
        struct.pack_into("<I", sector, cluster * 4, value)
    return bytes(sector)


def directory(*entries: bytes) -> bytes:
    return b"".join(entries).ljust(512, b"\0")


def deleted(entry: bytes) -> bytes:
    return b"\xe5" + entry[1:]


EOC = 0x0FFFFFFF
DOCS_ENTRY = short_entry(b"DOCS", DOCS, 0, attr=0x10)
SUB_ENTRY = short_entry(b"SUB", SUB, 0, attr=0x10)


class Run:
    def __init__(self, window: int = 4096) -> None:
        self.a = Attributor(window=window)
        self.rows: list[Activity] = []
        self.seq = 0

    def __call__(self, opcode: int, at: int, data: bytes) -> None:
        self.seq += 1
        self.rows += self.a.feed(self.seq, opcode, at, len(data) // 512, data, "good")

    def events(self) -> list[tuple[str, str | None, str | None]]:
        self.rows += self.a.flush()
        return [(r.operation, r.path, r.detail) for r in self.rows if r.kind == "event"]


def mounted(run: Run, fat_entries: dict[int, int], root: bytes, docs: bytes,
            sub: bytes) -> None:
    run(READ, 0, boot())
    run(READ, RESERVED, fat(fat_entries))
    run(READ, lba(ROOT), root)
    run(READ, lba(DOCS), docs)
    run(READ, lba(SUB), sub)


@pytest.mark.parametrize("window", [2, 4096])
@pytest.mark.parametrize("target_first", [True, False])
def test_a_move_into_another_directory_is_moved(window: int, target_first: bool) -> None:
    run = Run(window)
    nested = short_entry(b"NESTED  TXT", 9, 700)
    base = {ROOT: EOC, DOCS: EOC, SUB: EOC, 9: 10, 10: EOC}
    mounted(run, base, directory(DOCS_ENTRY), directory(SUB_ENTRY), directory(nested))
    moves = [(WRITE, lba(DOCS), directory(SUB_ENTRY, nested)),
             (WRITE, lba(SUB), directory(deleted(nested)))]
    for command in moves if target_first else moves[::-1]:
        run(*command)
    run(READ, lba(10), b"y" * 512)
    events = run.events()
    assert events == [("moved", "/DOCS/NESTED.TXT", "from /DOCS/SUB/NESTED.TXT")]
    reads = [(r.path, r.file_offset) for r in run.rows if r.lba == lba(10)]
    assert reads == [("/DOCS/NESTED.TXT", 512)]


@pytest.mark.parametrize("window", [2, 4096])
def test_a_move_into_a_directory_that_grows_is_moved(window: int) -> None:
    """The target directory is full: its new cluster is written before the FAT links it."""
    run = Run(window)
    nested = short_entry(b"NESTED  TXT", 9, 700)
    full = SUB_ENTRY + b"".join(short_entry(f"F{k:02d}".encode(), 0, 0) for k in range(15))
    base = {ROOT: EOC, DOCS: EOC, SUB: EOC, 9: EOC}
    mounted(run, base, directory(DOCS_ENTRY), full, directory(nested))
    run(WRITE, lba(20), directory(nested))  # the entry, in the directory's new cluster
    run(WRITE, RESERVED, fat({**base, DOCS: 20, 20: EOC}))
    run(WRITE, lba(SUB), directory(deleted(nested)))
    events = run.events()
    assert ("moved", "/DOCS/NESTED.TXT", "from /DOCS/SUB/NESTED.TXT") in events
    assert [e for e in events if e[1] and "NESTED" in e[1]] == \
        [("moved", "/DOCS/NESTED.TXT", "from /DOCS/SUB/NESTED.TXT")]


@pytest.mark.parametrize("window", [0, 4096])
def test_create_delete_create_of_one_name_is_two_files(window: int) -> None:
    run = Run(window)
    base = {ROOT: EOC, DOCS: EOC, SUB: EOC}
    mounted(run, base, directory(DOCS_ENTRY), directory(SUB_ENTRY), directory())
    first = short_entry(b"A       TXT", 9, 100)
    second = short_entry(b"A       TXT", 9, 300)
    run(WRITE, lba(9), b"1" * 512)
    run(WRITE, RESERVED, fat({**base, 9: EOC}))
    run(WRITE, lba(ROOT), directory(DOCS_ENTRY, first))
    run(WRITE, lba(ROOT), directory(DOCS_ENTRY, deleted(first)))
    run(WRITE, RESERVED, fat(base))
    run(WRITE, lba(9), b"2" * 512)  # the freed cluster, reused
    run(WRITE, RESERVED, fat({**base, 9: EOC}))
    run(WRITE, lba(ROOT), directory(DOCS_ENTRY, deleted(first), second))
    run(WRITE, lba(ROOT), directory(DOCS_ENTRY, deleted(first), deleted(second)))
    run(WRITE, RESERVED, fat(base))
    events = [(op, path) for op, path, _ in run.events()]
    assert events == [("created", "/A.TXT"), ("deleted", "/A.TXT"), ("created", "/A.TXT"),
                      ("deleted", "/A.TXT")]
    data = [(r.path, r.length, r.kind) for r in run.rows if r.lba == lba(9)]
    assert data == [("/A.TXT", 100, "data"), ("/A.TXT", 300, "data")]


def test_a_write_to_a_deleted_files_cluster_taken_since_says_so() -> None:
    """New data in a freed cluster before the old entry's deletion is on the disk cannot be
    told from the old file's last write: the row stays the old file's and says so."""
    run = Run(window=8)
    base = {ROOT: EOC, DOCS: EOC, SUB: EOC, 9: EOC}
    old = short_entry(b"OLD     TXT", 9, 512)
    mounted(run, base, directory(DOCS_ENTRY, old), directory(SUB_ENTRY), directory())
    run(WRITE, lba(9), b"n" * 512)
    run(WRITE, lba(ROOT), directory(DOCS_ENTRY, deleted(old)))
    run(WRITE, RESERVED, fat({**base, 9: 0}))
    run(WRITE, RESERVED, fat(base))
    run(WRITE, lba(ROOT), directory(DOCS_ENTRY, deleted(old), short_entry(b"NEW     TXT", 9,
                                                                           512)))
    run.events()
    rows = [(r.path, r.detail) for r in run.rows if r.lba == lba(9)]
    assert rows == [("/OLD.TXT", "/OLD.TXT was deleted and /NEW.TXT took cluster 9: this may "
                     "be that file's data, written before the deletion reached the disk")]
