"""Sector 0 read again (``DiskLayout._sector_zero``): hosts read the partition table at
every mount, and the tiled captures of ``benchmarks/bench_import.py`` repeat a mount.  The
same sector 0, with no table having changed the partitions since, is not parsed again, and
``quiet_from`` and the signature sectors are recomputed only when what they derive from
changed.  Every row, note and partition must be those of a layout that parses sector 0
and recomputes at every command (``Reparsing``), whatever came in between: another MBR, a
GPT whose array gives or takes partitions, a boot sector written over the table.
"""

from __future__ import annotations

from typing import Any

import pytest

from usbtrace.fs.partitions import DiskLayout
from usbtrace.fs.shadow import Attributor

from .gptimage import BASIC_DATA, Part, gpt_sectors
from .test_attribution_recent import fields
from .test_shadow_robustness import SECTOR, fat_boot, feed_all, mbr

READ, WRITE = 0x28, 0x2A
START = 2048
DISK = 262144  # sectors


class FreshLayout(DiskLayout):
    """A layout that parses sector 0 and recomputes what derives from it every time."""

    def _sector_zero(self, sector: bytes, table: bool) -> list[int]:
        return self._read_sector_zero(sector, table)

    def observe(self, lba: int, data: bytes, table: bool) -> list[int]:
        new = self._observe(lba, data, table)
        self.quiet_from = self._quiet_from()
        self._signatures = self._signature_lbas()
        return new


class Reparsing(Attributor):
    def __init__(self, window: int = 8) -> None:
        super().__init__(window)
        self.layout = FreshLayout()


def run(kind: type[Attributor], commands: list[tuple[int, int, int, bytes]]
        ) -> tuple[list[tuple[Any, ...]], list[str], list[Any]]:
    a = kind(window=8)
    rows = feed_all(a, commands)
    layout = a.layout
    state = [layout.sector0, layout.quiet_from, list(layout._signatures), dict(layout.named),
             [(p.scheme, p.index, p.start, p.end, p.type_name, p.name, p.source, p.first_seen)
              for p in layout.partitions], [v.start for v in a.volumes]]
    return fields(rows), a.notes(), state


def mount(table: bytes, start: int = START, count: int = 1, op: int = READ
          ) -> list[tuple[int, int, int, bytes]]:
    """A mount as a host reads it: the table, the volume's boot sector, a FAT sector and
    a data sector; ``count`` sectors at LBA 0 (the rest zero)."""
    return [(op, 0, count, table + bytes(SECTOR * (count - 1))), (READ, start, 1, fat_boot()),
            (READ, start + 4, 1, bytes(SECTOR)), (READ, start + 400, 1, bytes(SECTOR))]


T1 = mbr((0x06, START, 131072))
T2 = mbr((0x06, 4096, 65536), (0x83, 100000, 1000))
GPT = gpt_sectors(DISK, [Part(START, 133119, BASIC_DATA, "data")])
GPT2 = gpt_sectors(DISK, [Part(4096, 69631, BASIC_DATA, "other")])


def gpt_reads(sectors: dict[int, bytes]) -> list[tuple[int, int, int, bytes]]:
    """Every sector of a GPT, one read each, sector 0 first."""
    return [(READ, lba, 1, data) for lba, data in sorted(sectors.items())]


def gpt_writes(sectors: dict[int, bytes]) -> list[tuple[int, int, int, bytes]]:
    """A GPT rewritten (its array and headers; sector 0 as before)."""
    return [(WRITE, lba, 1, data) for lba, data in sorted(sectors.items()) if lba]


@pytest.mark.parametrize("commands", [
    mount(T1) * 5,
    mount(T1, count=8) * 3 + mount(T1) * 2,
    mount(T1) + mount(T2, 4096) + mount(T1) + mount(T2, 4096) + mount(T1),
    # the same MBR written back, and a boot sector written over the table, then the table
    mount(T1) + mount(T1, op=WRITE) + [(WRITE, 0, 1, fat_boot())] + mount(T1) * 2,
    [(READ, 0, 1, fat_boot())] * 3 + mount(T1) + [(READ, 0, 1, fat_boot())] * 2,
    # the same protective MBR while the GPT behind it changes its partitions
    gpt_reads(GPT) + [(READ, 0, 1, GPT[0])] * 2 + gpt_writes(GPT2) +
    [(READ, 0, 1, GPT[0])] * 2 + gpt_reads(GPT2) + gpt_reads(GPT),
    # an MBR, a GPT over it, and the MBR again
    mount(T1) * 2 + gpt_reads(GPT) * 2 + mount(T1) * 2,
    [(READ, 0, 1, bytes(SECTOR))] * 3 + mount(T1),
])
def test_sector_zero_read_again_gives_the_rows_of_parsing_each_time(
        commands: list[tuple[int, int, int, bytes]]) -> None:
    assert run(Attributor, commands) == run(Reparsing, commands)


def test_the_same_table_is_parsed_once_until_a_table_changes_the_partitions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    parse = DiskLayout._read_sector_zero

    def counting(self: DiskLayout, sector: bytes, table: bool) -> list[int]:
        parsed.append(bytes(sector))
        return parse(self, sector, table)

    monkeypatch.setattr(DiskLayout, "_read_sector_zero", counting)
    a = Attributor(window=8)
    seq = 0

    def feed(commands: list[tuple[int, int, int, bytes]]) -> None:
        nonlocal seq
        for opcode, lba, blocks, data in commands:
            seq += 1
            a.feed(seq, opcode, lba, blocks, data, "good")

    feed(mount(T1) * 4)
    assert parsed == [T1]
    feed(gpt_reads(GPT) + [(READ, 0, 1, GPT[0])] * 2)
    # the protective MBR, and again once the GPT's arrays gave their partitions
    assert parsed == [T1, GPT[0], GPT[0]]
    feed(gpt_writes(GPT2) + [(READ, 0, 1, GPT[0])] * 3)
    assert parsed == [T1, GPT[0], GPT[0], GPT[0]]  # the partitions changed once more
