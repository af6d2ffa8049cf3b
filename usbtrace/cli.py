"""The ``usbtrace`` command line.

Every error a user can cause ends in one line on stderr and a non-zero exit,
never a traceback: ``UsbtraceError`` and its subclasses carry messages meant
for the user.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import json
import logging
import os
import re
import sqlite3
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar, cast

import click

from usbtrace.analysis.filters import (
    Filter,
    TimeFormat,
    filter_options,
    session_origin,
    time_format_option,
)
from usbtrace.devices.faults import fault_help
from usbtrace.errors import UsbtraceError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_DB = "usbtrace.db"
DB_ENVVAR = "USBTRACE_DB"  # every command's --db defaults to it, then to DEFAULT_DB
logger = logging.getLogger("usbtrace")


def friendly(func: F) -> F:
    """Every failure is one line and a documented exit code, never a traceback:
    2 for bad input or an error, 130 for Ctrl-C (see the README's exit codes)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsbtraceError as e:
            fail(str(e))
        except BrokenPipeError:  # the reader (head, less) has had enough
            _silence_stdout()
            sys.exit(0)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")
        except KeyboardInterrupt:
            click.echo("usbtrace: interrupted", err=True)
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as e:  # a database or driver failure: one line, never a traceback
            from sqlalchemy.exc import SQLAlchemyError

            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__  # type: ignore[assignment]
            first = (str(getattr(cause, "orig", cause)).strip().splitlines() or [""])[0]
            if isinstance(e, (SQLAlchemyError, sqlite3.Error)):  # sqlite3: a file's writer
                fail(f"database: {first}")
            fail(f"internal error: {type(cause).__name__}: {first} (please report it, with "
                 "the command line and its input)")

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"usbtrace: error: {message}", err=True)
    sys.exit(code)


