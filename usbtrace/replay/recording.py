"""A recording, opened for replay: a survey of it, then its SCSI commands as a stream.

A capture file or a stored session goes through the same decoding stages as
an import (pairing, Bulk-Only -> SCSI).  Nothing holds the whole recording:
replay needs some facts before the first command (the descriptors, the
storage device, its capacity, how many commands there are), so a first pass
over the source collects them in bounded memory, keeping the commands it
decodes on disk (``usbtrace.replay.spill``), and :meth:`Recording.commands`
yields them again one at a time (decoding afresh whatever the disk could not
hold).  A session is
read from its ``urbs`` rows in ``seq`` order, the order the tracer or the
import paired them in, one row at a time.

What a replay may need to answer commands the stack sends of its own accord
(start-up INQUIRY, READ CAPACITY, MODE SENSE, REQUEST SENSE) is kept from the
survey in bounded indexes: the first command of each CDB (up to
``INDEX_LIMIT`` of them) and the first good command of each opcode.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from construct import ConstructError
from sqlalchemy.exc import SQLAlchemyError

from usbtrace.capture.reader import CaptureStats, events
from usbtrace.decode.bot import BotDecoder, ScsiCommand
from usbtrace.decode.identity import IdentityTracker
from usbtrace.decode.pairing import Exchange, Pairer
from usbtrace.decode.uas import UasDecoder, UasPipes
from usbtrace.errors import DatabaseError, InputError, UsbtraceError
from usbtrace.records import BULK, COMPLETE, CONTROL, SUBMIT, TRANSFER_TYPE_NAMES, Event
from usbtrace.replay.spill import Spill
from usbtrace.storage import scsi
from usbtrace.usb import setup as std
from usbtrace.usb import urb as U

INDEX_LIMIT = 4096  # CDBs whose first command is kept to answer the stack's own commands
INDEX_BYTES = 8 << 20  # and at most this much of their data
DESCRIPTOR_LIMIT = 256  # distinct descriptors kept from control transfers
SESSION_BATCH = 500  # urbs rows fetched at a time

Device = tuple[int | None, int | None]  # (bus, address)


@dataclass
class DeviceSurvey:
    """What the first pass learns about one device's commands."""

    count: int = 0
    first_seq: int | None = None
    capacity: tuple[int, int] | None = None  # (blocks, block size) from READ CAPACITY
    highest_block: int = 0  # one past the highest block a command touched
    by_cdb: dict[bytes, ScsiCommand] = field(default_factory=dict)
    by_opcode: dict[int, ScsiCommand] = field(default_factory=dict)
    indexed_bytes: int = 0

    def take(self, cmd: ScsiCommand) -> None:
        self.count += 1
        if self.first_seq is None:
            self.first_seq = cmd.seq
        info = cmd.info
        if info.lba is not None:
            self.highest_block = max(self.highest_block, info.lba + (info.blocks or 0))
        if cmd.status == "good":
            data = cmd.data
            if info.opcode == scsi.READ_CAPACITY_10 and len(data) >= 8:
                last = int.from_bytes(data[:4], "big")
                if last != 0xFFFFFFFF:  # else READ CAPACITY(16) tells
                    self.capacity = (last + 1, int.from_bytes(data[4:8], "big"))
            elif info.name == "read_capacity_16" and len(data) >= 12:
                self.capacity = (int.from_bytes(data[:8], "big") + 1,
                                 int.from_bytes(data[8:12], "big"))
        size = len(cmd.data)
        cdb = bytes(cmd.cdb)
        if cdb not in self.by_cdb and len(self.by_cdb) < INDEX_LIMIT and \
                self.indexed_bytes + size <= INDEX_BYTES:
            self.by_cdb[cdb] = cmd
            self.indexed_bytes += size
        if cmd.status == "good" and info.opcode not in self.by_opcode and \
                self.indexed_bytes + size <= INDEX_BYTES:
            self.by_opcode[info.opcode] = cmd
            self.indexed_bytes += size


