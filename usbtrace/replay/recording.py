"""A recording, loaded for replay: its SCSI commands and control exchanges.

A capture file or a stored session goes through the same decoding stages as
an import (pairing, Bulk-Only -> SCSI), in memory.  Each command keeps what a
replay needs: the CBW's fields, the data that went each way, the CSW, and
whether any of it was cut short by the capture.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from usbtrace.capture.reader import CaptureStats, events
from usbtrace.decode.bot import BotDecoder, ScsiCommand
from usbtrace.decode.identity import IdentityTracker
from usbtrace.decode.pairing import Exchange, Pairer
from usbtrace.errors import InputError
from usbtrace.records import BULK, CONTROL, Event
from usbtrace.storage import scsi


@dataclass
class ControlExchange:
    setup: bytes
    data_in: bytes
    status: int | None


@dataclass
class Recording:
    name: str
    commands: list[ScsiCommand] = field(default_factory=list)
    controls: list[ControlExchange] = field(default_factory=list)
    identity: IdentityTracker = field(default_factory=IdentityTracker)
    endpoints: dict[str, int] = field(default_factory=dict)  # "in"/"out" bulk endpoints
    capacity: tuple[int, int] | None = None  # (blocks, block size) from READ CAPACITY
    times: list[float] = field(default_factory=list)  # submission time of each command

    @property
    def storage_device(self) -> tuple[int | None, int | None] | None:
        if not self.commands:
            return None
        first = self.commands[0]
        return first.bus, first.device


def from_events(name: str, stream: Iterable[Event]) -> Recording:
    recording = Recording(name)
    pairer = Pairer()
    bot = BotDecoder()

    def take(x: Exchange) -> None:
        first = x.first
        if first.transfer_type == CONTROL and first.setup:
            recording.controls.append(ControlExchange(first.setup, x.data,
                                                      x.complete.urb_status if x.complete
                                                      else None))
        recording.identity.feed(x)
        if first.transfer_type == BULK and first.endpoint is not None:
            recording.endpoints.setdefault("in" if first.endpoint & 0x80 else "out",
                                           first.endpoint)
        recording.commands.extend(bot.feed(x))

    for event in stream:
        x = pairer.feed(event)
        if x is not None:
            take(x)
    for x in pairer.flush():
        take(x)
    recording.commands.extend(bot.flush())
    recording.commands.sort(key=lambda c: c.seq)
    device = recording.storage_device
    if device is not None:
        recording.commands = [c for c in recording.commands if (c.bus, c.device) == device]
    recording.times = [c.submitted_at or 0.0 for c in recording.commands]
    for cmd in recording.commands:
        if cmd.status == "good" and cmd.info.opcode == scsi.READ_CAPACITY_10 and \
                len(cmd.data) >= 8:
            last, size = int.from_bytes(cmd.data[:4], "big"), int.from_bytes(cmd.data[4:8],
                                                                             "big")
            recording.capacity = (last + 1, size)
    return recording


def load_capture(path: Path) -> Recording:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    stats = CaptureStats()
    with open(path, "rb") as stream:
        recording = from_events(path.name, list(events(stream, stats)))
    if not recording.commands:
        raise InputError(f"{path}: no mass-storage commands to replay")
    return recording


def load_session(database: object, session_id: int) -> Recording:
    """A stored session, read back from its URB rows."""
    from usbtrace.capture.export import events_of
    from usbtrace.store.database import Database

    assert isinstance(database, Database)
    if not database.session_exists(session_id):
        raise InputError(f"no session {session_id} in {database.display}")
    columns, rows = database.query(
        f"SELECT * FROM urbs WHERE session_id = {int(session_id)} ORDER BY seq")
    recording = from_events(f"session {session_id}",
                            events_of([dict(zip(columns, r)) for r in rows]))
    if not recording.commands:
        raise InputError(f"session {session_id} has no mass-storage commands to replay")
    return recording