def _silence_stdout() -> None:

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (a test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("usbtrace: %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_handler = _StderrHandler()


def configure_logging(verbose: int, quiet: bool) -> int:
    """The ``usbtrace`` loggers through the standard ``logging`` module: warnings by
    default, ``-v`` progress (INFO), ``-vv`` details (DEBUG), ``-q`` errors only."""
    if quiet:
        level = logging.ERROR
    else:
        level = (logging.WARNING, logging.INFO)[verbose] if verbose < 2 else logging.DEBUG
    logger.setLevel(level)
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    return level


class UsbtraceGroup(click.Group):
    """Keeps the arguments of the command being run, for the session it makes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["usbtrace.args"] = tuple(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        from usbtrace.store import COMMAND_ARGS

        token = COMMAND_ARGS.set(ctx.meta.get("usbtrace.args"))
        try:
            return super().invoke(ctx)
        finally:
            COMMAND_ARGS.reset(token)


@click.group(cls=UsbtraceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="usbtrace")
@click.option("-v", "--verbose", count=True,
              help="Say more on stderr: -v what is being done, -vv details.")
@click.option("-q", "--quiet", "quiet_", is_flag=True,
              help="Only errors on stderr (no warnings).")
def main(verbose: int, quiet_: bool) -> None:
    """Log, decode, store and replay USB mass-storage traffic.

    Every command reads its database from --db, else from the USBTRACE_DB
    environment variable, else usbtrace.db."""
    if verbose and quiet_:
        fail("-v and -q contradict each other; give one")
    configure_logging(verbose, quiet_)


db_option = click.option("--db", default=DEFAULT_DB, show_default=True, envvar=DB_ENVVAR,
                         show_envvar=True,
                         help="SQLite file, or a SQLAlchemy URL (postgresql://...).")


# ---- record -------------------------------------------------------------------------


@main.command()
@db_option
@click.option("--image", type=click.Path(dir_okay=False), help="Disk image file (created at "
              "--size if missing); default: a stick in memory.")
@click.option("--size", default="64M", show_default=True, help="Stick size: 64M, 1G, ...")
@click.option("--workload", type=click.Choice(["raw", "files", "read"]), default=None,
              help="raw: blocks written and read back [default]; files: a FAT file system "
              "on the stick, files copied, read, renamed, deleted; read: capacity and the "
              "first sectors, read-only [default with --device].")
@click.option("--device", metavar="usb:VID:PID[:SERIAL]",
              help="Real hardware through pyusb instead of the simulated stick.")
@click.option("--allow-write", is_flag=True, help="Let a workload write to real hardware.")
@click.option("--usb-backend", default="libusb", show_default=True,
              help="With --device: libusb (real devices), simulated (a simulated stick behind "
              "pyusb, for trying the hardware path), or one a package adds under the "
              "usbtrace.usb_backends entry points.")
@click.option("--speed", type=click.Choice(["full", "high", "super"]), default="super",
              show_default=True, help="Bus speed of the simulated stick.")
@click.option("--fs", "fs", type=click.Choice(["fat12", "fat16", "fat32"]),
              default="fat16", show_default=True, help="File system of the files workload, "
              "formatted by pyfatfs: fat12 up to 127 MiB, fat16 from 4.1 MiB to just under "
              "2 GiB, fat32 from 32.6 MiB to 32 GiB (the FAT cluster-count limits). No exFAT: "
              "no Python library writes it.")
@click.option("--copy", multiple=True, type=click.Path(), help="Files or folders the files "
              "workload copies to the stick (default: a built-in sample set).")
@click.option("--no-lower", is_flag=True, help="Do not trace at the URB level (under usbstor).")
@click.option("--no-upper", is_flag=True, help="Do not trace READ/WRITE (above disk).")
@click.option("--lossy", is_flag=True, help="Drop (and count) records rather than wait when "
              "the writer falls behind.")
@click.option("--fault", "faults", multiple=True, metavar="SPEC", help=fault_help())
@click.option("--sleep", is_flag=True, help="After the workload, put the machine to sleep "
              "(S3) and resume it (S0): the system and device power IRPs are traced.")
@click.option("--protocol", type=click.Choice(["bot", "uas"]), default="bot",
              show_default=True, help="What the simulated stick speaks: Bulk-Only (usbstor), "
              "or USB Attached SCSI (a UAS alternate setting; UASPStor loads).")
@click.option("--streams", is_flag=True, help="With --protocol uas at super speed: bulk "
              "streams, each command's data and status on the stream of its tag.")
@friendly
def record(db: str, image: str | None, size: str, workload: str | None, device: str | None,
           allow_write: bool, usb_backend: str, speed: str, fs: str, copy: tuple[str, ...],
           no_lower: bool, no_upper: bool, lossy: bool, faults: tuple[str, ...],
           sleep: bool, protocol: str, streams: bool) -> None:
    """Run a workload on a stick (simulated, or real with --device), tracer in the stack."""
    from usbtrace.recording import RecordOptions
    from usbtrace.recording import record as run

    positions = tuple(p for p, off in (("lower", no_lower), ("upper", no_upper)) if not off)
    workload = workload or ("read" if device else "raw")
    summary = run(RecordOptions(db=db, image=image, size=size, workload=workload, speed=speed,
                                positions=positions, lossy=lossy, fs=fs, copy=copy,
                                device=device, usb_backend=usb_backend,
                                allow_write=allow_write, faults=faults, sleep=sleep,
                                protocol=protocol, streams=streams))
    r = summary.workload
    target = f"device {device}" if device else f"a simulated {size} stick ({speed} speed" + (
        f", UAS{' with streams' if streams else ''})" if protocol == "uas" else ")")
    click.echo(f"session {summary.session_id}: workload '{workload}' on {target}")
    for note in r.notes:
        click.echo(f"  {note}")
    click.echo(f"  SCSI commands  {summary.commands}")
    click.echo(f"  records        {summary.records} ({summary.dropped} dropped)")
    click.echo(f"  written        {summary.bytes_written} bytes")
    click.echo(f"  read           {summary.bytes_read} bytes")
    clock = "wall clock" if device else "virtual clock"
    click.echo(f"  bus time       {summary.bus_seconds * 1000:.3f} ms ({clock})")
    click.echo(f"  wall time      {summary.wall_seconds:.2f} s")
    click.echo(f"  database       {summary.database}")
    if not r.ok:
        for m in r.mismatches:
            click.echo(f"usbtrace: data check failed: {m}", err=True)
        sys.exit(1)
    if summary.bytes_written:
        click.echo("  data check     read back equals written")
    else:
        click.echo("  data check     read-only: nothing written")


# ---- devices ----------------------------------------------------------------------------


@main.command()
@click.option("--usb-backend", default="libusb", show_default=True,
              help="libusb, simulated, or a backend added through entry points.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@friendly
def devices(usb_backend: str, fmt: str) -> None:
    """List attached USB devices, marking mass-storage interfaces."""
    from usbtrace.devices.hardware import get_usb_backend, list_devices

    found = list_devices(get_usb_backend(usb_backend))
    if not found:
        raise UsbtraceError("no USB devices found: this machine has no USB bus libusb can "
                            "see, or no permission to list it (on Linux: /dev/bus/usb must "
                            "be readable; run as root or add a udev rule)")
    columns = ["device", "bus", "address", "speed", "class", "manufacturer", "product",
               "serial", "mass_storage", "note"]
    rows = [(f"usb:{d.vid:04x}:{d.pid:04x}", d.bus, d.address, d.speed,
             f"0x{d.device_class:02x}", d.manufacturer, d.product, d.serial,
             ",".join(map(str, d.mass_storage)) if d.mass_storage else "", d.note)
            for d in found]
    emit(columns, rows, fmt)


# ---- import ---------------------------------------------------------------------------


@main.command(name="import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@db_option
@click.option("--force", is_flag=True, help="Import again a file already in the database.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--after", type=int, metavar="SESSION",
              help="The captures continue SESSION's medium: start from the file-system "
                   "metadata it saw (for captures that begin mid-session).")
@click.option("--no-files", is_flag=True, help="Skip file-level attribution (file_activity).")
@friendly
def import_(files: tuple[Path, ...], db: str, force: bool, quiet: bool,
            after: int | None, no_files: bool) -> None:
    """Import pcap/pcapng captures (Linux usbmon, Windows USBPcap, macOS), plain or
    gzip: one session per file.  FILE '-' is standard input, read as it arrives, for a
    live capture: dumpcap -i usbmon1 -w - | usbtrace import -

    A file that cannot be read is reported on one line and the others still
    import; the exit code is then 2."""
    from usbtrace.importing import STDIN, import_capture
    from usbtrace.store.database import Database

    if sum(str(f) == STDIN for f in files) > 1:
        raise UsbtraceError("standard input ('-') can be imported once per command")
    if any(str(f) == STDIN for f in files) and sys.stdin is not None and sys.stdin.isatty():
        raise UsbtraceError("standard input is a terminal: pipe a capture into it, e.g. "
                            "dumpcap -i usbmon1 -w - | usbtrace import -")
    database = Database(db)
    failed = 0
    try:
        for path in files:
            try:
                size = path.stat().st_size if path.exists() and path.is_file() else 0
                # no bar shown, none made: click's terminal code is not even imported
                bar = click.progressbar(length=size, label=f"importing {path.name}",
                                        file=sys.stderr) \
                    if not quiet and size >= 4 << 20 and sys.stderr.isatty() else None
                with bar if bar is not None else contextlib.nullcontext():
                    result = import_capture(database, path,
                                            progress=None if bar is None else bar.update,
                                            force=force, after=after,
                                            attribute_files=not no_files)
            except UsbtraceError as e:
                click.echo(f"usbtrace: error: {e}", err=True)
                failed += 1
                continue
            except OSError as e:
                click.echo(f"usbtrace: error: {path}: {e.strerror or e}", err=True)
                failed += 1
                continue
            if result.duplicate_of is not None:
                click.echo(f"{path}: already imported as session {result.duplicate_of} "
                           "(--force to import again)")
                continue
            shown = "stdin" if str(path) == STDIN else path
            click.echo(f"{shown}: session {result.session_id}: {result.records} records, "
                       f"{result.commands} SCSI commands, {result.malformed_count} malformed "
                       f"({result.seconds:.2f} s)")
            for note in result.caveats:  # the decode may be wrong: say so now
                click.echo(f"  note: {note}", err=True)
            for number, why in result.malformed[:5]:
                click.echo(f"  record {number}: {why}", err=True)
            if result.malformed_count > 5:
                click.echo(f"  ... {result.malformed_count - 5} more (the session's notes list "
                           "the first 20)",
                           err=True)
    finally:
        database.close()
    if failed:
        sys.exit(2)


# ---- export ---------------------------------------------------------------------------


@main.command()
@click.argument("session", type=int)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The capture file to write: name.pcap is classic pcap, any other "
              "name pcapng (unless --format says).")
@click.option("--format", "container", type=click.Choice(["pcap", "pcapng"]), default=None,
              help="The container [default: from the output's extension].")
@click.option("--linktype", type=click.Choice(["usbpcap", "usbmon"]), default=None,
              help="Record format [default: usbmon for usbmon imports, else usbpcap].")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@db_option
@filter_options
@friendly
def export(session: int, output: Path, container: str | None, linktype: str | None,
           force: bool, db: str, flt: Filter) -> None:
    """Write a session's URBs as pcapng or pcap that Wireshark opens."""
    import calendar
    import time as _time

    from usbtrace.capture.export import container_for, provenance, select_for, write_capture
    from usbtrace.outputs import atomic_output, refuse_database
    from usbtrace.store.sqlite_read import open_read_only

    # a SQLite file is read with sqlite3 alone (SQLAlchemy's import is a good part of an
    # export's time); other databases go through it
    database = open_read_only(db)
    flt = flt.for_database(database)
    try:
        _, rows = database.query(
            "SELECT source, started_at, time_origin, usbtrace_version, command_line FROM "
            "sessions WHERE id = :id", {"id": _session_id(session)})
        if not rows:
            raise UsbtraceError(f"no session {session} in {db} (see 'usbtrace sessions')")
        source, started_at, origin, version, command_line = rows[0]
        if origin is None:
            origin = float(calendar.timegm(_time.strptime(started_at, "%Y-%m-%dT%H:%M:%SZ")))
        kind = linktype or ("usbmon" if source == "usbmon" else "usbpcap")
        chosen = container_for(str(output), container)
        # only the columns this output needs; from SQLite, usbmon's come ready to pack
        selected, fields = select_for(kind, chosen, "u", database.is_sqlite)
        cond, params = flt.urbs_sql("u", session)
        refuse_database(output, database.path, "-o")
        with atomic_output(output, force, None, "-o") as stream, \
                database.stream(f"SELECT {selected} FROM urbs u "
                                f"WHERE u.session_id = :id AND {cond} ORDER BY u.seq",
                                {**params, "id": session}) as (columns, urb_rows):
            try:
                count, urbs = write_capture(urb_rows, cast(BinaryIO, stream), kind, origin,
                                            chosen, provenance(version, command_line),
                                            columns=fields)
            except (struct.error, OverflowError) as e:  # no import or recording writes one
                raise UsbtraceError(f"session {session} holds a value that {kind} records "
                                    f"in {chosen} cannot carry ({e}): is {db} damaged? "
                                    f"Nothing was written to {output}") from e
    finally:
        database.close()
    click.echo(f"{output}: {count} {kind} records ({chosen}) from {urbs} URBs of session "
               f"{session}")


def _session_id(value: int) -> int:
    """Session ids are SQL integers: a number past 64 bits is no session at all."""
    if not 0 < value < 1 << 63:
        raise UsbtraceError(f"no session {value} (session numbers are from 1, see "
                            "'usbtrace sessions')")
    return value


# ---- replay -----------------------------------------------------------------------------


@main.command()
@click.argument("source")
@click.option("--mode", type=click.Choice(["device", "host"]), default="device",
              show_default=True, help="device: the stack against the recorded device; "
              "host: the recorded host against a target device.")
@click.option("--against", metavar="IMAGE", help="Host mode: the disk image the target starts "
              "from (a copy is used; default: blank, of the recorded capacity).")
@click.option("--speed", type=float, default=None, help="Host mode: keep the recorded timing, "
              "scaled (2 = twice as fast), each command sent at its recorded offset / speed; "
              "the report says how late they went out. Default: as fast as possible.")
@click.option("--max-gap", type=float, default=None, metavar="SECONDS",
              help="With --speed: wait at most this long between commands.")
@click.option("--device", metavar="usb:VID:PID[:SERIAL]",
              help="Host mode: send the recorded host's commands to this real device "
              "instead of the simulated stick.")
@click.option("--allow-write", is_flag=True, help="With --device: let a recording that "
              "writes do so to the device (refused otherwise, as for record).")
@click.option("--usb-backend", default="libusb", show_default=True,
              help="With --device: libusb, simulated, or one added through entry points.")
@click.option("--recorded-device", "recorded", metavar="BUS.ADDR",
              help="The recorded storage device to replay, when the recording has several "
              "(default: the one whose command came first).")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Write the full report as JSON here ('-' for standard output, the "
              "text report then going to standard error).")
@click.option("--force", is_flag=True, help="Replace the --json file if it exists.")
@db_option
@friendly
def replay(source: str, mode: str, against: str | None, speed: float | None,
           max_gap: float | None, device: str | None, allow_write: bool, usb_backend: str,
           recorded: str | None, json_path: Path | None, force: bool, db: str) -> None:
    """Replay a capture file or a session (N or session:N); exit 0 if identical,
    1 on divergence, 2 on error, 130 if interrupted."""
    from usbtrace.outputs import atomic_output, check_output
    from usbtrace.replay.run import check_options
    from usbtrace.replay.run import replay as run
    from usbtrace.store.database import is_url

    check_options(mode, speed, max_gap)
    to_file = json_path is not None and str(json_path) != "-"
    database_file = None if is_url(db) else Path(db)
    protected = [(source, "the recording")] + \
        ([(database_file, "the database")] if database_file else [])
    if to_file:
        assert json_path is not None
        check_output(json_path, force, None, "--json", protected)
    report = run(source, mode, against, speed, max_gap, db, device=device,
                 usb_backend=usb_backend, allow_write=allow_write, recorded=recorded)
    # with ``--json -`` standard output is the JSON alone, for a pipe to jq or a parser;
    # the report people read goes to standard error
    click.echo(report.text(), err=json_path is not None and not to_file)
    if json_path is not None and not to_file:
        click.echo(report.to_json())
    elif json_path is not None:
        with atomic_output(json_path, force, None, "--json", "w", protected) as stream:
            stream.write(report.to_json() + "\n")
    sys.exit(0 if report.identical else 1)


# ---- log ------------------------------------------------------------------------------

FORMATS = ["table", "csv", "tsv", "json", "jsonl"]
format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="table for people; csv, tsv, json and jsonl keep every byte of a BLOB as hex.")


@main.command(name="log")
@click.argument("session", type=int)
@db_option
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most this many commands.")
@format_option
@time_format_option
@filter_options
@friendly
def log_(session: int, db: str, limit: int | None, fmt: str, time_format: str,
         flt: Filter) -> None:
    """A session's SCSI commands, one a line, with the files their blocks belong to."""
    from usbtrace.store.sqlite_read import open_read_only

    database = open_read_only(db)
    _require_session(database, session, db)
    flt = flt.for_database(database)
    what = database.aggregate(
        "CASE WHEN f.kind = 'data' THEN f.path || ' @' || f.file_offset || "
        "CASE WHEN f.detail LIKE '%inferred%' THEN ' (inferred)' ELSE '' END "
        "WHEN f.kind = 'event' THEN f.operation || ' ' || f.path "
        "WHEN f.kind IN ('unsupported', 'gpt_header', 'gpt_entries') AND f.detail IS NOT NULL "
        "THEN f.kind || ' ' || f.detail "
        "WHEN f.path IS NOT NULL THEN f.kind || ' ' || f.path ELSE f.kind END", "f.id")
    cond, params = flt.commands_sql("c")
    # one index look-up per command (ix_file_activity_command): linear in the session
    sql = (
        "SELECT c.seq, round(CAST(c.submitted_at AS NUMERIC), 6) AS time, "
        f"{DEVICE_SQL} AS device, c.lun, c.name AS command, c.lba, c.blocks, "
        "c.data_length AS bytes, c.status, c.sense_key AS sense, "
        f"(SELECT {what} FROM file_activity f WHERE f.session_id = c.session_id "
        "AND f.scsi_seq = c.seq) AS blocks_belong_to "
        # one timeline across devices: in the order the commands were sent
        f"FROM scsi_commands c WHERE c.session_id = :id AND {cond} ORDER BY c.cbw_seq, c.seq")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    times = TimeFormat(time_format, session_origin(database, session))
    with database.stream(sql, {**params, "id": session}) as (columns, rows):
        emit(columns, times.rows(rows, 1), fmt)


# bus.address, as usbmon and Wireshark name a device
DEVICE_SQL = "CAST(c.bus AS TEXT) || '.' || CAST(c.device AS TEXT)"


def _require_session(database: Any, session: int, db: str) -> None:
    if not database.session_exists(session):
        raise UsbtraceError(f"no session {session} in {db} (see 'usbtrace sessions')")


# ---- files ----------------------------------------------------------------------------


@main.command(name="files")
@click.argument("session", type=int)
@db_option
@format_option
@filter_options
@friendly
def files_(session: int, db: str, fmt: str, flt: Filter) -> None:
    """Per-file activity of a session: bytes read and written, and file events."""
    from usbtrace.store.sqlite_read import open_read_only

    database = open_read_only(db)
    _require_session(database, session, db)
    events = database.aggregate("CASE WHEN f.kind='event' THEN f.operation END", "f.id")
    cond, params = flt.for_database(database).files_sql("f")
    # a path names a file on one logical unit: two sticks may both have /README.TXT
    columns, rows = database.query(
        f"SELECT {DEVICE_SQL} AS device, c.lun, f.path, "
        "sum(CASE WHEN f.kind='data' AND f.operation='read' THEN f.length ELSE 0 END) "
        "AS bytes_read, "
        "sum(CASE WHEN f.kind='data' AND f.operation='write' THEN f.length ELSE 0 END) "
        "AS bytes_written, "
        f"{events} AS events "
        "FROM file_activity f JOIN scsi_commands c ON c.session_id = f.session_id "
        "AND c.seq = f.scsi_seq WHERE f.session_id = :id AND f.path IS NOT NULL "
        f"AND f.kind IN ('data', 'event') AND {cond} GROUP BY c.bus, c.device, c.lun, f.path "
        "ORDER BY c.bus, c.device, c.lun, f.path",
        {**params, "id": session})
    _, other = database.query(
        "SELECT kind, operation, sum(length) FROM file_activity f "
        "WHERE f.session_id = :id AND f.kind NOT IN ('data', 'event', 'directory') "
        f"AND {cond} GROUP BY f.kind, f.operation ORDER BY f.kind, f.operation",
        {**params, "id": session})
    _, inferred = database.query(
        "SELECT count(DISTINCT f.path) FROM file_activity f WHERE f.session_id = :id "
        f"AND f.kind IN ('data', 'event') AND f.detail LIKE '%inferred%' AND {cond}",
        {**params, "id": session})
    emit(columns, rows, fmt)
    if fmt == "table" and other:
        click.echo("not file data: " + ", ".join(f"{kind} {op} {n} B" for kind, op, n in other))
    if fmt == "table" and inferred and inferred[0][0]:
        click.echo(f"inferred: {inferred[0][0]} paths are named from a FAT geometry inferred "
                   "without its boot sector (the session's notes say from what)")


# ---- sessions, delete, upgrade and query ---------------------------------------------------


@main.command()
@db_option
@format_option
@friendly
def sessions(db: str, fmt: str) -> None:
    """List the sessions in a database, with their state: running, complete,
    interrupted (Ctrl-C, or its writer was killed) or failed."""
    from usbtrace.store.liveness import effective_state
    from usbtrace.store.sqlite_read import open_read_only

    database = open_read_only(db)
    columns, rows = database.query(
        "SELECT id, source, source_name, started_at, record_count, command_count, "
        "dropped_count, malformed_count, state, usbtrace_version AS version, "
        "command_line, writer_host, writer_pid FROM sessions ORDER BY id")
    shown = [(*row[:8], effective_state(row[8], row[11], row[12]), *row[9:11])
             for row in rows]
    # the command line is long: the machine formats carry it, the table leaves it out
    emit(columns[:11] if fmt != "table" else columns[:10],
         shown if fmt != "table" else [r[:10] for r in shown], fmt)


@main.command()
@click.argument("session_ids", metavar="SESSION...", nargs=-1, type=int)
@click.option("--interrupted", is_flag=True, help="Also every interrupted or failed session.")
@db_option
@friendly
def delete(session_ids: tuple[int, ...], interrupted: bool, db: str) -> None:
    """Delete sessions and all their rows."""
    from usbtrace.store.database import Database

    if not session_ids and not interrupted:
        raise UsbtraceError("name the sessions to delete, or --interrupted")
    database = Database(db, create=False)
    try:
        wanted = set()
        for sid in session_ids:
            _require_session(database, sid, db)
            wanted.add(sid)
        if interrupted:
            _, rows = database.query(
                "SELECT id FROM sessions WHERE state IN ('interrupted', 'failed')")
            wanted.update(r[0] for r in rows)
        deleted = database.delete_sessions(sorted(wanted))
    finally:
        database.close()
    click.echo(f"deleted {deleted} session{'s' if deleted != 1 else ''}"
               + (f": {', '.join(map(str, sorted(wanted)))}" if wanted else ""))


@main.command()
@db_option
@friendly
def upgrade(db: str) -> None:
    """Bring a database written by an older usbtrace to this version's schema."""
    from usbtrace.store.database import Database
    from usbtrace.store.schema import SCHEMA_VERSION

    Database(db, create=False).close()
    click.echo(f"{db}: schema version {SCHEMA_VERSION}")


@main.command()
@click.argument("sql")
@db_option
@format_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Stop the query after this long.")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind :NAME in the SQL to VALUE (repeatable): a whole number binds as an "
              "integer, a decimal number as a real, anything else as text.  Values are "
              "bound, never pasted into the SQL.")
