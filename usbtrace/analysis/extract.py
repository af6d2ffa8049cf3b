"""Rebuild the files a session read or wrote, and raw sector ranges, from its rows.

``file_activity`` says which bytes of which command's data phase belong to
which file at which offset; a command's data phase is the bulk URBs of its
device between its CBW and CSW.  Each URB is placed at the offset its
*actual* length puts it at, so a URB whose payload the capture cut short
leaves a hole of the right size rather than shifting what follows.

Later commands win over earlier ones (a read after a write shows what the
device returned).  A file renamed or moved is rebuilt under its final name;
its size is the last one the file system said (creation, extension, rename,
deletion), else the end of its last known byte.  What is not known stays as
zeros and is listed as a hole: nothing is guessed.

Memory holds one command's data at a time and, per file, the list of known
ranges; the bytes themselves go straight to the output files.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from usbtrace.analysis.filters import Filter, Range
from usbtrace.capture.source import sha256_of
from usbtrace.errors import InputError

RW_NAMES = ("read_6", "read_10", "read_12", "read_16", "write_6", "write_10", "write_12",
            "write_16")
_RW_SQL = "(" + ", ".join(f"'{n}'" for n in RW_NAMES) + ")"
Segment = tuple[int, bytes]  # (offset in the command's data, bytes captured there)


@dataclass
class Ranges:
    """Known byte ranges [start, end), merged as they are added."""

    spans: list[list[int]] = field(default_factory=list)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        if self.spans and self.spans[-1][0] <= start <= self.spans[-1][1]:
            self.spans[-1][1] = max(self.spans[-1][1], end)
            return
        self.spans.append([start, end])
        if len(self.spans) > 1 and self.spans[-2][0] > start:
            self.normalise()

    def normalise(self) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(self.spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.spans = merged

    def holes(self, size: int) -> list[tuple[int, int]]:
        """The ranges of [0, size) not known."""
        self.normalise()
        out, at = [], 0
        for start, end in self.spans:
            if start >= size:
                break
            if start > at:
                out.append((at, start))
            at = max(at, end)
        if at < size:
            out.append((at, size))
        return out

    def known(self, size: int) -> int:
        return size - sum(end - start for start, end in self.holes(size))

    @property
    def end(self) -> int:
        return max((end for _, end in self.spans), default=0)


@dataclass
class ExtractedFile:
    """What is known of one file."""

    path: str                      # its final name
    size: int = 0
    size_known: bool = False       # the file system said it
    operations: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)  # earlier names, oldest first
    deleted: bool = False
    truncated: bool = False        # some of its bytes were cut from the capture
    ranges: Ranges = field(default_factory=Ranges)
    sha256: str = ""

    def manifest(self) -> dict[str, Any]:
        holes = self.ranges.holes(self.size)
        return {"path": self.path, "size": self.size, "size_known": self.size_known,
                "sha256": self.sha256, "complete": not holes and self.size_known,
                "bytes_known": self.size - sum(e - s for s, e in holes),
                "holes": [list(h) for h in holes], "truncated_in_capture": self.truncated,
                "operations": sorted(self.operations), "earlier_names": self.names,
                "deleted": self.deleted}


def safe_relative(path: str) -> PurePosixPath:
    """A file-system path from the medium as a relative path that stays inside the
    output folder: no '..', no empty or '.' parts, no NUL."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or "\0" in p for p in parts):
        raise InputError(f"cannot extract {path!r}: not a plain path")
    return PurePosixPath(*parts)


class Renames:
    """Names followed forwards to the last one.

    A rename applies to every row of the old name, before it or after it (the
    page cache writes a file's data after its new directory entry), until the
    old name is created again."""

    def __init__(self, moves: Iterable[tuple[int, str, str]],
                 creations: Iterable[tuple[int, str]] = ()) -> None:
        created: dict[str, list[int]] = {}
        for seq, path in creations:
            created.setdefault(path, []).append(seq)
        self.moves = []  # (scsi_seq, old, new, the old name's next creation)
        for at, old, new in sorted(moves):
            again = min((s for s in created.get(old, ()) if s > at), default=None)
            self.moves.append((at, old, new, again))

    def final(self, path: str, seq: int) -> str:
        for _at, old, new, again in self.moves:
            if old == path and (again is None or seq < again):
                path = new
        return path