@dataclass
class Recording:
    """A surveyed recording; :meth:`commands` streams its storage device's commands."""

    name: str
    source: Callable[[], Iterator[Event]]  # the recording's events, from the start, anew
    device: Device | None = None
    survey: DeviceSurvey = field(default_factory=DeviceSurvey)
    descriptors: dict[tuple[int, int, int], bytes] = field(default_factory=dict)
    max_lun: bytes | None = None  # the recorded GET MAX LUN reply
    identity: IdentityTracker = field(default_factory=IdentityTracker)
    endpoints: dict[str, int] = field(default_factory=dict)  # "in"/"out" bulk endpoints
    notes: list[str] = field(default_factory=list)  # what the survey found malformed
    uas: UasPipes | None = None  # the UAS pipes, when the host selected a UAS setting
    spill: Spill = field(default_factory=Spill)  # the survey's commands, for later passes

    @property
    def count(self) -> int:
        return self.survey.count

    @property
    def capacity(self) -> tuple[int, int] | None:
        return self.survey.capacity

    def commands(self) -> Iterator[ScsiCommand]:
        """The storage device's commands in order: those the survey kept (see
        ``usbtrace.replay.spill``), then any it could not keep, decoded afresh from the
        source; an :class:`InputError` if they are not the ones surveyed (the source
        changed)."""
        device = self.device
        spill = self.spill
        if device is not None and spill.devices.keys() == {device}:  # its commands alone kept
            count = spill.devices[device]
            yield from spill
        else:
            count = 0
            for cmd in spill:
                if (cmd.bus, cmd.device) == device:
                    count += 1
                    yield cmd
        if not self.spill.complete:
            kept = self.spill.count  # decoded again, and passed over
            for cmd in _decode(self.source(), None):
                if kept:
                    kept -= 1
                    continue
                if (cmd.bus, cmd.device) == device:
                    count += 1
                    if count > self.count:
                        break
                    yield cmd
        if count != self.count:
            raise InputError(f"{self.name}: the recording changed while it was replayed "
                             f"({self.count} commands surveyed, then {count}"
                             f"{' or more' if count > self.count else ''})")

    # ---- the survey --------------------------------------------------------------------

    def _exchange(self, x: Exchange) -> None:
        first = x.first
        setup = first.setup
        if first.transfer_type == CONTROL and setup and len(setup) >= 8:
            data = x.data
            if setup[0] == 0x80 and setup[1] == std.GET_DESCRIPTOR and data:
                key = (setup[3], setup[2], int.from_bytes(setup[4:6], "little"))
                known = self.descriptors.get(key)
                if known is None and len(self.descriptors) >= DESCRIPTOR_LIMIT:
                    pass
                elif known is None or len(data) > len(known):
                    self.descriptors[key] = bytes(data)
            elif setup[:2] == b"\xa1\xfe" and data and self.max_lun is None:
                self.max_lun = bytes(data)
            try:
                self.identity.feed(x)
            except (UsbtraceError, ConstructError) as e:
                self._note(f"a malformed descriptor was left out ({e})")
            pipes = self.identity.uas_pipes(first.bus, first.device)
            if pipes is not None:
                self.uas = pipes
        elif first.transfer_type == BULK and first.endpoint is not None:
            self.endpoints.setdefault("in" if first.endpoint & 0x80 else "out",
                                      first.endpoint)

    def _note(self, note: str) -> None:
        if note not in self.notes and len(self.notes) < 32:
            self.notes.append(note)


def _decode(stream: Iterable[Event],
            on_exchange: Callable[[Exchange], None] | None) -> Iterator[ScsiCommand]:
    """Pairing, then Bulk-Only or UAS -> SCSI (as the import decides: a device whose UAS
    setting is selected goes to the UAS stage), one event in, commands out as they
    finish.  The dispatch is the writer's (``SessionWriter._exchange``), in one loop
    with its look-ups made once: a survey runs it for every record of the recording."""
    pairer = Pairer()
    bot = BotDecoder()
    identity = IdentityTracker()

    def next_seq() -> int:  # one numbering for both stages, as the writer has it
        bot._seq += 1
        return bot._seq

    uas = UasDecoder(next_seq)
    complete, pair = pairer.complete, pairer.feed
    completed, bulk, feed = bot.completed, bot.bulk, bot.feed
    uas_pipes = identity.uas_pipes
    steps: Iterable[tuple[Exchange, bool]]
    for event in itertools.chain(stream, (None,)):
        if event is None:  # the end: submissions never completed, then open commands
            steps = [(x, True) for x in pairer.flush()]
        elif event.kind == COMPLETE:  # one sealed exchange, always
            steps = ((complete(event), True),)
        else:
            steps = pair(event)
        for x, sealed in steps:
            if sealed and on_exchange is not None:
                on_exchange(x)
            if not x.is_urb:  # an IRP's pass: nothing for Bulk-Only or UAS
                continue
            first = x.first
            if sealed and first.transfer_type == CONTROL:  # descriptors ride on these
                try:
                    identity.feed(x)
                except (UsbtraceError, ConstructError):
                    pass  # the survey notes it
            pipes = uas_pipes(first.bus, first.device) if identity.uas_selected else None
            if pipes is not None:
                if sealed:
                    yield from uas.feed(x, pipes)
            elif sealed and x.early:
                yield from completed(x)
            elif first.transfer_type == BULK:
                yield from bulk(x)
            else:
                yield from feed(x)
    yield from sorted(bot.flush() + uas.flush(), key=lambda c: c.seq)