@friendly
def query(sql: str, db: str, fmt: str, timeout: float | None,
          params: tuple[str, ...]) -> None:
    """Run one read-only SQL statement (writes, ATTACH and VACUUM are refused;
    Ctrl-C or --timeout stop it).

    Example: usbtrace query "SELECT * FROM command_data WHERE session_id = :s" -p s=1"""
    from usbtrace.store.sqlite_read import open_read_only

    bound = parse_params(params)
    database = open_read_only(db)
    with database.stream(sql, bound, timeout=timeout) as (columns, rows):
        emit(columns, rows, fmt)


_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_REAL = re.compile(r"^[+-]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs as bound parameters.  Numbers bind as numbers so that
    ``LIMIT :n`` and comparisons with integer columns work as typed."""
    bound: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _PARAM_NAME.match(name):
            raise UsbtraceError(f"--param {item!r}: give NAME=VALUE, NAME a letter or _ "
                                "then letters, digits or _ (used in the SQL as :NAME)")
        if name in bound:
            raise UsbtraceError(f"--param {name} given twice")
        if _INTEGER.match(value) and -(1 << 63) <= int(value) < 1 << 63:
            bound[name] = int(value)
        elif _REAL.match(value):
            bound[name] = float(value)
        else:
            bound[name] = value
    return bound


@main.command()
@friendly
def schema() -> None:
    """Print the database's tables and views, with what they hold, as SQL
    (the same text as schemas/usbtrace.sql)."""
    from usbtrace.store.ddl import render

    click.echo(render(), nl=False)


# ---- output -----------------------------------------------------------------------------

TABLE_SAMPLE = 1000  # rows that set a table's column widths; later rows just follow


def _text(value: Any) -> Any:
    """Machine formats: every byte, as hex; SQL decimals as numbers."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _short(value: Any) -> str:
    """Table cells: a BLOB's first 32 bytes, then its full length."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        return b[:32].hex() + (f"... ({len(b)} bytes)" if len(b) > 32 else "")
    return str(value)


def emit(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str) -> None:
    """Write rows as they come, so output of any size takes constant memory."""
    out = sys.stdout
    rows = iter(rows)
    if fmt in ("json", "jsonl"):
        first = True
        if fmt == "json":
            out.write("[")
        for row in rows:
            item = json.dumps(dict(zip(columns, map(_text, row))))
            if fmt == "jsonl":
                out.write(item + "\n")
            else:
                out.write(("\n " if first else ",\n ") + item)
            first = False
        if fmt == "json":
            out.write("\n]\n" if not first else "]\n")
        return
    if fmt in ("csv", "tsv"):
        writer = csv.writer(out, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(v) for v in row])
        return
    sample = [[_short(v) for v in row] for row in itertools.islice(rows, TABLE_SAMPLE)]
    widths = [max([len(c)] + [len(r[i]) for r in sample]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    count = 0
    for cells in itertools.chain(sample, ([_short(v) for v in row] for row in rows)):
        out.write("  ".join(v.ljust(w) for v, w in zip(cells, widths)).rstrip() + "\n")
        count += 1
    out.write(f"({count} row{'s' if count != 1 else ''})\n")


if __name__ == "__main__":  # pragma: no cover
    main()


# ---- analysis: stats, extract, timeline, report (usbtrace/commands/analysis.py) ----------
from usbtrace.commands import analysis as _analysis  # noqa: E402

_analysis.register(main)