def command_segments(database: Any, session: int, seq: int) -> tuple[list[Segment], bool]:
    """The data phase of one command as (offset, bytes) segments, and whether any of
    it was cut from the capture."""
    _, rows = database.query(
        "SELECT u.data, u.actual_length, u.truncated FROM scsi_commands c JOIN urbs u "
        "ON u.session_id = c.session_id AND u.seq > c.cbw_seq "
        "AND u.seq < coalesce(c.csw_seq, c.cbw_seq + 1000000) "
        "AND u.bus IS NOT DISTINCT FROM c.bus AND u.device IS NOT DISTINCT FROM c.device "
        "AND u.transfer_type = 'bulk' "
        "AND u.data IS NOT NULL "
        "AND u.direction = (CASE c.data_direction WHEN 'in' THEN 'in' ELSE 'out' END) "
        "WHERE c.session_id = :sid AND c.seq = :seq ORDER BY u.seq",
        {"sid": session, "seq": seq})
    segments: list[Segment] = []
    offset, cut = 0, False
    for data, actual, truncated in rows:
        data = bytes(data or b"")
        segments.append((offset, data))
        length = actual if actual is not None else len(data)
        cut = cut or bool(truncated) or len(data) < length
        offset += max(length, len(data))
    return segments, cut


def slice_segments(segments: list[Segment], start: int, length: int
                   ) -> Iterator[tuple[int, bytes]]:
    """The captured bytes of [start, start + length) of a command's data, as
    (offset from start, bytes) pieces; what was not captured is left out."""
    end = start + length
    for offset, data in segments:
        lo, hi = max(start, offset), min(end, offset + len(data))
        if lo < hi:
            yield lo - start, data[lo - offset: hi - offset]


def _write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def extract_files(database: Any, session: int, folder: Path, flt: Filter | None = None
                  ) -> list[ExtractedFile]:
    """Rebuild every file with data or a creation in the session (narrowed by
    ``flt``) under ``folder``; return what is known of each."""
    flt = flt or Filter()
    # --file globs match a file by any of its names (before or after a rename), so they
    # are applied here, on the final name too; the rest of the filter in SQL
    by_command = Filter(flt.devices, flt.luns, flt.opcodes, flt.lba, flt.statuses, (),
                        flt.time, flt.where)
    cond, params = by_command.files_sql("f")
    params = {**params, "sid": session}
    _, moves = database.query(
        "SELECT scsi_seq, substr(detail, 6), path FROM file_activity "
        "WHERE session_id = :sid AND kind = 'event' AND operation IN ('renamed', 'moved') "
        "AND detail LIKE 'from %' ORDER BY id", {"sid": session})
    _, creations = database.query(
        "SELECT scsi_seq, path FROM file_activity WHERE session_id = :sid AND kind = 'event' "
        "AND operation = 'created' AND path IS NOT NULL", {"sid": session})
    renames = Renames(((int(s), str(old), str(new)) for s, old, new in moves),
                      ((int(s), str(p)) for s, p in creations))
    files: dict[str, ExtractedFile] = {}

    def named(path: str, seq: int) -> bool:
        if not flt.files:
            return True
        final = renames.final(path, seq)
        return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(final, g)
                   for g in flt.files)

    def entry(path: str, seq: int) -> ExtractedFile:
        final = renames.final(path, seq)
        if final not in files:
            files[final] = ExtractedFile(final)
        return files[final]

    folder.mkdir(parents=True, exist_ok=True)
    targets: dict[str, Path] = {}

    def target(item: ExtractedFile) -> Path:
        if item.path not in targets:
            place = folder / "files" / safe_relative(item.path)
            place.parent.mkdir(parents=True, exist_ok=True)
            place.touch()
            targets[item.path] = place
        return targets[item.path]

    current: tuple[int, list[Segment], bool] | None = None
    with database.stream(
            "SELECT f.scsi_seq, f.path, f.operation, f.file_offset, f.length, "
            "f.command_offset FROM file_activity f WHERE f.session_id = :sid "
            "AND f.kind = 'data' AND f.path IS NOT NULL AND f.length > 0 "
            f"AND {cond} ORDER BY f.scsi_seq, f.id", params) as (_, rows):
        for seq, path, operation, offset, length, command_offset in rows:
            if not named(path, seq):
                continue
            if current is None or current[0] != seq:
                segments, cut = command_segments(database, session, seq)
                current = (seq, segments, cut)
            _, segments, cut = current
            item = entry(path, seq)
            item.operations.add(operation)
            place = target(item)
            got = 0
            for at, piece in slice_segments(segments, int(command_offset or 0), int(length)):
                _write_at(place, int(offset) + at, piece)
                item.ranges.add(int(offset) + at, int(offset) + at + len(piece))
                got += len(piece)
            if got < length:
                item.truncated = True
    # sizes and the file events, in order: every event of the files kept (an event's
    # own command may lie outside the filter: a directory entry is not the file's data)
    commands_filtered = not by_command.empty
    with database.stream(
            "SELECT f.scsi_seq, f.path, f.operation, f.length, f.detail FROM file_activity f "
            "WHERE f.session_id = :sid AND f.kind = 'event' AND f.path IS NOT NULL "
            "ORDER BY f.id", {"sid": session}) as (_, events):
        for seq, path, operation, length, detail in events:
            if detail == "directory" or not named(path, seq):
                continue
            if commands_filtered and renames.final(path, seq) not in files:
                continue  # a file none of the kept commands moved
            item = entry(path, seq)
            if operation in ("renamed", "moved") and detail and detail.startswith("from "):
                item.names.append(detail[5:])
            item.deleted = operation == "deleted"
            if length is not None:
                item.size, item.size_known = int(length), True
            if operation in ("created", "extended"):
                item.operations.add("write")
    for item in files.values():
        place = target(item)
        if not item.size_known:
            item.size = item.ranges.end
        os.truncate(place, item.size)
        item.sha256 = sha256_of(place)
    return sorted(files.values(), key=lambda f: f.path)


