"""Writing sessions: the decode pipeline feeding batched inserts.

``SessionWriter`` takes events one at a time, runs the decoding stages
(pairing, identity, Bulk-Only -> SCSI) and inserts rows in batches — one
``executemany`` and one transaction per batch, as python-can's SQLite writer
does.  ``Recorder`` is the tracer's sink: a bounded queue drained by a writer
thread, so the I/O path only appends to a deque.  Lossless (the default)
makes the producer wait when the queue is full; lossy drops the record and
counts it in ``sessions.dropped_count`` — never silently.
"""

from __future__ import annotations

import fcntl
import operator
import os
import pickle
import signal
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from usbtrace.decode.bot import BotDecoder, ScsiCommand
from usbtrace.decode.identity import IdentityTracker
from usbtrace.decode.pairing import Exchange, Pairer
from usbtrace.decode.uas import UasDecoder
from usbtrace.errors import DatabaseError
from usbtrace.fs.shadow import Activity, Attributor
from usbtrace.interrupt import Interrupt
from usbtrace.records import (
    BULK,
    COMPLETE,
    CONTROL,
    GAP,
    NS,
    TRANSFER_TYPE_NAMES,
    Event,
    Record,
    RecordSink,
    event_from_record,
    events_from_flat,
    gap_record,
)
from usbtrace.storage.ioctl import IOCTL_NAMES
from usbtrace.store.database import Checkpointer, Database
from usbtrace.store.sqlite_schema import COLUMNS
from usbtrace.usb.urb import URB_FUNCTION_NAMES, USBD_STATUS_NAMES
from usbtrace.wdm.irp import MAJOR_NAMES, minor_name
from usbtrace.wdm.status import status_name

BATCH = 8000  # rows a transaction, at most ...
BATCH_BYTES = 16 << 20  # ... and at most this much payload, so 64 KiB URBs stay bounded


IRP_COLUMNS = tuple(c[0] for c in COLUMNS["irps"])


# irp id -> its text.  A capture reuses a few dozen ids (usbmon's URB addresses, USBPcap's
# IRP addresses: 18 to 49 in the benchmark's captures), and a live stack its IRPs, so the
# text is made once per id, not once per row; the cache is emptied when it reaches HEX_IDS.
_hex_ids: dict[int, str] = {}
HEX_IDS = 4096


def _new_hex_id(value: int) -> str:
    if len(_hex_ids) >= HEX_IDS:
        _hex_ids.clear()
    text = _hex_ids[value] = f"0x{value & 0xFFFFFFFFFFFFFFFF:016x}"
    return text


# (major, minor, ioctl) -> an ``irps`` row's three names.  A live session sends a handful
# of kinds of request (READ, SCSI, SUBMIT_URB for the data path), so each kind is named
# once: no ``minor_name`` call and two dictionary look-ups a row (four rows a read).
_irp_names: dict[tuple[int | None, int | None, int | None],
                 tuple[str, str | None, str | None]] = {}


def _new_irp_names(key: tuple[int | None, int | None, int | None]
                   ) -> tuple[str, str | None, str | None]:
    code, minor, ioctl = key
    major = code if code is not None else -1
    names = (MAJOR_NAMES.get(major) or f"0x{major:02x}", minor_name(major, minor),
             None if ioctl is None else (IOCTL_NAMES.get(ioctl) or f"0x{ioctl:08x}"))
    if len(_irp_names) >= HEX_IDS:
        _irp_names.clear()
    _irp_names[key] = names
    return names


def irp_row(session_id: int, x: Exchange, _ids: dict[int, str] = _hex_ids,
            _names: dict[tuple[int | None, int | None, int | None],
                         tuple[str, str | None, str | None]] = _irp_names) -> tuple[Any, ...]:
    """An ``irps`` row as a tuple in ``IRP_COLUMNS`` order (four a read, live)."""
    s, c = x.submit, x.complete
    first = x.first
    key = (first.major, first.minor, first.ioctl)
    major, minor, ioctl = _names.get(key) or _new_irp_names(key)
    irp_id, parent = x.irp_id, first.parent_irp_id
    return (
        session_id, x.seq, None if irp_id is None else (_ids.get(irp_id) or _new_hex_id(irp_id)),
        None if parent is None else (_ids.get(parent) or _new_hex_id(parent)), x.position,
        major, minor, ioctl,
        status_name(c.status) if c else None, c.information if c else None,
        (c.detail if c and c.detail else first.detail),
        first.offset, first.length if first.offset is not None else None,
        first.file_object, s.ts if s else None, c.ts if c else None,
    )


URB_COLUMNS = tuple(c[0] for c in COLUMNS["urbs"])


def urb_row(session_id: int, x: Exchange, _types: dict[int, str] = TRANSFER_TYPE_NAMES,
            _functions: dict[int, str] = URB_FUNCTION_NAMES,
            _statuses: dict[int, str] = USBD_STATUS_NAMES,
            _ids: dict[int, str] = _hex_ids) -> tuple[Any, ...]:
    """A ``urbs`` row as a tuple in ``URB_COLUMNS`` order (the hot path of imports)."""
    first = x.first
    c = x.complete
    data = x.data
    function = first.urb_function
    status = c.urb_status if c is not None else None
    irp_id = x.irp_id
    return (
        session_id, x.seq, _ids.get(irp_id) or _new_hex_id(irp_id), first.record_number,
        x.submitted_at, x.completed_at, first.bus, first.device, first.endpoint,
        _types.get(first.transfer_type or 0, "unknown"),
        "in" if x.direction_in else "out",
        _functions.get(function) if function is not None else None,
        None if status is None else (_statuses.get(status) or f"0x{status:08x}"),
        x.requested_length, x.actual_length, len(data), 1 if x.truncated else 0, first.setup,
        data or None,
        first.stream_id,
    )