def survey(name: str, source: Callable[[], Iterator[Event]],
           device: Device | None = None) -> Recording:
    """The first pass: what a replay needs before it starts, in bounded memory.  The
    device replayed is ``device`` (bus, address), or the one whose command came first."""
    recording = Recording(name, source)
    devices: dict[Device, DeviceSurvey] = {}
    spill = recording.spill
    for cmd in _decode(source(), recording._exchange):
        spill.add(cmd)
        key = (cmd.bus, cmd.device)
        found = devices.get(key)
        if found is None:
            if len(devices) >= 256:
                continue  # a garbled capture naming ever new devices: not a stick's
            found = devices[key] = DeviceSurvey()
        found.take(cmd)
    spill.seal()
    if device is not None and devices and device not in devices:
        known = ", ".join(_device_name(key) for key in sorted(devices, key=str)[:8])
        raise InputError(f"{name}: no SCSI commands of device {_device_name(device)}; the "
                         f"recording has commands of {known}")
    if devices:
        # the storage device is the one asked for, or the one whose command came first
        recording.device = device if device is not None else \
            min(devices, key=lambda k: devices[k].first_seq or 0)
        recording.survey = devices[recording.device]
        others = {key: found.count for key, found in devices.items()
                  if key != recording.device}
        if others:  # never a silent "all replayed" over part of the recording
            named = ", ".join(f"{_device_name(key)}: {count}"
                              for key, count in sorted(others.items(), key=str)[:8])
            more = ", ..." if len(others) > 8 else ""
            recording._note(
                f"the recording holds {sum(others.values())} more command(s) on "
                f"{len(others)} other device(s) ({named}{more}), which this replay leaves "
                f"out: it replays one storage device, {_device_name(recording.device)}"
                + (" (--recorded-device picks another)" if device is None else ""))
    return recording


def _device_name(key: Device) -> str:
    bus, address = key
    return f"{'?' if bus is None else bus}.{'?' if address is None else address}"


def from_events(name: str, stream: Iterable[Event]) -> Recording:
    """A recording of events already in memory (tests, the pytest plugin)."""
    held = list(stream)
    return survey(name, lambda: iter(held))


def load_capture(path: Path, device: Device | None = None) -> Recording:
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a capture file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():  # a pipe or a device: replay reads the capture twice
        raise InputError(f"{path}: not a regular file; save the capture to a file first")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None

    def source() -> Iterator[Event]:
        try:
            stream = open(path, "rb")
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
        with stream:
            try:
                yield from events(stream, CaptureStats())
            except OSError as e:  # a read error midway: a bad medium, a vanished file
                raise InputError(f"{path}: cannot read: {e.strerror or e}") from None

    recording = survey(path.name, source, device)
    if not recording.count:
        raise InputError(f"{path}: no mass-storage commands to replay")
    return recording


# ---- stored sessions ----------------------------------------------------------------------

TYPE_CODES = {name: code for code, name in TRANSFER_TYPE_NAMES.items()}
FUNCTION_CODES = {name: code for code, name in U.URB_FUNCTION_NAMES.items()}
USBD_CODES = {name: code for code, name in U.USBD_STATUS_NAMES.items()}
URB_COLUMNS = ("seq", "irp_id", "submitted_at", "completed_at", "bus", "device", "endpoint",
               "transfer_type", "urb_function", "direction", "setup", "requested_length",
               "actual_length", "status", "data", "stream_id")


def _status_code(name: str | None) -> int | None:
    if name is None:
        return None
    if name in USBD_CODES:
        return USBD_CODES[name]
    try:
        return int(name, 16) if name.startswith("0x") else None
    except ValueError:
        return None


def _irp_number(text: str | None, seq: int) -> int:
    """An ``urbs.irp_id`` text back as the number it was; a row whose id is not hex
    gets one of its own (still one exchange per row)."""
    try:
        return int(text, 16)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -int(seq)


def session_state(database: Any, session_id: int) -> str:
    """complete / interrupted / failed / running, as ``usbtrace sessions`` shows it."""
    from usbtrace.store.database import effective_state

    _, rows = database.query("SELECT state, writer_host, writer_pid FROM sessions "
                             "WHERE id = :id", {"id": session_id})
    if not rows:
        raise InputError(f"no session {session_id} in {database.display}")
    return effective_state(*rows[0])


