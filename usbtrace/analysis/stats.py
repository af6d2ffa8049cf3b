"""Per-command statistics of a session, computed where the rows are.

Service response time (SRT) is what Wireshark's ``-z scsi,srt`` measures: from
the command's submission (the CBW, or UAS Command IU) to its completion (the
CSW, or Sense/Response IU).  Only answered commands have one, so ``calls``
counts those, as Wireshark's *Calls* does, beside ``commands`` (all issued).

Counts, sums, min, max and mean come from one SQL aggregate; percentiles from
a second, ordered pass that keeps only the values at the wanted ranks, so
memory does not grow with the session.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from usbtrace.analysis.filters import Filter
from usbtrace.storage.scsi import ASC_NAMES

PERCENTILES = (50, 90, 99)
SRT = "(c.completed_at - c.submitted_at)"
ANSWERED = ("c.csw_seq IS NOT NULL AND c.completed_at IS NOT NULL "
            "AND c.submitted_at IS NOT NULL")


@dataclass
class OpcodeStats:
    """One row of the service-time table."""

    key: tuple[Any, ...]          # (opcode,) or (bus, device, lun, opcode)
    name: str
    commands: int
    calls: int                    # answered: those with a service time
    errors: int                   # ended other than good (missing included)
    bytes: int
    srt_min: float | None
    srt_mean: float | None
    srt_max: float | None
    srt_sum: float
    percentiles: dict[int, float] = field(default_factory=dict)

    @property
    def opcode(self) -> int:
        return int(self.key[-1])


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def nearest_rank(p: float, n: int) -> int:
    """The 1-based rank of the p-th percentile of n sorted values (nearest-rank)."""
    return max(1, min(n, math.ceil(p / 100 * n)))


def pick_percentiles(values: Iterable[float], n: int,
                     percentiles: Iterable[int] = PERCENTILES) -> dict[int, float]:
    """The nearest-rank percentiles of ``n`` values given in ascending order, read in
    one pass without keeping them."""
    wanted: dict[int, list[int]] = {}
    for p in percentiles:
        wanted.setdefault(nearest_rank(p, n), []).append(p)
    found: dict[int, float] = {}
    for rank, value in enumerate(values, start=1):
        for p in wanted.get(rank, ()):
            found[p] = value
        if len(found) == len(wanted):
            break
    return found


def service_times(database: Any, session: int, flt: Filter | None = None,
                  per_device: bool = False) -> list[OpcodeStats]:
    """The service-time table, one row per opcode (per device and LUN too with
    ``per_device``), in opcode order.  Its length is bounded by the opcodes used."""
    flt = flt or Filter()
    cond, params = flt.commands_sql("c")
    params = {**params, "sid": session}
    keys = "c.bus, c.device, c.lun, c.opcode" if per_device else "c.opcode"
    width = 4 if per_device else 1
    sql = (f"SELECT {keys}, min(c.name), count(*), sum(CASE WHEN {ANSWERED} THEN 1 ELSE 0 END), "
           "sum(CASE WHEN c.status <> 'good' THEN 1 ELSE 0 END), "
           f"coalesce(sum(c.data_length), 0), "
           f"min(CASE WHEN {ANSWERED} THEN {SRT} END), "
           f"avg(CASE WHEN {ANSWERED} THEN {SRT} END), "
           f"max(CASE WHEN {ANSWERED} THEN {SRT} END), "
           f"coalesce(sum(CASE WHEN {ANSWERED} THEN {SRT} END), 0) "
           f"FROM scsi_commands c WHERE c.session_id = :sid AND {cond} "
           f"GROUP BY {keys} ORDER BY {keys}")
    table: dict[tuple[Any, ...], OpcodeStats] = {}
    _, rows = database.query(sql, params)
    for row in rows:
        key = tuple(row[:width])
        (name, commands, calls, errors, nbytes, lo, mean, hi, total) = row[width:]
        table[key] = OpcodeStats(key, name, int(commands), int(calls or 0), int(errors or 0),
                                 int(nbytes or 0), _float(lo), _float(mean), _float(hi),
                                 float(total or 0.0))
    if any(s.calls for s in table.values()):
        order = (f"SELECT {keys}, {SRT} FROM scsi_commands c WHERE c.session_id = :sid "
                 f"AND {ANSWERED} AND {cond} ORDER BY {keys}, {SRT}")
        with database.stream(order, params) as (_, ordered):
            _fill_percentiles(table, ordered, width)
    return list(table.values())


def _fill_percentiles(table: dict[tuple[Any, ...], OpcodeStats],
                      ordered: Iterable[tuple[Any, ...]], width: int) -> None:
    """One pass over (key..., srt) rows sorted by key then srt: each group's
    percentiles are the values met at their ranks."""
    key: tuple[Any, ...] | None = None
    rank = 0
    wanted: dict[int, list[int]] = {}
    for row in ordered:
        row_key = tuple(row[:width])
        if row_key != key:
            key, rank = row_key, 0
            wanted = {}
            for p in PERCENTILES:
                wanted.setdefault(nearest_rank(p, table[key].calls), []).append(p)
        rank += 1
        for p in wanted.get(rank, ()):
            table[key].percentiles[p] = float(row[width])


def service_time_rows(stats: list[OpcodeStats], per_device: bool = False
                      ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The table as columns and rows; times in seconds, as tshark prints them."""
    columns = (["device", "lun"] if per_device else []) + [
        "opcode", "command", "commands", "calls", "errors", "bytes", "srt_min", "srt_mean",
        "srt_p50", "srt_p90", "srt_p99", "srt_max", "srt_sum"]
    rows = []
    for s in stats:
        prefix: tuple[Any, ...] = (f"{s.key[0]}.{s.key[1]}", s.key[2]) if per_device else ()
        rows.append((*prefix, f"0x{s.opcode:02x}", s.name, s.commands, s.calls, s.errors,
                     s.bytes, s.srt_min, s.srt_mean, *(s.percentiles.get(p)
                                                        for p in PERCENTILES),
                     s.srt_max, s.srt_sum if s.calls else None))
    return columns, rows