INT64_MAX = (1 << 63) - 1  # BIGINT columns are signed 64-bit


def storable_lba(lba: int | None) -> int | None:
    """``lba``, or None when a signed 64-bit column cannot hold it (READ(16) carries 64
    unsigned bits): the row then says "no LBA" and its ``cdb`` keeps the true value."""
    return None if lba is None or lba > INT64_MAX else lba


COMMAND_COLUMNS = tuple(c[0] for c in COLUMNS["scsi_commands"])
# an Activity's fields in file_activity's order after (session_id, id), as a tuple, in C
ACTIVITY_FIELDS = operator.attrgetter("scsi_seq", "path", "operation", "kind", "file_offset",
                                      "length", "lba", "command_offset", "detail")


def command_row(session_id: int, cmd: ScsiCommand) -> tuple[Any, ...]:
    """A ``scsi_commands`` row as a tuple in ``COMMAND_COLUMNS`` order (no dict to build
    and pick apart again for every command)."""
    sense = cmd.sense
    info = cmd.info
    lba = info.lba
    irp_id = cmd.irp_id
    return (
        session_id, cmd.seq, cmd.bus, cmd.device, cmd.lun, cmd.tag, info.opcode, info.name,
        cmd.cdb, None if lba is None or lba > INT64_MAX else lba, info.blocks,
        cmd.data_direction, cmd.expected_length, cmd.data_length, 1 if cmd.data_truncated else 0,
        cmd.residue, cmd.status,
        sense.key_name if sense else None, sense.asc if sense else None,
        sense.ascq if sense else None,
        None if irp_id is None else (_hex_ids.get(irp_id) or _new_hex_id(irp_id)),
        cmd.cbw_seq, cmd.csw_seq, cmd.submitted_at, cmd.completed_at,
    )


def _bind_plainly() -> None:
    """Bind ``None``, ``bytes`` and ``bool`` without the sqlite3 module's search for an
    adapter.  Only ``int``, ``float``, ``str`` and ``bytearray`` skip that search; for
    any other value, CPython 3.11 looks ``__adapt__`` up on the protocol type, and the
    miss formats an ``AttributeError`` message it then drops: about 3,000 instructions a
    value, a sixth of an import's inserts (a ``urbs`` row has four or five such values).
    A registered adapter is found first.  Each returns what was bound before: ``None``
    (``{}.get`` of anything: NULL), the same ``bytes``, and ``int`` of a ``bool`` (which
    the module bound as an integer anyway).  None of these types is one whose adapter
    switches the module's fast path off (``int``, ``float``, ``str``, ``bytearray``)."""
    plain: list[tuple[type[Any], Callable[[Any], Any]]] = [
        (type(None), {}.get), (bytes, bytes), (bool, int)]
    for kind, adapter in plain:
        if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:  # a caller's own stays
            sqlite3.register_adapter(kind, adapter)


_bind_plainly()


# Columns NULL in every row of many imported batches: ``stream_id`` (no capture format
# has it), ``urb_function`` (usbmon has none), a command's sense (none without a CHECK
# CONDITION), a file row's offset and detail.  A batch whose rows all leave one NULL is
# inserted without it (``BulkInsert.execute``): the column gets NULL all the same.  Live
# batches of the data path leave four more NULL in every row: a URB's ``record_number``
# (a live record has no place in a file) and ``setup`` (bulk transfers have none), an
# IRP's ``minor`` and ``detail`` (READ, SCSI and SUBMIT_URB have neither): two of the
# three ``urbs`` rows and four ``irps`` rows a 64 KiB read.
SPARSE_COLUMNS = {"urbs": ("record_number", "urb_function", "setup", "stream_id"),
                  "irps": ("minor", "detail"),
                  "scsi_commands": ("sense_key", "asc", "ascq"),
                  "file_activity": ("file_offset", "detail")}