def _session_events(database: Any, session_id: int) -> Iterator[Event]:
    """The session's ``urbs`` rows in seq order, a batch at a time, as events, each
    completion at its own time (see ``_time_ordered``)."""
    return _time_ordered(_session_rows(database, session_id))


def _time_ordered(rows: Iterable[tuple[Any, ...]]) -> Iterator[Event]:
    """Each ``urbs`` row (one paired transfer) back into its submission and completion:
    submissions in row (seq) order, each completion where its time puts it, as the
    export's ``events_of`` does.  Rows are in submission order, and a decoder must see a
    completion where it happened: a UAS host keeps several URBs pending, and without
    streams the IU a status URB brought (a Write Ready for the next tag) decides where
    data submitted after it goes.  Only completions still ahead wait.

    One loop, the row's two events built in it (positional, in Event's field order):
    a survey runs it for every URB of the session."""
    ahead: list[tuple[float, int, Event]] = []  # a heap
    push, pop = heapq.heappush, heapq.heappop
    make: Any = Event
    types, functions, pending = TYPE_CODES, FUNCTION_CODES, U.USBD_STATUS_PENDING
    irp_numbers: dict[Any, int] = {}  # a session's URBs share a few ids
    count = 0
    for row in rows:
        (seq, irp_text, submitted_at, completed_at, bus, device, endpoint, transfer_type,
         function_name, direction, setup, requested, actual, status, payload, stream) = row
        irp_id = irp_numbers.get(irp_text)
        if irp_id is None:
            irp_id = _irp_number(irp_text, seq)
            if irp_id >= 0 and len(irp_numbers) < 4096:
                irp_numbers[irp_text] = irp_id
        direction_in = direction == "in"
        data = bytes(payload) if payload else b""
        kind = types.get(transfer_type, CONTROL)
        function = functions.get(function_name) if function_name else None
        if submitted_at is not None:
            while ahead and ahead[0][0] <= submitted_at:
                yield pop(ahead)[2]
            yield make(SUBMIT, submitted_at, irp_id, "capture", None, None, None, None, None,
                       None, None, function, bus, device, endpoint, kind, pending, requested,
                       bytes(setup) if setup else None, b"" if direction_in else data, None,
                       None, None, None, None, stream)
        if completed_at is not None:
            count += 1
            push(ahead, (completed_at, count, make(
                COMPLETE, completed_at, irp_id, "capture", None, None, None, None, None,
                None, None, function, bus, device, endpoint, kind, _status_code(status),
                actual, None, data if direction_in else b"", None, None, None, None, None,
                stream)))
    while ahead:
        yield pop(ahead)[2]


def _session_rows(database: Any, session_id: int) -> Iterator[tuple[Any, ...]]:
    """The session's ``urbs`` rows in seq order, a batch at a time."""
    if database.is_sqlite:  # the DB-API cursor directly: a third faster than Rows
        # a payload stored as TEXT (a hand-edited database) is still bytes, not UTF-8
        columns = [f"CAST({c} AS BLOB)" if c in ("setup", "data") else c for c in URB_COLUMNS]
        raw = database.engine.raw_connection()
        try:
            cursor = raw.driver_connection.execute(
                f"SELECT {', '.join(columns)} FROM urbs WHERE session_id = ? ORDER BY seq",
                (session_id,))
            while rows := cursor.fetchmany(SESSION_BATCH):
                yield from rows
        finally:
            raw.close()
        return
    from sqlalchemy import text

    sql = text(f"SELECT {', '.join(URB_COLUMNS)} FROM urbs WHERE session_id = :sid "
               "ORDER BY seq")
    with database.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=SESSION_BATCH
                                        ).execute(sql, {"sid": session_id})
        for row in result:
            yield tuple(row)


def load_session(database: Any, session_id: int, device: Device | None = None) -> Recording:
    """A stored session, read back from its URB rows, a batch at a time."""
    state = session_state(database, session_id)
    if state != "complete":
        raise InputError(f"session {session_id} is {state}, not complete: its recording "
                         "stops short, so a replay could not tell a regression from the cut")

    def source() -> Iterator[Event]:
        try:
            yield from _session_events(database, session_id)
        except (sqlite3.Error, SQLAlchemyError) as e:
            first = (str(getattr(e, "orig", None) or e).strip().splitlines() or ["?"])[0]
            raise DatabaseError(f"session {session_id}: cannot read its URBs: {first}") from None

    recording = survey(f"session {session_id}", source, device)
    if not recording.count:
        raise InputError(f"session {session_id} has no mass-storage commands to replay")
    return recording
