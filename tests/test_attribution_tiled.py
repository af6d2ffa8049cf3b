"""Attribution over a long session: a real capture tiled (its records repeated, their
times shifted, as ``benchmarks/bench_import.py`` makes its million-record captures) is
attributed the same way in every tile followed by another, and the last tile as the
capture imported alone.

This pins ``file_activity`` row for row across the session, so a faster path through
attribution that changed a single row, or state that grew with the session and changed
a later command's rows (issue #12), fails here.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .conftest import shared_capture
from .tiling import tile

TILES = 4
ROW = ("path", "operation", "kind", "file_offset", "length", "lba", "command_offset",
       "detail")
CAPTURES = [
    "ajbanjara__usb_memory_stick.pcap",  # usbmon, FAT16 behind an MBR
    "ajbanjara__USBMSC-USBPcap.pcapng",  # USBPcap, exFAT
    "ajbanjara__STM32L052-Nucleo-via-hub-usbmon.pcapng",  # usbmon, FAT12, a file written
]


def as_pcap(source: Path, tmp_path: Path) -> Path:
    """``tests/tiling.py`` tiles classic pcap only: a pcapng capture goes through editcap
    (its records unchanged), as the benchmark does."""
    if source.suffix == ".pcap":
        return source
    if shutil.which("editcap") is None:
        pytest.skip("editcap (Wireshark) is not installed: it turns pcapng into pcap")
    plain = tmp_path / "source.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(source), str(plain)], check=True)
    return plain


def records_in(pcap: Path) -> int:
    """How many records a little-endian classic pcap holds, from its framing."""
    data = pcap.read_bytes()
    pos, count = 24, 0
    while pos + 16 <= len(data):
        pos += 16 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        count += 1
    return count


def rows_by_tile(db: Path, per_tile: int) -> list[list[tuple[Any, ...]]]:
    """Each tile's rows in the order they were logged, their command told by its place
    in the tile (the n-th command of the tile), not by its seq in the session.  A
    command's tile is the tile of the record that carried its CBW."""
    conn = sqlite3.connect(db)
    commands = conn.execute(
        "SELECT c.seq, u.record_number FROM scsi_commands c JOIN urbs u ON "
        "u.session_id = c.session_id AND u.seq = c.cbw_seq ORDER BY c.seq").fetchall()
    place: dict[int, tuple[int, int]] = {}
    counts: dict[int, int] = {}
    for seq, record in commands:
        which = (record - 1) // per_tile  # record numbers count from 1
        place[seq] = (which, counts.get(which, 0))
        counts[which] = counts.get(which, 0) + 1
    tiles: list[list[tuple[Any, ...]]] = [[] for _ in range(max(counts) + 1)]
    for seq, *row in conn.execute(f"SELECT scsi_seq, {', '.join(ROW)} FROM file_activity "
                                  "ORDER BY id"):
        which, nth = place[seq]
        tiles[which].append((nth, *row))
    conn.close()
    return tiles


def assert_rows_fit_their_commands(db: Path) -> None:
    """Checked against the commands, not against the attributor's own output: every row
    of a block range lies inside its command's blocks, says where in the payload it
    starts, and no two rows of one command claim the same block."""
    conn = sqlite3.connect(db)
    commands = {seq: (lba, blocks) for seq, lba, blocks in conn.execute(
        "SELECT seq, lba, blocks FROM scsi_commands")}
    claimed: dict[int, list[tuple[int, int]]] = {}
    for seq, lba, length, offset in conn.execute(
            "SELECT scsi_seq, lba, length, command_offset FROM file_activity "
            "WHERE lba IS NOT NULL"):
        first, blocks = commands[seq]
        assert first <= lba and lba + -(-length // 512) <= first + blocks, (seq, lba)
        assert offset == (lba - first) * 512, (seq, lba, offset)
        claimed.setdefault(seq, []).append((lba, lba + -(-length // 512)))
    for seq, spans in claimed.items():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (seq, spans)
    conn.close()


@pytest.mark.parametrize("name", CAPTURES)
def test_every_tile_of_a_tiled_capture_is_attributed_alike(tmp_path: Path, name: str) -> None:
    source = as_pcap(shared_capture(name), tmp_path)
    per_tile = records_in(source)
    tiled = tmp_path / "tiled.pcap"
    assert tile(source, tiled, TILES * per_tile) == TILES * per_tile
    import_capture(Database(tmp_path / "tiled.db"), tiled)
    import_capture(Database(tmp_path / "alone.db"), source)
    tiles = rows_by_tile(tmp_path / "tiled.db", per_tile)
    (alone,) = rows_by_tile(tmp_path / "alone.db", per_tile)
    assert len(tiles) == TILES
    # real attribution, not a stream of unknowns: paths are named
    assert any(row[1] is not None for row in alone)
    # a tile followed by another (the same commands in the window after it) reads alike,
    # the first, which learns the volume, too; the last, with nothing after it, reads as
    # the capture alone (in the STM32 capture a read of the firmware file's cluster comes
    # before any entry names it: a following tile names it in time, the end does not)
    for k in range(1, TILES - 1):
        assert tiles[k] == tiles[0], f"tile {k + 1} differs from tile 1"
    assert tiles[-1] == alone
    assert_rows_fit_their_commands(tmp_path / "tiled.db")