class BulkInsert:
    """``executemany`` of plain tuples through the driver: the ORM's per-row work
    costs more than SQLite's own insert for rows this size.  ``columns`` are the
    table's (name, nullable without a server default, boolean), as in
    ``sqlite_schema.COLUMNS``; ``execute`` takes a ``sqlite3`` connection (a SQLite
    file) or a SQLAlchemy one (a URL)."""

    def __init__(self, name: str, columns: tuple[tuple[str, bool, bool], ...],
                 paramstyle: str, quote: Callable[[str], str]) -> None:
        names_ = [c[0] for c in columns]
        if paramstyle == "qmark":
            marks = ", ".join("?" for _ in names_)
        elif paramstyle == "numeric":
            marks = ", ".join(f":{i + 1}" for i in range(len(names_)))
        elif paramstyle == "named":
            marks = ", ".join(f":{c}" for c in names_)
        elif paramstyle == "pyformat":
            marks = ", ".join(f"%({c})s" for c in names_)
        else:  # format
            marks = ", ".join("%s" for _ in names_)
        self.named = paramstyle in ("named", "pyformat")
        self.columns = names_
        self._quote = quote
        self.table = quote(name)
        names = ", ".join(quote(c) for c in names_)  # "offset" is reserved in PostgreSQL
        self.sql = f"INSERT INTO {self.table} ({names}) VALUES ({marks})"
        # where a batch may leave out its all-NULL columns: SQLite's ``?`` marks, and
        # only nullable columns without a default (left out, they are NULL)
        self.sparse = tuple(
            i for i, (column, nullable, _) in enumerate(columns)
            if paramstyle == "qmark" and column in SPARSE_COLUMNS.get(name, ()) and nullable)
        self._narrow: dict[tuple[int, ...], tuple[str, Callable[[Any], Any]]] = {}
        # rows bind their flags as 0/1, which SQLite stores as a bool anyway; a server
        # with a real boolean type (PostgreSQL) refuses an integer for one
        self.booleans = () if paramstyle == "qmark" else tuple(
            i for i, (_, _, boolean) in enumerate(columns) if boolean)

    def execute(self, conn: Any, params: list[Any]) -> None:
        if self.booleans and params and isinstance(params[0], tuple):
            params = [self._with_booleans(p) for p in params]
        if self.named and params and isinstance(params[0], tuple):
            params = [dict(zip(self.columns, p)) for p in params]
        elif self.sparse and len(params) > 1 and isinstance(params[0], tuple):
            absent = self._absent(params)
            if absent:
                sql, pick = self._narrowed(absent)
                _executemany(conn, sql, list(map(pick, params)))
                return
        _executemany(conn, self.sql, params)

    def _with_booleans(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i in self.booleans:
            if values[i] is not None:
                values[i] = bool(values[i])
        return tuple(values)

    def _absent(self, params: list[tuple[Any, ...]]) -> tuple[int, ...]:
        """The sparse columns that are None in every row.  The sqlite3 module binds
        None, like ``bytes`` and ``bool``, through its adapter lookup (a tuple built,
        hashed and looked up, then a call: about 1,300 instructions a value, where an
        ``int`` or ``str`` is bound directly); a column left out costs nothing."""
        first = params[0]
        count = len(params)
        return tuple(i for i in self.sparse if first[i] is None and
                     list(map(operator.itemgetter(i), params)).count(None) == count)

    def _narrowed(self, absent: tuple[int, ...]) -> tuple[str, Callable[[Any], Any]]:
        """The INSERT without the columns ``absent``, and what picks the rest of a row."""
        narrow = self._narrow.get(absent)
        if narrow is None:
            keep = [i for i in range(len(self.columns)) if i not in absent]
            names = ", ".join(self._quote(self.columns[i]) for i in keep)
            marks = ", ".join("?" for _ in keep)
            narrow = self._narrow[absent] = (
                f"INSERT INTO {self.table} ({names}) VALUES ({marks})",
                operator.itemgetter(*keep))
        return narrow


def _executemany(conn: Any, sql: str, params: list[Any]) -> None:
    if isinstance(conn, sqlite3.Connection):
        conn.executemany(sql, params)
    else:
        conn.exec_driver_sql(sql, params)


def _quote_sqlite(name: str) -> str:
    return f'"{name}"'


INSERTED_TABLES = ("irps", "urbs", "scsi_commands", "file_activity", "gaps")


def bulk_inserts(database: Database) -> dict[str, BulkInsert]:
    """The INSERTs of an import's tables: for a SQLite file without SQLAlchemy, whose
    dialect otherwise gives the marks and the quoting."""
    if database.path is not None:
        paramstyle, quote = "qmark", _quote_sqlite
    else:
        dialect = database.engine.dialect
        paramstyle, quote = dialect.paramstyle, dialect.identifier_preparer.quote
    return {name: BulkInsert(name, COLUMNS[name], paramstyle, quote)
            for name in INSERTED_TABLES}


def insert_batch(database: Database, bulk: dict[str, BulkInsert],
                 batch: list[tuple[str, Any]]) -> None:
    """One transaction for one batch of rows of several tables, and the session's
    counts as of that batch: whenever the writer stops, the two agree."""
    if database.path is not None:
        with database._begin() as conn:
            for name, params in batch:
                if name == "sessions":
                    session_id, counts = params
                    database._update_session(conn, session_id, counts)
                else:
                    bulk[name].execute(conn, params)
        return
    from sqlalchemy import update

    from usbtrace.store.schema import SessionRow

    with database.engine.begin() as conn:
        for name, params in batch:
            if name == "sessions":
                session_id, counts = params
                conn.execute(update(SessionRow).where(SessionRow.id == session_id)
                             .values(**counts))
            else:
                bulk[name].execute(conn, params)


INSERTER_PIPE = 1 << 20  # bytes the pipe to the inserter holds (Linux; the default is 64 KiB)
# A batch goes to the inserter as pieces of at most PIECE_ROWS rows of one table, then
# a commit mark.  Each piece: its header (its kind, its size in bytes), then the pickled
# ``(table, rows)``.  Pieces this small are made and freed in buffers each process
# reuses: a whole batch pickled or unpickled at once (8,000 rows, several MiB) faulted
# its memory in anew every time (a million USBPcap records forked: 109,000 minor page
# faults for the two processes before, 38,000 in pieces; peak RSS 78 and 75 MiB).
PIECE_HEADER = struct.Struct("<BQ")
PIECE_ROWS, PIECE_COMMIT, PIECE_END = 0, 1, 2  # the kinds of piece
PIECE_SIZE = 512  # rows a piece, at most


def encode_piece(piece: tuple[str, Any]) -> bytes:
    """Rows of one table, or the session's counts, as bytes for the inserter.  (marshal
    was tried: as many instructions as pickle for these rows, within 1% either way,
    since pickle's memo already shares an URB id's text, "bulk", "in".)"""
    return pickle.dumps(piece, protocol=pickle.HIGHEST_PROTOCOL)


def _read_batch(stream: Any) -> list[tuple[str, Any]] | None:
    """The next batch from the importing process, whole, or None at the end.  A batch
    cut short (the importing process died) raises EOFError: it is never committed."""
    batch: list[tuple[str, Any]] = []
    while True:
        header = stream.read(PIECE_HEADER.size)
        if len(header) < PIECE_HEADER.size:
            raise EOFError("the importing process is gone")
        kind, size = PIECE_HEADER.unpack(header)
        if kind == PIECE_COMMIT:
            return batch
        if kind == PIECE_END:
            return None
        data = stream.read(size)
        if len(data) < size:
            raise EOFError("the importing process is gone")
        name, rows = pickle.loads(data)
        if batch and batch[-1][0] == name and name != "sessions":
            batch[-1][1].extend(rows)  # the next piece of the same table's rows
        else:
            batch.append((name, rows))


def _inserter_main(target: str, data_fd: int, parent_fd: int, reply: Any) -> None:
    """The insert process: its own connection, batches in order, the first error back.

    It holds no copy of the parent's end of the pipe and ignores Ctrl-C, so it ends
    exactly when the parent closes the pipe or dies: it never outlives the command.
    A batch cut short by the parent's death is never committed.
    """
    os.close(parent_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    error = None
    try:
        database = Database(target, create=False)
        bulk = bulk_inserts(database)
        with os.fdopen(data_fd, "rb", buffering=INSERTER_PIPE) as stream:
            while (batch := _read_batch(stream)) is not None:
                if error is None:
                    try:
                        insert_batch(database, bulk, batch)
                    except Exception as e:
                        error = f"{type(e).__name__}: {e}"
        database.engine.dispose()
        reply.send(error)
        reply.close()
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):
        pass  # the parent is gone (a batch cut short): nothing to report to
    except Exception as e:
        try:
            reply.send(error or f"{type(e).__name__}: {e}")
        except OSError:
            pass
    os._exit(0)  # skip finalizers: never touch the parent's inherited connections


class ProcessInserter:
    """Insert batches in a forked process, so storage runs beside decoding.

    A thread would not help: the sqlite3 module binds every parameter under the
    interpreter lock.  Each batch goes through a pipe in pieces of a few hundred rows,
    each pickled after a small header (``encode_piece``), then a commit mark; a large
    pipe lets the two processes take turns less often.  A full pipe makes
    the decoder wait, which bounds memory.
    """

    def __init__(self, database: Database) -> None:
        import multiprocessing  # only where a process is forked: not on start-up's path

        context = multiprocessing.get_context("fork")
        read_fd, write_fd = os.pipe()
        try:
            fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), INSERTER_PIPE)
        except OSError:
            pass
        self._reply, reply_end = context.Pipe(duplex=False)
        self._process = context.Process(target=_inserter_main,
                                        args=(database.target, read_fd, write_fd, reply_end),
                                        daemon=True)
        self._process.start()
        os.close(read_fd)
        reply_end.close()
        self._stream = os.fdopen(write_fd, "wb", buffering=INSERTER_PIPE)

    def put(self, batch: list[tuple[str, Any]]) -> None:
        write = self._stream.write
        for name, rows in batch:
            pieces = [rows] if name == "sessions" else \
                [rows[at:at + PIECE_SIZE] for at in range(0, len(rows), PIECE_SIZE)]
            for piece in pieces:
                data = encode_piece((name, piece))
                write(PIECE_HEADER.pack(PIECE_ROWS, len(data)))
                write(data)
        write(PIECE_HEADER.pack(PIECE_COMMIT, 0))
        self._stream.flush()

    def close(self) -> None:
        error: str | None
        try:
            self._stream.write(PIECE_HEADER.pack(PIECE_END, 0))
            self._stream.flush()
        except OSError:
            pass  # it is gone: its reply, if it left one, says why
        try:
            error = self._reply.recv()
        except (EOFError, OSError):
            error = "the storing process ended early"
        try:
            self._stream.close()
        except OSError:
            pass
        self._reply.close()
        self._process.join()
        if error is not None:
            raise DatabaseError(f"storing rows failed: {error}")


