"""Boot sectors and partition tables read again (``Attributor._boot``): hosts read them at
every mount, and the tiled captures of ``benchmarks/bench_import.py`` repeat a mount.  The
same bytes at the same LBA are parsed once; what they made then, they make again, so every
row and note must be those of an attributor that parses every time (``Parsing``), and
other bytes at the same LBA (a format, a table rewritten) are parsed again.
"""

from __future__ import annotations

from typing import Any

import pytest

from usbtrace.fs import shadow
from usbtrace.fs.shadow import Attributor, Malformed, Volume

from .test_attribution_recent import fields
from .test_shadow_robustness import SECTOR, fat_boot, feed_all, mbr

READ, WRITE = 0x28, 0x2A
START = 2048


class Parsing(Attributor):
    """An attributor that parses every boot sector and partition table it is given."""

    def _boot(self, start: int, sector: bytes
              ) -> tuple[Volume | Malformed | str | None, list[tuple[int, int, int]] | None]:
        entries = shadow._partition_entries(sector) if start == 0 and \
            sector[510:512] == b"\x55\xaa" else None
        return shadow._fat_volume(start, sector), entries


def mounts(boots: list[bytes], table: bytes) -> list[tuple[int, int, int, bytes]]:
    """Each boot sector in turn as a mount reads it: the table, the boot sector, the
    FAT's first sector and a data sector (which lies in the volume or outside it)."""
    out = []
    for boot in boots:
        out += [(READ, 0, 1, table), (READ, START, 1, boot), (READ, START + 4, 1, bytes(SECTOR)),
                (READ, START + 400, 1, bytes(SECTOR))]
    return out


def run(kind: type[Attributor], commands: list[tuple[int, int, int, bytes]]
        ) -> tuple[list[tuple[Any, ...]], list[str], list[int]]:
    a = kind(window=8)
    rows = feed_all(a, commands)
    return fields(rows), a.notes(), [v.start for v in a.volumes]


GOOD = fat_boot()
MALFORMED = fat_boot(reserved=0)  # BPB_RsvdSecCnt 0
OTHER = fat_boot(spc=8, fatsz16=64)  # another geometry: a format


@pytest.mark.parametrize("boots", [
    [GOOD] * 5,
    [MALFORMED, MALFORMED, GOOD, GOOD],  # a good boot sector written over a malformed one
    [GOOD, OTHER, GOOD, OTHER],
    [b"NTFS".rjust(11) + bytes(SECTOR - 13) + b"\x55\xaa"] * 3,
    [bytes(SECTOR)] * 3,
])
def test_boot_sectors_read_again_give_the_rows_of_parsing_each_time(
        boots: list[bytes]) -> None:
    commands = mounts(boots, mbr((0x06, START, 131072)))
    assert run(Attributor, commands) == run(Parsing, commands)


def test_a_volume_boot_sector_read_again_is_parsed_once(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    seen: list[tuple[int, bytes]] = []
    parse = shadow._fat_volume

    def counting(start: int, sector: bytes) -> Volume | Malformed | str | None:
        seen.append((start, bytes(sector)))
        return parse(start, sector)

    monkeypatch.setattr(shadow, "_fat_volume", counting)
    table = mbr((0x06, START, 131072))
    rows, _, starts = run(Attributor, mounts([GOOD] * 4, table))
    assert starts == [START]
    # the table once, the boot sector once: three mounts later, nothing parsed again
    assert seen == [(0, table), (START, GOOD)]
    assert [r[3] for r in rows].count("partition_table") == 4
    assert [r[3] for r in rows].count("boot_sector") == 4
    seen.clear()
    a = Attributor(window=8)
    feed_all(a, mounts([GOOD, OTHER], table))
    assert seen == [(0, table), (START, GOOD), (START, OTHER)]  # other bytes: parsed