def errors(database: Any, session: int, flt: Filter | None = None
           ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Commands that did not end ``good``, by opcode, status and sense key/ASC/ASCQ."""
    flt = flt or Filter()
    cond, params = flt.commands_sql("c")
    _, rows = database.query(
        "SELECT c.opcode, min(c.name), c.status, c.sense_key, c.asc, c.ascq, count(*), "
        "min(c.seq) FROM scsi_commands c WHERE c.session_id = :sid AND c.status <> 'good' "
        f"AND {cond} GROUP BY c.opcode, c.status, c.sense_key, c.asc, c.ascq "
        "ORDER BY c.opcode, count(*) DESC", {**params, "sid": session})
    columns = ["opcode", "command", "status", "sense_key", "asc", "meaning", "count",
               "first_seq"]
    out = []
    for opcode, name, status, sense, asc, ascq, count, first in rows:
        code = f"0x{asc:02x}/0x{ascq:02x}" if asc is not None and ascq is not None else None
        meaning = ASC_NAMES.get((asc, ascq)) if code else None
        out.append((f"0x{opcode:02x}", name, status, sense, code, meaning, count, first))
    return columns, out


def sense_summary(database: Any, session: int, flt: Filter | None = None
                  ) -> list[tuple[str, int]]:
    """Errors by sense key (``none`` where a failed command carried no sense)."""
    flt = flt or Filter()
    cond, params = flt.commands_sql("c")
    _, rows = database.query(
        "SELECT coalesce(c.sense_key, 'none'), count(*) FROM scsi_commands c "
        f"WHERE c.session_id = :sid AND c.status <> 'good' AND {cond} "
        "GROUP BY coalesce(c.sense_key, 'none') ORDER BY count(*) DESC",
        {**params, "sid": session})
    return [(str(k), int(n)) for k, n in rows]


def throughput(database: Any, session: int, interval: float, flt: Filter | None = None,
               skipped: list[Skipped] | None = None
               ) -> Iterator[tuple[float, int, int, int, float, float]]:
    """Per interval from the session start: (start, commands, bytes in, bytes out,
    MiB/s in, MiB/s out), empty intervals included (up to ``EMPTY_ROWS``, see
    ``bucket_throughput``, which lists in ``skipped`` those it leaves out), streamed.
    A command counts in the interval where it was submitted."""
    flt = flt or Filter()
    cond, params = flt.commands_sql("c")
    sql = ("SELECT c.submitted_at, c.data_direction, c.data_length FROM scsi_commands c "
           "WHERE c.session_id = :sid AND c.submitted_at IS NOT NULL "
           f"AND {cond} ORDER BY c.submitted_at")
    with database.stream(sql, {**params, "sid": session}) as (_, rows):
        yield from bucket_throughput(rows, interval, skipped=skipped)


# Empty intervals given in all, at most: a session's span is not bounded by its
# commands (two captures years apart merged, a corrupt timestamp), and one row per
# empty second of three years is 10^8 rows.  Past this, a gap gives its first and last
# empty interval only: the rates still fall to zero and rise from it where they did.
EMPTY_ROWS = 100_000


@dataclass(frozen=True)
class Skipped:
    """Empty intervals a gap too long to fill leaves out: ``count`` of them, from the
    one starting at ``first`` to the one starting at ``last`` (session seconds)."""

    first: float
    last: float
    count: int

    def describe(self, shown: Any = None, last_shown: Any = None) -> str:
        """In words; ``shown`` and ``last_shown``: the times as the rows show them."""
        first = self.first if shown is None else shown
        last = self.last if last_shown is None else last_shown
        return (f"{self.count} empty intervals from {first} to {last} are not listed: "
                f"past {EMPTY_ROWS} empty rows, a gap shows its first and last interval "
                "only")


def bucket_throughput(rows: Iterable[tuple[Any, ...]], interval: float,
                      empty_rows: int = EMPTY_ROWS, skipped: list[Skipped] | None = None
                      ) -> Iterator[tuple[float, int, int, int, float, float]]:
    """(time, direction, length) rows in time order, summed per interval in one pass
    (here rather than in SQL: databases do not agree on how a float becomes an
    integer).  Gaps are filled with empty intervals while ``empty_rows`` lasts; past
    that, each stretch left out is appended to ``skipped``, so the output can say so."""
    mib = interval * (1 << 20)
    current: int | None = None
    count = nin = nout = 0

    def row(bucket: int, count: int, nin: int, nout: int
            ) -> tuple[float, int, int, int, float, float]:
        return (round(bucket * interval, 9), count, nin, nout, nin / mib, nout / mib)

    for t, direction, length in rows:
        bucket = math.floor(float(t) / interval)
        if current is not None and bucket != current:
            yield row(current, count, nin, nout)
            gap = bucket - current - 1
            if gap <= empty_rows:
                empty_rows -= gap
                for empty in range(current + 1, bucket):
                    yield row(empty, 0, 0, 0)
            else:  # too long to fill: its edges
                yield row(current + 1, 0, 0, 0)
                if gap > 2 and skipped is not None:
                    skipped.append(Skipped(round((current + 2) * interval, 9),
                                           round((bucket - 2) * interval, 9), gap - 2))
                if gap > 1:
                    yield row(bucket - 1, 0, 0, 0)
            count = nin = nout = 0
        current = bucket
        count += 1
        if direction == "in":
            nin += int(length or 0)
        elif direction == "out":
            nout += int(length or 0)
    if current is not None:
        yield row(current, count, nin, nout)


THROUGHPUT_COLUMNS = ["time", "commands", "bytes_in", "bytes_out", "mib_s_in", "mib_s_out"]