class SessionWriter:
    """Decode events and insert the rows of one session."""

    def __init__(self, database: Database, session_id: int, batch: int = BATCH,
                 background: bool = False, attribute_files: bool = True,
                 flush_every: float | None = None) -> None:
        """``flush_every``: commit at least this often (seconds) while events come, so
        a session fed live is queryable as it grows; None commits by batch size only."""
        self.database = database
        self.flush_every = flush_every
        self._flush_due = time.monotonic() + flush_every if flush_every is not None else 0.0
        self.session_id = session_id
        self.batch = batch
        self.pairer = Pairer()
        self.bot = BotDecoder()
        self.uas = UasDecoder(self._next_command_seq)
        self.identity = IdentityTracker()
        self.records = 0
        self.commands = 0
        self.dropped = 0  # records the source lost (a lossy tracer's gaps)
        self._gap_dropped = 0  # of those, the ones whose place is known (the gaps table)
        self.unanswered_out = 0  # bulk OUT submissions with data whose completion never came
        self.last_ts = 0.0
        self.notes: str | None = None  # the session's notes, once closed
        self._irps: list[tuple[Any, ...]] = []
        self._urbs: list[tuple[Any, ...]] = []
        self._cmds: list[tuple[Any, ...]] = []
        self.attribute_files = attribute_files
        # one shadow volume per logical unit: two sticks in one capture never mix
        self.attributors: dict[tuple[int | None, int | None, int], Attributor] = {}
        self._warmed: Attributor | None = None
        self._files: list[tuple[Any, ...]] = []
        self._gaps: list[tuple[Any, ...]] = []
        self._gap_count = 0
        self._activity_id = 0
        self._batch_bytes = 0
        self._rows = 0  # urbs and irps rows held for the next batch
        self.unstorable_lbas: list[int] = []  # seqs of commands whose LBA is past INT64_MAX
        self._bulk = bulk_inserts(database)
        self._inserter = ProcessInserter(database) if background else None
        # the live storing process's checkpoints, off its path (``Database.checkpoint_apart``)
        self.checkpointer: Checkpointer | None = None

    def feed(self, event: Event) -> None:
        if event.kind == GAP:
            self.gap(event)
            return
        self.records += 1
        if event.ts > self.last_ts:
            self.last_ts = event.ts
        if event.kind == COMPLETE:  # one sealed exchange, always
            self._exchange(self.pairer.complete(event))
            return
        for x, sealed in self.pairer.feed(event):
            self._exchange(x, sealed)

    def feed_all(self, events: Iterable[Event], stop: Interrupt | None = None) -> None:
        """``feed`` each event until ``stop.requested`` (checked after each): an import's
        loop, with the lookups ``feed`` makes for every record made once."""
        complete = self.pairer.complete
        pair = self.pairer.feed
        exchange = self._exchange
        for event in events:
            kind = event.kind
            if kind == GAP:
                self.gap(event)
            else:  # as in feed
                self.records += 1
                ts = event.ts
                if ts > self.last_ts:
                    self.last_ts = ts
                if kind == COMPLETE:
                    exchange(complete(event))
                else:
                    for x, sealed in pair(event):
                        exchange(x, sealed)
            if stop is not None and stop.requested:
                return

    def _exchange(self, x: Exchange, sealed: bool = True) -> None:
        """One step of pairing: a row once the exchange is sealed, and its meaning to the
        Bulk-Only stage at the record that carries its bytes (see ``decode.pairing``)."""
        if sealed:
            if x.position != "capture":
                self._irps.append(irp_row(self.session_id, x))
                self._rows += 1
            if x.is_urb:
                self._urbs.append(urb_row(self.session_id, x))
                self._rows += 1
                self._batch_bytes += len(x.data)
                if x.first.transfer_type == CONTROL:  # descriptors ride on control transfers
                    self.identity.feed(x)
                if x.early and x.complete is None:
                    self.unanswered_out += 1
        if x.is_urb:
            first = x.first
            # a device whose selected setting is UAS goes to the UAS stage, any other to BOT;
            # UAS reads whole exchanges, so it takes each once, sealed
            pipes = self.identity.uas_pipes(first.bus, first.device) \
                if self.identity.uas_selected else None
            if pipes is not None:
                commands = self.uas.feed(x, pipes) if sealed else []
            elif sealed and x.early:
                commands = self.bot.completed(x)
            elif first.transfer_type == BULK:  # most exchanges: no dispatch in between
                commands = self.bot.bulk(x)
            else:
                commands = self.bot.feed(x)
            for cmd in commands:
                self._command(cmd)
        if self._rows >= self.batch or self._batch_bytes >= BATCH_BYTES:
            self.flush()
        elif self.flush_every is not None and time.monotonic() >= self._flush_due:
            self.flush()

    def gap(self, event: Event) -> None:
        """Records were dropped here: end every exchange and command in flight, so
        nothing is paired or decoded across the gap, and say where it is."""
        self._drain()
        self.dropped += event.information or 0
        self._gap_dropped += event.information or 0
        self._gap_count += 1
        self._gaps.append((self.session_id, self.pairer.next_seq, event.ts,
                           event.information or 0))

    def _drain(self) -> None:
        for x in self.pairer.flush():
            self._exchange(x)
        for cmd in self.bot.flush():
            self._command(cmd)
        for cmd in self.uas.flush():
            self._command(cmd)

    def _next_command_seq(self) -> int:
        """One numbering for the session's commands, Bulk-Only or UAS."""
        self.bot._seq += 1
        return self.bot._seq

    def _command(self, cmd: ScsiCommand, _fields: Callable[[Activity], tuple[Any, ...]]
                 = ACTIVITY_FIELDS) -> None:
        self.commands += 1
        self._cmds.append(command_row(self.session_id, cmd))
        info = cmd.info
        lba = info.lba
        if lba is not None and lba > INT64_MAX:  # ``storable_lba``, inline
            self.unstorable_lbas.append(cmd.seq)
            lba = None
        if self.attribute_files:
            key = (cmd.bus, cmd.device, cmd.lun)
            attributor = self.attributors.get(key)
            if attributor is None:
                attributor = self.attributors[key] = self._warmed or Attributor()
                self._warmed = None
            rows = attributor.feed(cmd.seq, info.opcode, lba, info.blocks, cmd.data,
                                   cmd.status)
            if rows:  # none finished by this command: nothing to add (``_activity``, inline)
                sid = self.session_id
                at = self._activity_id
                append = self._files.append
                for row in rows:
                    at += 1
                    append((sid, at) + _fields(row))
                self._activity_id = at

    def _activity(self, rows: list[Activity], _fields: Callable[[Activity], tuple[Any, ...]]
                  = ACTIVITY_FIELDS) -> None:
        sid = self.session_id
        at = self._activity_id
        append = self._files.append
        for row in rows:
            at += 1
            append((sid, at) + _fields(row))
        self._activity_id = at

    def flush(self) -> None:
        if self.flush_every is not None:
            self._flush_due = time.monotonic() + self.flush_every
        if not (self._irps or self._urbs or self._cmds or self._files or self._gaps):
            return
        batch: list[tuple[str, Any]] = [
            (name, rows)
            for name, rows in (("irps", self._irps), ("urbs", self._urbs),
                               ("scsi_commands", self._cmds), ("file_activity", self._files),
                               ("gaps", self._gaps))
            if rows]
        batch.append(("sessions", (self.session_id, {
            "record_count": self.records, "command_count": self.commands,
            "duration": self.last_ts, "dropped_count": self.dropped})))
        self._irps, self._urbs, self._cmds, self._files, self._gaps = [], [], [], [], []
        payload = self._batch_bytes
        self._batch_bytes = self._rows = 0
        if self._inserter is not None:
            self._inserter.put(batch)
        elif self.checkpointer is not None:
            self.checkpointer.begin()
            insert_batch(self.database, self._bulk, batch)
            self.checkpointer.committed(payload)
        else:
            insert_batch(self.database, self._bulk, batch)

    def continue_volume(self, commands: Iterable[tuple[int, int, int | None, int | None, bytes,
                                                        str]]) -> None:
        """Start attribution from an earlier session's view of the medium: the first
        logical unit this session sees takes it over."""
        if self.attribute_files:
            self._warmed = Attributor()
            self._warmed.warm(commands)

    def decoding_notes(self) -> list[str]:
        """What a reader of the session should know about how it decoded."""
        notes = []
        if self._gap_dropped:
            notes.append(f"{self._gap_dropped} records were dropped in {self._gap_count} gaps "
                         "(see the gaps table); no command is decoded across a gap")
        if self.unanswered_out:
            notes.append(f"{self.unanswered_out} bulk OUT transfers with data have no completion "
                         "record (a capture of only the records that carry data, as USBPcap "
                         "writes or Wireshark exports after a filter, or one that ended first): "
                         "their length is the length submitted, and a stall on them would not "
                         "show")
        if self.pairer.evicted:
            notes.append(f"{self.pairer.evicted} submissions waited past the limit of pending "
                         "exchanges and were stored without their completion")
        orphans = self.bot.orphans({(i.bus, i.device) for i in self.identity.devices.values()
                                    if i.mass_storage_interfaces})
        if orphans:
            notes.append(f"{orphans} bulk transfers belonged to no command (the "
                         "capture started or ended mid-command)")
        unknown = self.bot.undecoded({(i.bus, i.device) for i in self.identity.devices.values()
                                      if i.interfaces_known})
        if unknown:
            where = ", ".join(f"{n} on bus {bus} device {dev}"
                              for (bus, dev), n in sorted(unknown.items(), key=str)[:20])
            if len(unknown) > 20:
                where += f" and on {len(unknown) - 20} more devices"
            notes.append(f"bulk transfers not decoded: {where} ({sum(unknown.values())} in all): "
                         "the capture holds neither their device's descriptors nor a "
                         "Bulk-Only CBW, so what they carry is unknown (a UAS device's "
                         "commands need the interface descriptors and the SET_INTERFACE that "
                         "selects UAS, sent before the capture began)")
        if self.unstorable_lbas:
            seqs = ", ".join(map(str, self.unstorable_lbas[:20]))
            notes.append(f"{len(self.unstorable_lbas)} commands name an LBA above 2^63-1, "
                         f"which the lba column cannot hold: lba is NULL and the cdb holds it "
                         f"(scsi seq {seqs}{', ...' if len(self.unstorable_lbas) > 20 else ''})")
        if self.identity.malformed:
            listed = "; ".join(f"record {n}: {why}" for n, why in self.identity.malformed[:20])
            notes.append(f"{len(self.identity.malformed)} malformed descriptors were not used: "
                         f"{listed}")
        notes += self.uas.notes([(i.bus, i.device) for i in self.identity.devices.values()
                                 if 0x62 in i.storage_protocols and i.uas is None])
        for attributor in self.attributors.values():
            notes += attributor.notes()  # file attribution that metadata cut short
        return notes

    def close(self, dropped: int = 0, malformed: int = 0, notes: str | None = None,
              time_origin: float | None = None, state: str = "complete") -> None:
        """Flush what the stages still hold and give the session its final state.

        ``dropped``: what the source says it lost in all; the gaps fed count too, so
        the session keeps the larger of the two."""
        self._drain()
        for attributor in self.attributors.values():
            self._activity(attributor.flush())
        self.dropped = max(dropped, self.dropped)
        self.flush()
        if self._inserter is not None:
            self._inserter.close()
        notes = "; ".join([n for n in [notes, *self.decoding_notes()] if n]) or None
        self.notes = notes  # what the session's notes say, for the command to show
        devices = [
            {"session_id": self.session_id, "bus": i.bus, "device": i.device, "vid": i.vid,
             "pid": i.pid, "device_class": i.device_class,
             "manufacturer": i.text("manufacturer"), "product": i.text("product"),
             "serial": i.text("serial"),
             "mass_storage_interfaces": ",".join(map(str, i.mass_storage_interfaces)) or None}
            for i in self.identity.devices.values()
        ]
        self.database.finish_session(
            self.session_id, devices, record_count=self.records, dropped_count=self.dropped,
            malformed_count=malformed, command_count=self.commands, duration=self.last_ts,
            state=state, notes=notes, time_origin=time_origin)


