"""The Python API, for notebooks and scripts: a database's sessions and their rows
as plain objects.

    import usbtrace
    with usbtrace.open("usbtrace.db") as log:
        for session in log.sessions():
            reads = list(session.commands(opcode="read_10"))

Rows come as frozen dataclasses whose fields are the columns of the tables
(``schemas/usbtrace.sql``), streamed from the database, so a session of any
size can be walked.  ``to_dataframe`` needs the optional ``pandas`` extra
(``pip install 'usbtrace[pandas]'``).  The database is opened read-only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from usbtrace.analysis.filters import Filter, build_filter
from usbtrace.errors import InputError, UsbtraceError

T = TypeVar("T")


@dataclass(frozen=True)
class Command:
    """One SCSI command: CBW (or Command IU), data phase and CSW joined."""

    seq: int
    bus: int | None
    device: int | None
    lun: int
    tag: int
    opcode: int
    name: str
    cdb: bytes
    lba: int | None
    blocks: int | None
    data_direction: str
    expected_length: int
    data_length: int
    data_truncated: bool
    residue: int | None
    status: str
    sense_key: str | None
    asc: int | None
    ascq: int | None
    irp_id: str
    cbw_seq: int
    csw_seq: int | None
    submitted_at: float | None
    completed_at: float | None

    @property
    def service_time(self) -> float | None:
        """Seconds from submission to completion (Wireshark's SRT); None unanswered."""
        if self.csw_seq is None or self.submitted_at is None or self.completed_at is None:
            return None
        return self.completed_at - self.submitted_at


@dataclass(frozen=True)
class Urb:
    """One USB transfer, submission and completion merged."""

    seq: int
    irp_id: str
    record_number: int | None
    submitted_at: float | None
    completed_at: float | None
    bus: int | None
    device: int | None
    endpoint: int
    transfer_type: str
    direction: str
    urb_function: str | None
    status: str | None
    requested_length: int | None
    actual_length: int | None
    captured_length: int
    truncated: bool
    setup: bytes | None
    data: bytes | None
    stream_id: int | None = None  # USB 3 bulk stream (live UAS recordings with streams)


@dataclass(frozen=True)
class FileActivity:
    """Which file (or file-system structure) a command's blocks belong to."""

    id: int
    scsi_seq: int
    path: str | None
    operation: str
    kind: str
    file_offset: int | None
    length: int | None
    lba: int | None
    command_offset: int | None
    detail: str | None


@dataclass(frozen=True)
class Device:
    bus: int
    device: int
    vid: int | None
    pid: int | None
    device_class: int | None
    manufacturer: str | None
    product: str | None
    serial: str | None
    mass_storage_interfaces: str | None


TABLES: dict[str, tuple[str, type[Any], str]] = {
    # name: (table, row type, the alias filters use)
    "commands": ("scsi_commands", Command, "c"),
    "urbs": ("urbs", Urb, "u"),
    "file_activity": ("file_activity", FileActivity, "f"),
    "devices": ("devices", Device, "d"),
}


def _row(kind: type[T], columns: list[str], values: tuple[Any, ...]) -> T:
    fields = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    given = {c: v for c, v in zip(columns, values) if c in fields}
    for name in ("cdb", "setup", "data"):
        if isinstance(given.get(name), memoryview):
            given[name] = bytes(given[name])
    for name in ("data_truncated", "truncated"):
        if name in given and given[name] is not None:
            given[name] = bool(given[name])
    return kind(**given)


@dataclass(frozen=True)
class Session:
    """One recording or imported capture; its rows are read when asked for."""

    log: Log = dataclasses.field(repr=False, compare=False)
    id: int = 0
    source: str = ""
    source_name: str = ""
    started_at: str = ""
    state: str = ""
    record_count: int = 0
    dropped_count: int = 0
    malformed_count: int = 0
    command_count: int = 0
    duration: float | None = None
    time_origin: float | None = None
    notes: str | None = None

    def _rows(self, name: str, flt: Filter | None, filters: dict[str, Any]) -> Iterator[Any]:
        table, kind, alias = TABLES[name]
        flt = _filter(flt, filters).for_database(self.log.database)
        if name == "commands":
            cond, params = flt.commands_sql(alias)
        elif name == "urbs":
            cond, params = flt.urbs_sql(alias, self.id)
        elif name == "file_activity":
            cond, params = flt.files_sql(alias)
        else:
            cond, params = "1=1", {}
        order = "id" if name == "file_activity" else "bus, device" if name == "devices" \
            else "seq"
        sql = (f"SELECT {alias}.* FROM {table} {alias} WHERE {alias}.session_id = :sid "
               f"AND {cond} ORDER BY {alias}.{order.replace(', ', f', {alias}.')}")
        with self.log.database.stream(sql, {**params, "sid": self.id}) as (columns, rows):
            for values in rows:
                yield _row(kind, columns, values)

    def commands(self, flt: Filter | None = None, **filters: Any) -> Iterator[Command]:
        """The SCSI commands, in order; narrowed by a ``Filter`` or by keywords
        (device, lun, opcode, lba, status, file, time, where: as the CLI options)."""
        return self._rows("commands", flt, filters)

    def urbs(self, flt: Filter | None = None, **filters: Any) -> Iterator[Urb]:
        """The URBs, in order (with a command filter: those of the kept commands)."""
        return self._rows("urbs", flt, filters)

    def file_activity(self, flt: Filter | None = None, **filters: Any
                      ) -> Iterator[FileActivity]:
        return self._rows("file_activity", flt, filters)

    def devices(self) -> list[Device]:
        return list(self._rows("devices", None, {}))

    def stats(self, flt: Filter | None = None, per_device: bool = False,
              **filters: Any) -> list[Any]:
        """Per-opcode counts and service times (``usbtrace stats``)."""
        from usbtrace.analysis.stats import service_times

        return service_times(self.log.database, self.id,
                             _filter(flt, filters).for_database(self.log.database), per_device)

    def extract(self, folder: str | Path, flt: Filter | None = None, **filters: Any
                ) -> list[Any]:
        """Rebuild the session's files under ``folder``/files (``usbtrace extract``,
        without the manifest); returns what is known of each."""
        from usbtrace.analysis.extract import extract_files

        return extract_files(self.log.database, self.id, Path(folder),
                             _filter(flt, filters).for_database(self.log.database))

    def to_dataframe(self, what: str = "commands", flt: Filter | None = None,
                     **filters: Any) -> Any:
        """A pandas DataFrame of ``commands``, ``urbs``, ``file_activity`` or
        ``devices`` (needs the ``pandas`` extra)."""
        if what not in TABLES:
            raise InputError(f"to_dataframe: one of {', '.join(TABLES)}, not {what!r}")
        try:
            import pandas
        except ImportError:
            raise UsbtraceError("to_dataframe needs pandas: pip install 'usbtrace[pandas]'"
                                ) from None
        kind = TABLES[what][1]
        columns = [f.name for f in dataclasses.fields(kind)]
        rows = (dataclasses.astuple(r) for r in self._rows(what, flt, filters))
        return pandas.DataFrame.from_records(rows, columns=columns)


def _filter(flt: Filter | None, filters: dict[str, Any]) -> Filter:
    if flt is not None and filters:
        raise InputError("give a Filter or keyword filters, not both")
    if flt is not None:
        return flt

    def many(value: Any) -> tuple[Any, ...]:
        if value is None:
            return ()
        return tuple(value) if isinstance(value, (list, tuple, set)) else (value,)

    unknown = set(filters) - {"device", "lun", "opcode", "lba", "status", "file", "time",
                              "where"}
    if unknown:
        raise InputError(f"unknown filter {', '.join(sorted(unknown))}")
    return build_filter(device=[str(v) for v in many(filters.get("device"))],
                        lun=[int(v) for v in many(filters.get("lun"))],
                        opcode=[str(v) for v in many(filters.get("opcode"))],
                        lba=filters.get("lba"), status=many(filters.get("status")),
                        file=many(filters.get("file")), time=filters.get("time"),
                        where=filters.get("where"))


class Log:
    """A usbtrace database opened read-only.  Use as a context manager, or close()."""

    def __init__(self, path: str | Path) -> None:
        from usbtrace.store.database import Database

        self.database = Database(path, create=False, readonly=True)

    def sessions(self) -> list[Session]:
        from usbtrace.store.database import effective_state

        _, rows = self.database.query(
            "SELECT id, source, source_name, started_at, state, record_count, dropped_count, "
            "malformed_count, command_count, duration, time_origin, notes, writer_host, "
            "writer_pid FROM sessions ORDER BY id")
        names = ("id", "source", "source_name", "started_at", "state", "record_count",
                 "dropped_count", "malformed_count", "command_count", "duration",
                 "time_origin", "notes")
        sessions = []
        for row in rows:
            values = dict(zip(names, row))
            values["state"] = effective_state(row[4], row[12], row[13])
            sessions.append(Session(self, **values))
        return sessions

    def session(self, session_id: int) -> Session:
        for s in self.sessions():
            if s.id == session_id:
                return s
        raise InputError(f"no session {session_id} in {self.database.display}")

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(path: str | Path) -> Log:  # noqa: A001 - usbtrace.open, as the issue asks
    """Open a usbtrace database (a SQLite file or a SQLAlchemy URL) read-only."""
    return Log(path)