@dataclass
class SectorRange:
    """What is known of a raw LBA range."""

    first: int
    last: int
    block_size: int
    file: str
    ranges: Ranges = field(default_factory=Ranges)
    truncated: bool = False
    sha256: str = ""

    def manifest(self) -> dict[str, Any]:
        size = (self.last - self.first + 1) * self.block_size
        holes = self.ranges.holes(size)
        return {"file": self.file, "first_lba": self.first, "last_lba": self.last,
                "block_size": self.block_size, "size": size, "sha256": self.sha256,
                "complete": not holes,
                "unknown_lbas": [[self.first + s // self.block_size,
                                  self.first + (e - 1) // self.block_size] for s, e in holes],
                "truncated_in_capture": self.truncated}


def block_size(database: Any, session: int) -> int:
    """The block size the READs and WRITEs moved (data length / blocks), else 512."""
    _, rows = database.query(
        "SELECT expected_length / blocks FROM scsi_commands WHERE session_id = :sid "
        f"AND blocks > 0 AND expected_length > 0 AND name IN {_RW_SQL} "
        "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1", {"sid": session})
    return int(rows[0][0]) if rows and rows[0][0] else 512


def extract_sectors(database: Any, session: int, folder: Path, lba: Range,
                    flt: Filter | None = None) -> SectorRange:
    """The blocks lba.low to lba.high as one file, from every READ and WRITE that
    moved them (later ones win)."""
    if lba.low is None or lba.high is None:
        raise InputError("--lba: extract needs both ends of the range (A-B)")
    first, last = int(lba.low), int(lba.high)
    size = block_size(database, session)
    if (last - first + 1) * size > 1 << 40:
        raise InputError(f"--lba {first}-{last}: over 1 TiB of sectors")
    flt = flt or Filter()
    cond, params = flt.commands_sql("c")
    out = SectorRange(first, last, size, f"sectors-{first}-{last}.bin")
    place = folder / out.file
    folder.mkdir(parents=True, exist_ok=True)
    place.touch()
    with database.stream(
            "SELECT c.seq, c.lba, c.blocks FROM scsi_commands c WHERE c.session_id = :sid "
            "AND c.lba IS NOT NULL AND c.blocks > 0 AND c.lba <= :last "
            "AND c.lba + c.blocks - 1 >= :first AND c.data_length > 0 "
            f"AND c.name IN {_RW_SQL} "
            f"AND {cond} ORDER BY c.seq", {**params, "sid": session, "first": first,
                                           "last": last}) as (_, commands):
        for seq, start, _blocks in commands:
            segments, cut = command_segments(database, session, int(seq))
            lo = max(first, int(start))
            hi = min(last, int(start) + int(_blocks) - 1)
            length = (hi - lo + 1) * size
            from_command = (lo - int(start)) * size
            base = (lo - first) * size
            got = 0
            for at, piece in slice_segments(segments, from_command, length):
                _write_at(place, base + at, piece)
                out.ranges.add(base + at, base + at + len(piece))
                got += len(piece)
            out.truncated = out.truncated or (cut and got < length)
    os.truncate(place, (last - first + 1) * size)
    out.sha256 = sha256_of(place)
    return out