SHIP_BYTES = 1 << 20  # payload bytes per message to the storing process, at most
PROCESS_QUEUE = 4 << 20  # a lossless queue's bound, in bytes, with a storing process
FRAME = struct.Struct("<BII")  # kind, bytes of pickled fields, bytes of payloads
BATCH_FRAME, CLOSE_FRAME = 0, 1
IOV_MAX = 512  # buffers per writev(2), well under the kernel's 1024


def _write_all(fd: int, buffers: list[Any]) -> None:
    """writev(2) until every buffer is written: the payloads go from the tracer's bytes
    to the pipe without a copy in this process."""
    at = 0
    while at < len(buffers):
        written = os.writev(fd, buffers[at:at + IOV_MAX])
        while written:
            size = len(buffers[at])
            if written >= size:
                written -= size
                at += 1
            else:
                buffers[at] = memoryview(buffers[at])[written:]
                written = 0


def _read_exact(fd: int, size: int) -> memoryview:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("the recording process is gone")
        got += n
    return view


_FIELDS_OF, _PAYLOAD_OF = operator.itemgetter(0), operator.itemgetter(1)


def _ship_records(fd: int, records: list[Record]) -> None:
    """One message: the records' fields pickled, then their payloads as they are."""
    payloads = list(map(_PAYLOAD_OF, records))
    lengths = list(map(len, payloads))
    meta = pickle.dumps((list(map(_FIELDS_OF, records)), lengths),
                        protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, [FRAME.pack(BATCH_FRAME, len(meta), sum(lengths)), meta,
                    *filter(None, payloads)])


