"""Commands that analyse a stored session: stats, extract, timeline, report.

They only read the database (opened read-only) and write their outputs
through ``atomic_output``; the work itself is in ``usbtrace.analysis``.
"""

from __future__ import annotations

import json
import sys
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
    from usbtrace.store.database import Database

    if not 0 < session < 1 << 63:
        raise InputError(f"no session {session} (session numbers are from 1, see "
                         "'usbtrace sessions')")
    database = Database(db, create=False, readonly=True)
    if not database.session_exists(session):
        raise InputError(f"no session {session} in {db} (see 'usbtrace sessions')")
    return database


def _for_table(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Floats with 6 decimals (microseconds, as tshark prints them)."""
    return [tuple(f"{v:.6f}" if isinstance(v, float) else v for v in row) for row in rows]


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

    database = open_session(db, session)
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
            emit(st.THROUGHPUT_COLUMNS,
                 times.rows(st.throughput(database, session, interval, flt), 0), fmt)
            return
        tables["throughput"] = (st.THROUGHPUT_COLUMNS, list(
            times.rows(st.throughput(database, session, interval, flt), 0)))
    if fmt == "json":  # one object, a list per table
        json.dump({name: [dict(zip(cols, row)) for row in rows]
                   for name, (cols, rows) in tables.items()}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    titles = {"srt": "Service response time (s) per opcode",
              "errors": "Commands that did not end good",
              "throughput": f"Throughput per {interval:g} s" if interval else ""}
    for i, (name, (columns, rows)) in enumerate(tables.items()):
        if fmt == "table":
            if name == "errors" and not rows:
                click.echo(("\n" if i else "") + "No errors.")
                continue
            click.echo(("\n" if i else "") + titles[name] + ":")
            emit(columns, _for_table(rows), fmt)
        else:
            emit(columns, rows, fmt)


def register(group: click.Group) -> None:
    """Add the analysis commands to the ``usbtrace`` group."""
    for command in (stats,):
        group.add_command(command)


__all__ = ["register", "stats", "Path"]
