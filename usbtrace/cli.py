"""The ``usbtrace`` command line.

Every error a user can cause ends in one line on stderr and a non-zero exit,
never a traceback: ``UsbtraceError`` and its subclasses carry messages meant
for the user.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from usbtrace.errors import UsbtraceError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_DB = "usbtrace.db"


def friendly(func: F) -> F:
    """Turn our errors (and a few of the OS's) into one line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsbtraceError as e:
            click.echo(f"usbtrace: error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"usbtrace: error: {where}{e.strerror or e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("usbtrace: interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # a database or driver failure: one line, never a traceback
            from sqlalchemy.exc import SQLAlchemyError

            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__  # type: ignore[assignment]
            if isinstance(e, (SQLAlchemyError, RuntimeError)):
                first = str(getattr(cause, "orig", cause)).strip().splitlines()[0]
                click.echo(f"usbtrace: error: database: {first}", err=True)
                sys.exit(2)
            raise

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="usbtrace")
def main() -> None:
    """Log, decode, store and replay USB mass-storage traffic."""


db_option = click.option("--db", default=DEFAULT_DB, show_default=True,
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
@click.option("--fs", "fs", type=click.Choice(["fat12", "fat16", "fat32", "exfat"]),
              default="fat16", show_default=True, help="File system of the files workload.")
@click.option("--copy", multiple=True, type=click.Path(), help="Files or folders the files "
              "workload copies to the stick (default: a built-in sample set).")
@click.option("--no-lower", is_flag=True, help="Do not trace at the URB level (under usbstor).")
@click.option("--no-upper", is_flag=True, help="Do not trace READ/WRITE (above disk).")
@click.option("--lossy", is_flag=True, help="Drop (and count) records rather than wait when "
              "the writer falls behind.")
@friendly
def record(db: str, image: str | None, size: str, workload: str | None, device: str | None,
           allow_write: bool, usb_backend: str, speed: str, fs: str, copy: tuple[str, ...],
           no_lower: bool, no_upper: bool, lossy: bool) -> None:
    """Run a workload on a stick (simulated, or real with --device), tracer in the stack."""
    from usbtrace.recording import RecordOptions
    from usbtrace.recording import record as run

    positions = tuple(p for p, off in (("lower", no_lower), ("upper", no_upper)) if not off)
    workload = workload or ("read" if device else "raw")
    summary = run(RecordOptions(db=db, image=image, size=size, workload=workload, speed=speed,
                                positions=positions, lossy=lossy, fs=fs, copy=copy,
                                device=device, usb_backend=usb_backend,
                                allow_write=allow_write))
    r = summary.workload
    target = f"device {device}" if device else f"a simulated {size} stick ({speed} speed)"
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
    click.echo(render(columns, rows, fmt), nl=False)


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
    """Import pcap/pcapng captures (Linux usbmon, Windows USBPcap): one session per file."""
    from usbtrace.importing import import_capture
    from usbtrace.store.database import Database

    database = Database(db)
    failed = 0
    for path in files:
        try:
            size = path.stat().st_size if path.exists() and path.is_file() else 0
            show = not quiet and size >= 4 << 20 and sys.stderr.isatty()
            with click.progressbar(length=size, label=f"importing {path.name}", file=sys.stderr,
                                   hidden=not show) as bar:
                result = import_capture(database, path, progress=bar.update, force=force,
                                        after=after, attribute_files=not no_files)
        except UsbtraceError as e:
            click.echo(f"usbtrace: error: {e}", err=True)
            failed += 1
            continue
        if result.duplicate_of is not None:
            click.echo(f"{path}: already imported as session {result.duplicate_of} "
                       "(--force to import again)")
            continue
        click.echo(f"{path}: session {result.session_id}: {result.records} records, "
                   f"{result.commands} SCSI commands, {len(result.malformed)} malformed "
                   f"({result.seconds:.2f} s)")
        for number, why in result.malformed[:5]:
            click.echo(f"  record {number}: {why}", err=True)
        if len(result.malformed) > 5:
            click.echo(f"  ... {len(result.malformed) - 5} more in the session's notes", err=True)
    if failed:
        sys.exit(2)


# ---- export ---------------------------------------------------------------------------


@main.command()
@click.argument("session", type=int)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The pcapng file to write.")
@click.option("--linktype", type=click.Choice(["usbpcap", "usbmon"]), default=None,
              help="Record format [default: usbmon for usbmon imports, else usbpcap].")
@db_option
@friendly
def export(session: int, output: Path, linktype: str | None, db: str) -> None:
    """Write a session's URBs as pcapng that Wireshark opens."""
    import calendar
    import time as _time

    from usbtrace.capture.export import export as write
    from usbtrace.store.database import Database

    database = Database(db, create=False, readonly=True)
    columns, rows = database.query(
        f"SELECT source, started_at, time_origin FROM sessions WHERE id = {int(session)}")
    if not rows:
        raise UsbtraceError(f"no session {session} in {db} (see 'usbtrace sessions')")
    source, started_at, origin = rows[0]
    if origin is None:
        origin = float(calendar.timegm(_time.strptime(started_at, "%Y-%m-%dT%H:%M:%SZ")))
    kind = linktype or ("usbmon" if source == "usbmon" else "usbpcap")
    columns, urb_rows = database.query(
        f"SELECT * FROM urbs WHERE session_id = {int(session)} ORDER BY seq")
    records = [dict(zip(columns, r)) for r in urb_rows]
    if not output.parent.exists():
        raise UsbtraceError(f"{output}: folder {output.parent} does not exist")
    with open(output, "wb") as stream:
        count = write(records, stream, kind, origin)
    click.echo(f"{output}: {count} {kind} records from {len(records)} URBs of session {session}")


# ---- replay -----------------------------------------------------------------------------


@main.command()
@click.argument("source")
@click.option("--mode", type=click.Choice(["device", "host"]), default="device",
              show_default=True, help="device: the stack against the recorded device; "
              "host: the recorded host against a target device.")
@click.option("--against", metavar="IMAGE", help="Host mode: the disk image the target starts "
              "from (a copy is used; default: blank, of the recorded capacity).")
@click.option("--speed", type=float, default=None, help="Host mode: keep the recorded timing, "
              "scaled (2 = twice as fast); default: as fast as possible.")
@click.option("--max-gap", type=float, default=None, metavar="SECONDS",
              help="With --speed: wait at most this long between commands.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Write the full report as JSON here ('-' for standard output).")
@db_option
def replay(source: str, mode: str, against: str | None, speed: float | None,
           max_gap: float | None, json_path: Path | None, db: str) -> None:
    """Replay a capture file or a session (N or session:N); exit 0 if identical,
    1 on divergence, 2 on error, 130 if interrupted."""
    from sqlalchemy.exc import SQLAlchemyError

    from usbtrace.replay.run import check_options
    from usbtrace.replay.run import replay as run

    def fail(message: str) -> NoReturn:
        click.echo(f"usbtrace: error: {message}", err=True)
        sys.exit(2)

    try:
        check_options(mode, speed, max_gap)
        if json_path is not None and str(json_path) != "-":
            _check_report_path(json_path, source, db)
        report = run(source, mode, against, speed, max_gap, db)
        click.echo(report.text())
        if json_path is not None:
            if str(json_path) == "-":
                click.echo(report.to_json())
            else:
                _write_atomically(json_path, report.to_json() + "\n")
    except KeyboardInterrupt:
        click.echo("usbtrace: interrupted", err=True)
        sys.exit(130)
    except UsbtraceError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    except SQLAlchemyError as e:
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or ["?"])[0]
        fail(f"database: {first}")
    except MemoryError:
        fail("out of memory")
    sys.exit(0 if report.identical else 1)


def _check_report_path(path: Path, source: str, db: str) -> None:
    """Refuse a --json path that cannot be written, or that is the database or the
    recording itself, before the replay runs."""
    if path.is_dir():
        raise UsbtraceError(f"--json {path}: is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise UsbtraceError(f"--json {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsbtraceError(f"--json {path}: folder {folder} is not writable")
    if path.exists():
        for other, what in ((db, "the database"), (source, "the recording")):
            try:
                same = Path(other).exists() and path.samefile(other)
            except (OSError, ValueError):
                same = False
            if same:
                raise UsbtraceError(f"--json {path}: is {what}; give another file")
        if not os.access(path, os.W_OK):
            raise UsbtraceError(f"--json {path}: is not writable")


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``:
    a reader never sees half a report, and a failure leaves no half-written file."""
    import tempfile

    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


# ---- log ------------------------------------------------------------------------------


@main.command(name="log")
@click.argument("session", type=int)
@db_option
@click.option("--limit", type=int, default=None, help="At most this many commands.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@friendly
def log_(session: int, db: str, limit: int | None, fmt: str) -> None:
    """A session's SCSI commands, one a line, with the files their blocks belong to."""
    from usbtrace.store.database import Database

    database = Database(db, create=False, readonly=True)
    if not database.session_exists(session):
        raise UsbtraceError(f"no session {session} in {db} (see 'usbtrace sessions')")
    what = database.aggregate(
        "CASE WHEN f.kind = 'data' THEN f.path || ' @' || f.file_offset "
        "WHEN f.kind = 'event' THEN f.operation || ' ' || f.path "
        "WHEN f.path IS NOT NULL THEN f.kind || ' ' || f.path ELSE f.kind END", "f.id")
    sql = (
        "SELECT c.seq, round(c.submitted_at, 6) AS time, c.name AS command, c.lba, c.blocks, "
        "c.data_length AS bytes, c.status, c.sense_key AS sense, "
        f"(SELECT {what} FROM file_activity f WHERE f.session_id = c.session_id "
        "AND f.scsi_seq = c.seq) AS blocks_belong_to "
        f"FROM scsi_commands c WHERE c.session_id = {int(session)} ORDER BY c.seq")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    columns, rows = database.query(sql)
    click.echo(render(columns, rows, fmt), nl=False)


# ---- files ----------------------------------------------------------------------------


@main.command(name="files")
@click.argument("session", type=int)
@db_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@friendly
def files_(session: int, db: str, fmt: str) -> None:
    """Per-file activity of a session: bytes read and written, and file events."""
    from usbtrace.store.database import Database

    database = Database(db, create=False, readonly=True)
    if not database.session_exists(session):
        raise UsbtraceError(f"no session {session} in {db} (see 'usbtrace sessions')")
    events = database.aggregate("CASE WHEN kind='event' THEN operation END")
    columns, rows = database.query(
        "SELECT path, "
        "sum(CASE WHEN kind='data' AND operation='read' THEN length ELSE 0 END) AS bytes_read, "
        "sum(CASE WHEN kind='data' AND operation='write' THEN length ELSE 0 END) "
        "AS bytes_written, "
        f"{events} AS events "
        f"FROM file_activity WHERE session_id = {int(session)} AND path IS NOT NULL "
        "AND kind IN ('data', 'event') GROUP BY path ORDER BY path")
    _, other = database.query(
        "SELECT kind, operation, sum(length) FROM file_activity "
        f"WHERE session_id = {int(session)} AND kind NOT IN ('data', 'event', 'directory') "
        "GROUP BY kind, operation ORDER BY kind, operation")
    click.echo(render(columns, rows, fmt), nl=False)
    if fmt == "table" and other:
        click.echo("not file data: " + ", ".join(f"{kind} {op} {n} B" for kind, op, n in other))


# ---- sessions and query -------------------------------------------------------------------


@main.command()
@db_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@friendly
def sessions(db: str, fmt: str) -> None:
    """List the sessions in a database."""
    from usbtrace.store.database import Database

    database = Database(db, create=False, readonly=True)
    columns, rows = database.query(
        "SELECT id, source, source_name, started_at, record_count, command_count, "
        "dropped_count, malformed_count, complete FROM sessions ORDER BY id")
    click.echo(render(columns, rows, fmt), nl=False)


@main.command()
@click.argument("sql")
@db_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@friendly
def query(sql: str, db: str, fmt: str) -> None:
    """Run one read-only SQL statement."""
    from usbtrace.store.database import Database

    database = Database(db, create=False, readonly=True)
    columns, rows = database.query(sql)
    click.echo(render(columns, rows, fmt), nl=False)


def _cell(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        return b[:32].hex() + ("..." if len(b) > 32 else "")
    return value


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    rows = [[_cell(v) for v in row] for row in rows]
    if fmt == "json":
        return json.dumps([dict(zip(columns, row)) for row in rows], indent=1) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue()
    text = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in text]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    main()