def _receive(fd: int) -> tuple[int, Any]:
    """The next message: (BATCH_FRAME, events) or (CLOSE_FRAME, arguments)."""
    kind, meta_size, total = FRAME.unpack(_read_exact(fd, FRAME.size))
    meta = pickle.loads(_read_exact(fd, meta_size))
    if kind == CLOSE_FRAME:
        return kind, meta
    fields, lengths = meta
    payloads = _read_exact(fd, total) if total else memoryview(b"")
    return kind, events_from_flat(fields, lengths, payloads)


def _storing_main(writer: SessionWriter, data_fd: int, parent_fd: int, reply: Any) -> None:
    """The live storing process: decode, attribute and insert what the tracer queued.

    It holds no copy of the parent's end of the pipe and ignores Ctrl-C, so it ends
    when the parent closes the pipe or dies (a batch not yet committed is lost, as
    the session's counts say).  After an error it keeps reading, so the parent never
    blocks on a full pipe, and reports the error when asked to close."""
    os.close(parent_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the parent's pooled connections are the parent's: open our own, which leave the
    # WAL's checkpoints to a thread
    writer.database.engine.dispose(close=False)
    try:
        writer.checkpointer = writer.database.checkpoint_apart()
    except sqlite3.Error:  # no thread: SQLite's own checkpoints, inside the commits
        writer.checkpointer = None
    error: str | None = None
    try:
        while True:
            kind, message = _receive(data_fd)
            if kind == BATCH_FRAME:
                if error is None:
                    try:
                        writer.feed_all(message)
                    except Exception as e:
                        error = f"{type(e).__name__}: {e}"
                continue
            dropped, notes, state = message
            if error is None:
                try:
                    writer.close(dropped=dropped, notes=notes, state=state)
                except Exception as e:
                    error = f"{type(e).__name__}: {e}"
            if writer.checkpointer is not None:
                writer.checkpointer.close()
                if writer.checkpointer.error is not None and error is None:
                    error = f"checkpointing failed: {writer.checkpointer.error}"
            writer.database.engine.dispose()
            reply.send((error, writer.records, writer.commands, writer.dropped,
                        writer.last_ts))
            reply.close()
            break
    except (EOFError, OSError):
        pass  # the parent is gone: nothing to report to
    except Exception as e:  # a garbled message: say so at close, without a traceback
        try:
            reply.send((f"{type(e).__name__}: {e}", 0, 0, 0, 0.0))
        except OSError:
            pass
    os._exit(0)  # skip finalizers: never touch the parent's inherited objects


class Recorder(RecordSink):
    """The tracer's sink: append its flat records to a bounded deque; a thread decodes
    and stores them.

    The bound is memory, not a count: payloads are up to 64 KiB each, so
    ``capacity`` is bytes of queued payload (plus a fixed cost per record).
    Each counter has one writer thread, so no lock is needed on the hot path.

    With ``process`` (the default when no ``consume`` is given, and the platform
    forks), the thread only ships the records, as tuples, through a pipe to a
    forked storing process that runs the whole ``SessionWriter`` (pairing,
    decoding, file attribution, inserts): the I/O path's process keeps one core to
    itself.  A thread could not, because decoding and binding parameters hold the
    interpreter lock.  A full pipe makes the thread wait, then the queue fills, so
    memory stays bounded and a lossless tracer waits as before.
    """

    RECORD_COST = 256  # bytes charged per record on top of its payload

    def __init__(self, writer: SessionWriter, capacity: int = 64 << 20, lossy: bool = False,
                 consume: Callable[[Event], None] | None = None,
                 process: bool | None = None) -> None:
        if capacity < self.RECORD_COST:
            raise ValueError(f"queue capacity must be at least {self.RECORD_COST} bytes")
        self.writer = writer
        self.capacity = capacity
        self.lossy = lossy
        self.dropped = 0
        self._gap = 0  # records dropped since the last one queued
        self._gap_ts = 0  # the counter (ns) of the last one dropped
        self.waits = 0  # times a lossless producer had to wait
        self._consume = consume or writer.feed
        self._queue: deque[Record] = deque()
        self._produced = 0  # bytes queued, written by the producer only
        self._consumed = 0  # bytes taken, written by the writer thread only
        self._wake = threading.Event()
        self._room = threading.Event()
        self._stop = False
        self._error: BaseException | None = None
        if process is None:
            process = consume is None and writer._inserter is None and _can_fork(writer)
        if process and not lossy:
            # a lossless queue in front of a slower storing process is full all the time:
            # a small one keeps the payloads in flight in the CPU's caches (the tracer's
            # copies and the pipe's reads then cost half as much) and stores as fast
            self.capacity = min(capacity, PROCESS_QUEUE)
        self._fd = -1  # the write end of the pipe to the storing process
        self._reply: Any = None
        self._process: Any = None
        if process:
            import multiprocessing  # as in ProcessInserter

            context = multiprocessing.get_context("fork")
            read_fd, self._fd = os.pipe()
            try:  # fewer, larger hops through the pipe (Linux; the default is 64 KiB)
                fcntl.fcntl(self._fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), SHIP_BYTES)
            except OSError:
                pass
            self._reply, reply_end = context.Pipe(duplex=False)
            self._process = context.Process(target=_storing_main,
                                            args=(writer, read_fd, self._fd, reply_end),
                                            daemon=True)
            self._process.start()
            os.close(read_fd)
            reply_end.close()
        self._thread = threading.Thread(target=self._ship if process else self._run,
                                        name="usbtrace-writer", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        return self._produced - self._consumed

    def take(self, record: Record) -> None:
        cost = len(record[1]) + self.RECORD_COST
        if self._produced - self._consumed + cost > self.capacity:
            if self.lossy:
                self.dropped += 1
                self._gap += 1
                self._gap_ts = record[0][1]
                return
            self.waits += 1
            while self._produced - self._consumed + cost > self.capacity and self._queue:
                self._room.clear()
                self._wake.set()
                if self._error is not None:
                    raise RuntimeError("the writer thread failed") from self._error
                self._room.wait(0.05)
        if self._gap:  # the writer must know where records are missing
            self._queue.append(gap_record(record[0][1], self._gap))
            self._produced += self.RECORD_COST
            self._gap = 0
        self._produced += cost
        queue = self._queue
        queue.append(record)
        # one wake-up as the queue reaches 64 records (Event.set takes a lock and
        # notifies); a drain that finds it empty waits at most 10 ms for the next
        if len(queue) == 64:
            self._wake.set()

    def _run(self) -> None:
        queue = self._queue
        consume = self._consume
        cost = self.RECORD_COST
        try:
            while True:
                while queue:
                    taken = 0
                    for _ in range(min(len(queue), 1024)):
                        record = queue.popleft()
                        taken += len(record[1]) + cost
                        consume(event_from_record(record))
                    self._consumed += taken
                    self._room.set()
                if self._stop and not queue:
                    return
                self._wake.wait(0.01)
                self._wake.clear()
        except BaseException as e:  # surfaced on close(): never lose data silently
            self._error = e
            self._room.set()

    def _ship(self) -> None:
        """Hand the queued records to the storing process, about a MiB a message."""
        queue = self._queue
        popleft = queue.popleft
        cost = self.RECORD_COST
        fd = self._fd
        try:
            while True:
                while queue:
                    taken = 0
                    batch: list[Record] = []
                    append = batch.append
                    for _ in range(min(len(queue), 4096)):
                        record = popleft()
                        append(record)
                        taken += len(record[1])
                        if taken >= SHIP_BYTES:
                            break
                    _ship_records(fd, batch)
                    self._consumed += taken + cost * len(batch)
                    self._room.set()
                if self._stop and not queue:
                    return
                self._wake.wait(0.01)
                self._wake.clear()
        except BaseException as e:  # surfaced on close(): never lose data silently
            self._error = e
            self._room.set()

    def close(self, notes: str | None = None, state: str = "complete") -> None:
        if self._gap:  # at the last record dropped (the writer's last time if it is here)
            ts_ns = self._gap_ts if self._process is not None else \
                round(self.writer.last_ts * NS)
            self._queue.append(gap_record(ts_ns, self._gap))
            self._produced += self.RECORD_COST
            self._gap = 0
        self._stop = True
        self._wake.set()
        self._thread.join()
        if self._process is not None:
            self._close_process(notes, state)
            return
        if self._error is not None:
            raise RuntimeError(f"the writer thread failed: {self._error}") from self._error
        self.writer.close(dropped=self.dropped, notes=notes, state=state)

    def _close_process(self, notes: str | None, state: str) -> None:
        """The storing process closes the session; its counts come back to ``writer``."""
        error: str | None = None
        if self._error is not None:
            error = f"{type(self._error).__name__}: {self._error}"
        try:
            meta = pickle.dumps((self.dropped, notes, state))
            _write_all(self._fd, [FRAME.pack(CLOSE_FRAME, len(meta), 0), meta])
        except OSError:
            pass  # it is gone: its reply, if it left one, says why
        try:
            reply = self._reply.recv()
        except (EOFError, OSError):
            reply = ("the storing process ended early", 0, 0, 0, 0.0)
        os.close(self._fd)
        self._reply.close()
        self._process.join()
        stored_error, records, commands, dropped, last_ts = reply
        writer = self.writer
        writer.records, writer.commands, writer.dropped, writer.last_ts = \
            records, commands, dropped, last_ts
        error = error or stored_error
        if error is not None:
            raise DatabaseError(f"storing the session failed: {error}")


def _can_fork(writer: SessionWriter) -> bool:
    """A forked storing process needs fork, and a database it can open on its own (a
    file or a server; not an in-memory SQLite database)."""
    target = writer.database.target
    return hasattr(os, "fork") and not (target.startswith("sqlite") and
                                        target.rstrip("/") in ("sqlite:", "sqlite:/",
                                                               "sqlite://")
                                        or ":memory:" in target)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
