"""Decoded commands kept on disk from a replay's survey for the passes after it.

A replay reads its recording more than once: the survey learns what the
replay needs before the first command, then the replay (and, for real
hardware, the write check) go over the commands again.  Decoding a session
anew for each pass cost two thirds of a host replay.  The survey's commands
are decoded by the same stages either way, so they are kept instead: pickled
in batches to an anonymous temporary file, which the system removes however
the process ends.  Memory stays bounded by one batch.

Disk is bounded too: past ``SPILL_LIMIT`` bytes, or when the file cannot be
written (a full disk), the spill stops, and the passes decode the rest of the
recording afresh, skipping the commands the spill holds.  Decoding is
deterministic, so the two halves join exactly.
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
import tempfile
from collections.abc import Iterator
from operator import attrgetter
from typing import IO, Any

from usbtrace.decode.bot import ScsiCommand
from usbtrace.storage.scsi import CDB_INFO_FIELDS, cdb_info

SPILL_LIMIT = 1 << 30  # bytes of pickled commands kept on disk, at most
BATCH_BYTES = 1 << 20  # a batch is written once it holds this much data ...
BATCH_COMMANDS = 512  # ... or this many commands
_FRAME = struct.Struct("<Q")  # each batch: its pickle's length, then the pickle
# a command goes as the tuple of its fields, its CdbInfo as a tuple too: pickle's own way
# with a slotted dataclass looks its fields up for every object (a third of the reading)
_FIELDS = [f.name for f in dataclasses.fields(ScsiCommand)]
_INFO = _FIELDS.index("info")
_values = attrgetter(*_FIELDS)
_info_values = attrgetter(*CDB_INFO_FIELDS)


def _flat(cmd: ScsiCommand) -> tuple[Any, ...]:
    values = _values(cmd)
    return values[:_INFO] + (_info_values(values[_INFO]),) + values[_INFO + 1:]


class Spill:
    """Commands in decoding order, written once, read by any number of passes."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = SPILL_LIMIT if limit is None else limit
        self._file: IO[bytes] | None = None
        self._size = 0
        self._batch: list[ScsiCommand] = []
        self._batch_bytes = 0
        self.count = 0  # commands kept, the first ones decoded
        self.devices: dict[tuple[int | None, int | None], int] = {}  # of them, by (bus, device)
        self.complete = True  # False once a command was not kept: the rest is decoded anew

    def add(self, cmd: ScsiCommand) -> None:
        if not self.complete:
            return
        self._batch.append(cmd)
        for part in cmd.data_parts:  # the bytes held, not the length a CBW or URB claimed
            self._batch_bytes += len(part)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_COMMANDS:
            self._write()

    def seal(self) -> None:
        """Write what the last batch holds; after this, only reading."""
        if self._batch and self.complete:
            self._write()
        self._batch = []

    def _write(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        blob = pickle.dumps([_flat(c) for c in batch], pickle.HIGHEST_PROTOCOL)
        if self._size + _FRAME.size + len(blob) > self._limit:
            self.complete = False
            return
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="usbtrace-replay-")
            self._file.seek(self._size)
            self._file.write(_FRAME.pack(len(blob)))
            self._file.write(blob)
        except OSError:  # a full or read-only temporary folder: decode the rest anew
            self.complete = False
            return
        self._size += _FRAME.size + len(blob)
        self.count += len(batch)
        devices = self.devices
        for cmd in batch:
            key = (cmd.bus, cmd.device)
            devices[key] = devices.get(key, 0) + 1

    def __iter__(self) -> Iterator[ScsiCommand]:
        """The kept commands, from the first.  Each read seeks first: two passes may
        interleave (they share the file, not a position in it)."""
        file = self._file
        offset = 0
        while file is not None and offset < self._size:
            file.seek(offset)
            (length,) = _FRAME.unpack(file.read(_FRAME.size))
            blob = file.read(length)
            offset += _FRAME.size + length
            for values in pickle.loads(blob):
                # made with the CdbInfo's tuple in its place, then given the CdbInfo: no
                # slices of ``values`` to join around it
                cmd = ScsiCommand(*values)
                cmd.info = cdb_info(values[_INFO])
                yield cmd

    def close(self) -> None:
        """Remove the file; passes after this decode the recording anew."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._size = self.count = 0
        self.devices = {}
        self.complete = False
