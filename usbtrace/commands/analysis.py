"""Commands that analyse a stored session: stats, extract, timeline, report.

They only read the database (opened read-only) and write their outputs
through ``atomic_output``; the work itself is in ``usbtrace.analysis``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from usbtrace.analysis.filters import (
    Filter,
    TimeFormat,
    filter_options,
    session_origin,
    time_format_option,
)
from usbtrace.cli import db_option, emit, format_option, friendly
from usbtrace.errors import InputError


def open_session(db: str, session: int) -> Any:
    """The database, read-only, once the session is known to be in it."""
    from usbtrace.store.sqlite_read import open_read_only

    if not 0 < session < 1 << 63:
        raise InputError(f"no session {session} (session numbers are from 1, see "
                         "'usbtrace sessions')")
    database = open_read_only(db)
    if not database.session_exists(session):
        raise InputError(f"no session {session} in {db} (see 'usbtrace sessions')")
    return database


def _for_table(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """Floats with 6 decimals (microseconds, as tshark prints them)."""
    for row in rows:
        yield tuple(f"{v:.6f}" if isinstance(v, float) else v for v in row)


# ---- stats -------------------------------------------------------------------------------


@click.command()
@click.argument("session", type=int)
@db_option
@click.option("--per-device", is_flag=True, help="One row per device, LUN and opcode.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Also throughput per interval of this length.")
@click.option("--section", type=click.Choice(["all", "srt", "errors", "throughput"]),
              default="all", show_default=True,
              help="Which table; csv, tsv and jsonl write one (srt unless named).")
@format_option
@time_format_option
@filter_options
@friendly
def stats(session: int, db: str, per_device: bool, interval: float | None, section: str,
          fmt: str, time_format: str, flt: Filter) -> None:
    """Per opcode: counts, bytes and service response times (CBW submission to CSW
    completion: min, mean, p50, p90, p99, max, in seconds, as tshark -z scsi,srt,0);
    errors by sense key; throughput over time with --interval."""
    from usbtrace.analysis import stats as st
    from usbtrace.store.notes import caveats

    database = open_session(db, session)
    flt = flt.for_database(database)
    _, noted = database.query("SELECT notes FROM sessions WHERE id = :sid", {"sid": session})
    notes = caveats(noted[0][0])  # what says these figures may be wrong
    skipped: list[st.Skipped] = []  # empty intervals the throughput leaves out
    if section == "throughput" and interval is None:
        raise InputError("--section throughput needs --interval SECONDS")
    if section == "all" and fmt in ("csv", "tsv", "jsonl"):
        section = "srt"
    times = TimeFormat(time_format, session_origin(database, session))
    tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    if section in ("all", "srt"):
        tables["srt"] = st.service_time_rows(
            st.service_times(database, session, flt, per_device), per_device)
    if section in ("all", "errors"):
        tables["errors"] = st.errors(database, session, flt)
    if section in ("all", "throughput") and interval is not None:
        if section == "throughput" and fmt != "json":  # one table alone: stream it
            rows = times.rows(st.throughput(database, session, interval, flt, skipped), 0)
            if fmt == "table":
                click.echo(f"Throughput per {interval:g} s:")
            emit(st.THROUGHPUT_COLUMNS, _for_table(rows) if fmt == "table" else rows, fmt)
            _footer(_skipped_lines(skipped, times) + notes, fmt)
            return
        tables["throughput"] = (st.THROUGHPUT_COLUMNS, list(
            times.rows(st.throughput(database, session, interval, flt, skipped), 0)))
    if fmt == "json":  # one object, a list per table
        out: dict[str, Any] = {name: [dict(zip(cols, row)) for row in rows]
                               for name, (cols, rows) in tables.items()}
        if skipped:
            out["throughput_skipped"] = [
                {"first": s.first, "last": s.last, "intervals": s.count, "note": line}
                for s, line in zip(skipped, _skipped_lines(skipped, times))]
        if notes:
            out["notes"] = notes
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    titles = {"srt": "Service response time (s) per opcode",
              "errors": "Commands that did not end good",
              "throughput": f"Throughput per {interval:g} s" if interval else ""}
    for i, (name, (columns, table)) in enumerate(tables.items()):
        if fmt == "table":
            if name == "errors" and not table:
                click.echo(("\n" if i else "") + "No errors.")
                continue
            click.echo(("\n" if i else "") + titles[name] + ":")
            emit(columns, _for_table(table), fmt)
        else:
            emit(columns, table, fmt)
    _footer(_skipped_lines(skipped, times) + notes, fmt)


def _skipped_lines(skipped: list[Any], times: TimeFormat) -> list[str]:
    """One line per stretch of empty intervals the throughput left out, its times as the
    rows give them (absolute with ``-t a``, else session seconds)."""
    def shown(t: float) -> Any:
        return times.value(t, None) if times.kind == "a" else f"{t:.6f}"
    return [s.describe(shown(s.first), shown(s.last)) for s in skipped]


def _footer(lines: list[str], fmt: str) -> None:
    """What the rows cannot say: under the table, or on stderr for csv, tsv and jsonl,
    whose readers take every line of stdout for a row (json has keys for it)."""
    for line in lines:
        if fmt == "table":
            click.echo(f"note: {line}")
        else:
            click.echo(f"usbtrace: note: {line}", err=True)


# ---- extract -----------------------------------------------------------------------------


def _replaceable(output: Path, database: Any) -> None:
    """An existing output folder is replaced only with --force, only if it is an
    earlier extract (it has manifest.json), and never if the database is in it."""
    if not output.is_dir():
        raise InputError(f"-o {output}: exists and is not a folder")
    if not (output / "manifest.json").is_file():
        raise InputError(f"-o {output}: exists and is not an earlier extract (no "
                         "manifest.json); choose another folder")
    if database.path is not None and output.resolve() in database.path.resolve().parents:
        raise InputError(f"-o {output}: the database {database.path} is inside it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@click.command()
@click.argument("session", type=int)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Folder to create [default: extract-SESSION].")
@click.option("--force", is_flag=True, help="Replace an earlier extract in that folder.")
@db_option
@filter_options
@friendly
def extract(session: int, output: Path | None, force: bool, db: str, flt: Filter) -> None:
    """Rebuild every file the session read or wrote under files/PATH (renamed or moved
    files under their final name), with manifest.json (size, holes, truncation) and
    SHA256SUMS; with --lba A-B also the raw blocks A to B as sectors-A-B.bin."""
    import shutil
    import tempfile

    from usbtrace.analysis.extract import extract_files, extract_sectors

    database = open_session(db, session)
    flt = flt.for_database(database)
    output = output or Path(f"extract-{session}")
    if output.exists() or output.is_symlink():
        if not force:
            raise InputError(f"-o {output}: already exists (--force to replace it)")
        _replaceable(output, database)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"-o {output}: folder {parent} does not exist")
    temp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".part", dir=parent))
    os.chmod(temp, 0o777 & ~_umask())
    try:
        files = extract_files(database, session, temp, flt)
        sectors = extract_sectors(database, session, temp, flt.lba, flt) \
            if flt.lba is not None else None
        manifest = {"session": session, "database": str(db),
                    "files": [f.manifest() for f in files],
                    "sectors": [sectors.manifest()] if sectors else []}
        (temp / "manifest.json").write_text(json.dumps(manifest, indent=1,
                                                       ensure_ascii=False) + "\n")
        with open(temp / "SHA256SUMS", "w", encoding="utf-8") as sums:
            for f in files:
                sums.write(f"{f.sha256}  files{f.path}\n")
            if sectors:
                sums.write(f"{sectors.sha256}  {sectors.file}\n")
        old = None
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=parent))
            os.replace(output, old / "previous")
        os.replace(temp, output)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    rows = []
    for f in files:
        m = f.manifest()
        parts = [] if not m["holes"] else \
            [f"{len(m['holes'])} hole{'s' if len(m['holes']) != 1 else ''}"]
        if not f.size_known:
            parts.append("size unknown")
        state = ", ".join(parts) or "complete"
        if f.truncated:
            state += ", cut in capture"
        rows.append((f.path, f.size, m["bytes_known"], state + (", deleted" if f.deleted
                                                                   else ""), f.sha256[:16]))
    emit(["path", "size", "known", "state", "sha256"], rows, "table")
    if sectors:
        m = sectors.manifest()
        click.echo(f"{sectors.file}: blocks {sectors.first}-{sectors.last} of "
                   f"{sectors.block_size} B, {'complete' if m['complete'] else 'unknown: '}"
                   f"{'' if m['complete'] else m['unknown_lbas']}")
    click.echo(f"{output}: {len(files)} file{'s' if len(files) != 1 else ''}, manifest.json, "
               "SHA256SUMS")


# ---- timeline ----------------------------------------------------------------------------


@click.command()
@click.argument("session", type=int)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The trace file to write (JSON), for Perfetto or chrome://tracing.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@db_option
@friendly
def timeline(session: int, output: Path, force: bool, db: str) -> None:
    """A session as Chrome trace events: a track per tracer position and device, READ
    -> SRB -> URB slices nested, PnP and power IRPs as instants, file names as
    arguments.  Open it in https://ui.perfetto.dev or chrome://tracing."""
    from usbtrace.analysis.timeline import write_trace
    from usbtrace.outputs import atomic_output

    database = open_session(db, session)
    with atomic_output(output, force, database, "-o", mode="w") as stream:
        count = write_trace(database, session, stream)
    click.echo(f"{output}: {count} trace events of session {session}")


# ---- report ------------------------------------------------------------------------------


@click.command()
@click.argument("session", type=int)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The HTML file to write.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@db_option
@filter_options
@friendly
def report(session: int, output: Path, force: bool, db: str, flt: Filter) -> None:
    """One self-contained HTML page (works offline): summary, LBA over time, throughput,
    service-time histograms, files, errors and recoveries."""
    from usbtrace.analysis.report import render
    from usbtrace.outputs import atomic_output, check_output

    database = open_session(db, session)
    flt = flt.for_database(database)
    check_output(output, force, database, "-o")  # before the work, not after it
    page = render(database, session, flt)
    with atomic_output(output, force, database, "-o", mode="w") as stream:
        stream.write(page)
    click.echo(f"{output}: report of session {session} ({len(page) >> 10} KiB)")


def register(group: click.Group) -> None:
    """Add the analysis commands to the ``usbtrace`` group."""
    for command in (stats, extract, timeline, report):
        group.add_command(command)
