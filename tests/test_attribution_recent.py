"""Reads given their rows again (``Attributor._recent``): the same read, while nothing it
looked at has changed, makes the rows the whole path makes; any change of metadata in
between makes it go the whole way again.

Hosts re-read the same FAT, directory and file sectors (and the tiled captures of
``benchmarks/bench_import.py`` repeat a capture); the shortcut must never change a row.
Each scenario is fed to an attributor with the shortcut and to one without it
(``Whole``), and every row and note must agree.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from usbtrace.fs.shadow import Activity, Attributor

from .test_shadow_robustness import (
    FAT16,
    fat16_lba,
    fat16_root,
    fat16_sector,
    fat_boot,
    mbr,
    short_entry,
)

READ, WRITE = 0x28, 0x2A
FAT_LBA, ROOT_LBA, SPC = FAT16["fat_start"], FAT16["root"], FAT16["spc"]
CLUSTERS = list(range(2, 14))


class Whole(Attributor):
    """An attributor that keeps no read to give again: every command goes the whole way."""

    def _remember(self, lba: int, blocks: int, data: bytes, first: int) -> None:
        return None


def fields(rows: list[Activity]) -> list[tuple[Any, ...]]:
    return [(r.scsi_seq, r.path, r.operation, r.kind, r.file_offset, r.length, r.lba,
             r.command_offset, r.detail) for r in rows]


def run(commands: list[tuple[int, int, bytes]], kind: type[Attributor]
        ) -> tuple[list[tuple[Any, ...]], list[str]]:
    attributor = kind(window=8)
    rows: list[Activity] = []
    for seq, (opcode, lba, data) in enumerate(commands, 1):
        rows += attributor.feed(seq, opcode, lba, len(data) // 512, data, "good")
    rows += attributor.flush()
    return fields(rows), attributor.notes()


@st.composite
def sessions(draw: st.DrawFn) -> list[tuple[int, int, bytes]]:
    """A FAT16 volume read and written: files created, resized, renamed and deleted (the
    root directory and FAT written), and the boot sector, FAT, root directory and file
    clusters read again and again, sometimes with what they held before a change (as a
    tiled capture reads the first tile's sectors after the last tile changed them)."""
    files: dict[int, tuple[bytes, list[int], int]] = {}  # slot -> (name, chain, size)
    free = list(CLUSTERS)
    history: list[tuple[bytes, bytes]] = []  # (FAT sector, root sector) as they were

    def fat() -> bytes:
        entries = {}
        for _, chain, _ in files.values():
            for k, cluster in enumerate(chain):
                entries[cluster] = chain[k + 1] if k + 1 < len(chain) else 0xFFFF
        return fat16_sector(entries)

    def root() -> bytes:
        return fat16_root(*(short_entry(name, chain[0], size)
                            for name, chain, size in files.values()))

    commands: list[tuple[int, int, bytes]] = [(READ, 0, fat_boot()), (READ, FAT_LBA, fat()),
                                              (READ, ROOT_LBA, root())]
    history.append((fat(), root()))
    sector0 = fat_boot()  # what LBA 0 holds now: a host may write another sector there
    for _ in range(draw(st.integers(1, 40))):
        step = draw(st.sampled_from(["read", "read", "read", "stale", "create", "resize",
                                     "rename", "delete", "sector0"]))
        if step == "read":
            what = draw(st.sampled_from(["boot", "boot", "fat", "root", "data", "data"]))
            if what == "boot":  # the boot sector alone, or with the reserved sectors after
                commands.append((READ, 0, sector0 + bytes(512 * draw(st.sampled_from([0, 3])))))
            elif what == "fat":
                commands.append((READ, FAT_LBA, fat()))
            elif what == "root":
                commands.append((READ, ROOT_LBA, root()))
            else:
                cluster = draw(st.sampled_from(CLUSTERS))
                blocks = draw(st.sampled_from([1, 2, SPC, 2 * SPC]))
                commands.append((READ, fat16_lba(cluster), bytes(blocks * 512)))
        elif step == "sector0":  # a blank sector, a partition table, the boot sector again
            sector0 = draw(st.sampled_from([bytes(512), mbr((0x06, 64, 4096)), fat_boot()]))
            commands.append((WRITE, 0, sector0))
        elif step == "stale":
            old_fat, old_root = draw(st.sampled_from(history))
            commands.append((READ, FAT_LBA, old_fat) if draw(st.booleans())
                            else (READ, ROOT_LBA, old_root))
        elif step == "create" and free and len(files) < 8:
            count = draw(st.integers(1, min(3, len(free))))
            chain = [free.pop(0) for _ in range(count)]
            slot = next(s for s in range(16) if s not in files)
            size = draw(st.integers(1, count * SPC * 512))
            files[slot] = (f"F{slot}".encode().ljust(8) + b"BIN", chain, size)
            for cluster in chain:
                commands.append((WRITE, fat16_lba(cluster), bytes(SPC * 512)))
            commands += [(WRITE, FAT_LBA, fat()), (WRITE, ROOT_LBA, root())]
        elif step in ("resize", "rename", "delete") and files:
            slot = draw(st.sampled_from(sorted(files)))
            name, chain, size = files[slot]
            if step == "resize":
                files[slot] = (name, chain, draw(st.integers(1, len(chain) * SPC * 512)))
            elif step == "rename":
                files[slot] = (f"R{slot}".encode().ljust(8) + b"BIN", chain, size)
            else:
                del files[slot]
                free += chain
            commands.append((WRITE, ROOT_LBA, root()))
            if step == "delete":
                commands.append((WRITE, FAT_LBA, fat()))
        history.append((fat(), root()))
    return commands


@settings(max_examples=300, deadline=None)
@given(sessions())
def test_reads_given_again_make_the_rows_of_the_whole_path(
        commands: list[tuple[int, int, bytes]]) -> None:
    assert run(commands, Attributor) == run(commands, Whole)


def test_a_read_again_is_given_its_rows_until_the_directory_changes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The shortcut is taken (the whole path is not), and a rename in between is seen."""
    walked: list[int] = []
    whole = Attributor._volume_access

    def counted(self: Attributor, *args: Any) -> None:
        walked.append(args[1])  # the command's seq
        whole(self, *args)

    monkeypatch.setattr(Attributor, "_volume_access", counted)
    entry = short_entry(b"DATA    BIN", 2, 1500)
    renamed = short_entry(b"OTHER   BIN", 2, 1500)
    commands = [(READ, 0, fat_boot()), (READ, FAT_LBA, fat16_sector({2: 0xFFFF})),
                (READ, ROOT_LBA, fat16_root(entry)),
                (READ, fat16_lba(2), bytes(SPC * 512)),  # 4: the file's cluster
                (READ, fat16_lba(2), bytes(SPC * 512)),  # 5: the same again
                (WRITE, ROOT_LBA, fat16_root(renamed)),  # 6: renamed
                (READ, fat16_lba(2), bytes(SPC * 512))]  # 7: under its new name
    rows, _ = run(commands, Attributor)
    assert 5 not in walked and 7 in walked
    data = [(seq, path, offset, length) for seq, path, _, kind, offset, length, *_ in rows
            if kind == "data"]
    # clipped at the file's 1500 bytes each time (the rest of the cluster is slack)
    assert data == [(4, "/DATA.BIN", 0, 1500), (5, "/DATA.BIN", 0, 1500),
                    (7, "/OTHER.BIN", 0, 1500)]
    assert rows == run(commands, Whole)[0]
