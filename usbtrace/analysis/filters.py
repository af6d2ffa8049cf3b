"""Which SCSI commands a command looks at: options in, one SQL condition out.

A ``Filter`` is a plain value parsed from the command line (or built by a
script); ``Filter.commands_sql`` is a condition on ``scsi_commands`` (alias
``c``), ``Filter.files_sql`` one on ``file_activity`` (alias ``f``) and
``Filter.urbs_sql`` one on ``urbs`` (alias ``u``), each with its bound
parameters, so every command narrows the same rows in the database itself and
nothing is loaded to be thrown away.  ``filter_options`` is the click
decorator that adds the options and hands the command a ``flt`` argument.

The time format (``-t r|a|d``, as tshark's ``-t``) is display only:
``TimeFormat.rows`` rewrites a time column of a row stream as it passes.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from usbtrace.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])

# the usual values of scsi_commands.status; UAS adds SAM-5 names (busy, task_aborted, ...)
STATUSES = ("good", "check_condition", "phase_error", "missing", "aborted", "invalid")
_STATUS = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class Range:
    """A closed range; either end may be open (``None``)."""

    low: float | None
    high: float | None


@dataclass(frozen=True)
class Filter:
    """What to keep.  Every field narrows; an empty ``Filter`` keeps everything."""

    devices: tuple[str, ...] = ()   # "VID:PID" (hex) or "BUS.ADDRESS"
    luns: tuple[int, ...] = ()
    opcodes: tuple[str, ...] = ()   # a name (read_10, "READ(10)") or a number (40, 0x28)
    lba: Range | None = None
    statuses: tuple[str, ...] = ()
    files: tuple[str, ...] = ()     # globs on file_activity.path
    time: Range | None = None       # seconds from the session start
    where: str | None = None        # a SQL condition on scsi_commands c
    dialect: str = "sqlite"         # whose SQL to write: sqlite or postgresql

    def for_database(self, database: Any) -> Filter:
        """The same filter in the SQL of ``database`` (globs differ)."""
        name = database.engine.dialect.name if not database.is_sqlite else "sqlite"
        return dataclasses.replace(self, dialect=name)

    def _glob(self, column: str, param: str) -> str:
        """``column`` matches the glob bound as ``param``: GLOB in SQLite, a regular
        expression (see ``glob_regex``) elsewhere."""
        if self.dialect == "sqlite":
            return f"{column} GLOB :{param}"
        return f"{column} ~ :{param}"

    def _glob_value(self, pattern: str) -> str:
        return pattern if self.dialect == "sqlite" else glob_regex(pattern)

    @property
    def empty(self) -> bool:
        return not (self.devices or self.luns or self.opcodes or self.lba or self.statuses
                    or self.files or self.time or self.where)

    def commands_sql(self, alias: str = "c") -> tuple[str, dict[str, Any]]:
        """A condition on ``scsi_commands`` (``alias``) and its parameters; ``1=1``
        when nothing is filtered, so it can always follow an ``AND``."""
        parts: list[str] = []
        params: dict[str, Any] = {}
        if self.devices:
            alternatives = []
            for i, spec in enumerate(self.devices):
                alternatives.append(_device_sql(spec, alias, f"flt_dev{i}", params))
            parts.append("(" + " OR ".join(alternatives) + ")")
        if self.luns:
            names = _bind(params, "flt_lun", self.luns)
            parts.append(f"{alias}.lun IN ({names})")
        if self.opcodes:
            numbers, texts = [], []
            for spec in self.opcodes:
                number = _opcode_number(spec)
                if number is None:
                    texts.append(_opcode_name(spec))
                else:
                    numbers.append(number)
            alternatives = []
            if numbers:
                alternatives.append(f"{alias}.opcode IN ({_bind(params, 'flt_op', numbers)})")
            if texts:
                alternatives.append(f"{alias}.name IN ({_bind(params, 'flt_opname', texts)})")
            parts.append("(" + " OR ".join(alternatives) + ")")
        if self.lba is not None:
            # a command touches [lba, lba + blocks); it is kept if that meets [low, high]
            parts.append(f"{alias}.lba IS NOT NULL")
            if self.lba.high is not None:
                params["flt_lba_hi"] = int(self.lba.high)
                parts.append(f"{alias}.lba <= :flt_lba_hi")
            if self.lba.low is not None:
                params["flt_lba_lo"] = int(self.lba.low)
                parts.append(f"{alias}.lba + (CASE WHEN {alias}.blocks > 1 THEN "
                             f"{alias}.blocks ELSE 1 END) - 1 >= :flt_lba_lo")
        if self.statuses:
            parts.append(f"{alias}.status IN ({_bind(params, 'flt_st', self.statuses)})")
        if self.files:
            globs = " OR ".join(self._glob("ff.path", f"flt_file{i}")
                                for i in range(len(self.files)))
            for i, pattern in enumerate(self.files):
                params[f"flt_file{i}"] = self._glob_value(pattern)
            parts.append(f"EXISTS (SELECT 1 FROM file_activity ff WHERE ff.session_id = "
                         f"{alias}.session_id AND ff.scsi_seq = {alias}.seq AND ({globs}))")
        if self.time is not None:
            if self.time.low is not None:
                params["flt_t_lo"] = float(self.time.low)
                parts.append(f"coalesce({alias}.completed_at, {alias}.submitted_at) "
                             ">= :flt_t_lo")
            if self.time.high is not None:
                params["flt_t_hi"] = float(self.time.high)
                parts.append(f"{alias}.submitted_at <= :flt_t_hi")
        if self.where:
            condition = self.where
            if alias != "c":
                condition = re.sub(r"\bc\.", f"{alias}.", condition)
            parts.append(f"({condition})")
        return (" AND ".join(parts) or "1=1"), params

    def files_sql(self, alias: str = "f") -> tuple[str, dict[str, Any]]:
        """A condition on ``file_activity`` (``alias``): rows of kept commands, and
        with ``files`` only rows whose own path matches."""
        parts: list[str] = []
        command_filter = Filter(self.devices, self.luns, self.opcodes, self.lba,
                                self.statuses, (), self.time, self.where, self.dialect)
        cond, params = command_filter.commands_sql("fc")
        if not command_filter.empty:
            parts.append(f"EXISTS (SELECT 1 FROM scsi_commands fc WHERE fc.session_id = "
                         f"{alias}.session_id AND fc.seq = {alias}.scsi_seq AND {cond})")
        if self.files:
            for i, pattern in enumerate(self.files):
                params[f"flt_fpath{i}"] = self._glob_value(pattern)
            parts.append("(" + " OR ".join(self._glob(f"{alias}.path", f"flt_fpath{i}")
                                           for i in range(len(self.files))) + ")")
        return (" AND ".join(parts) or "1=1"), params

    def urbs_sql(self, alias: str = "u", session: int | None = None
                 ) -> tuple[str, dict[str, Any]]:
        """A condition on ``urbs`` (``alias``): the URBs of kept commands (CBW, data
        and CSW).  Without a command-level filter, only ``devices`` and ``time``
        apply, directly, so enumeration and other transfers stay.

        Given the ``session``, the kept commands' URB numbers are listed once (a
        recursive CTE SQLite keeps as an index) instead of searching the commands
        for every URB: linear rather than URBs x commands."""
        params: dict[str, Any] = {}
        command_level = bool(self.luns or self.opcodes or self.lba or self.statuses
                             or self.files or self.where)
        if command_level and session is not None:
            cond, params = self.commands_sql("uc")
            params["flt_sid"] = session
            return (f"(coalesce({alias}.bus, -1), coalesce({alias}.device, -1), {alias}.seq) "
                    "IN (WITH RECURSIVE kept(b, d, s, last) AS (SELECT coalesce(uc.bus, -1), "
                    "coalesce(uc.device, -1), uc.cbw_seq, coalesce(uc.csw_seq, uc.cbw_seq) "
                    f"FROM scsi_commands uc WHERE uc.session_id = :flt_sid AND {cond} "
                    "UNION ALL SELECT b, d, s + 1, last FROM kept WHERE s < last) "
                    "SELECT b, d, s FROM kept)"), params
        if command_level:
            cond, params = self.commands_sql("uc")
            return (f"EXISTS (SELECT 1 FROM scsi_commands uc WHERE uc.session_id = "
                    f"{alias}.session_id AND {alias}.seq BETWEEN uc.cbw_seq AND "
                    f"coalesce(uc.csw_seq, uc.cbw_seq) AND uc.bus IS NOT DISTINCT FROM "
                    f"{alias}.bus AND uc.device IS NOT DISTINCT FROM {alias}.device AND "
                    f"{cond})"), params
        parts = []
        if self.devices:
            parts.append("(" + " OR ".join(_device_sql(spec, alias, f"flt_udev{i}", params)
                                           for i, spec in enumerate(self.devices)) + ")")
        if self.time is not None:
            if self.time.low is not None:
                params["flt_t_lo"] = float(self.time.low)
                parts.append(f"coalesce({alias}.completed_at, {alias}.submitted_at) "
                             ">= :flt_t_lo")
            if self.time.high is not None:
                params["flt_t_hi"] = float(self.time.high)
                parts.append(f"coalesce({alias}.submitted_at, {alias}.completed_at) "
                             "<= :flt_t_hi")
        return (" AND ".join(parts) or "1=1"), params


def glob_regex(pattern: str) -> str:
    """A glob as an anchored POSIX regular expression with SQLite's GLOB meaning:
    ``*`` any run (``/`` too), ``?`` one character, ``[...]`` a class (``[^...]``
    negated), case-sensitive."""
    out, i = ["^"], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "]") else i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                out.append("[" + body + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out) + "$"


def _bind(params: dict[str, Any], prefix: str, values: Sequence[Any]) -> str:
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f":{prefix}{i}")
    return ", ".join(names)


_VIDPID = re.compile(r"^(?:usb:)?([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})$")
_BUSADDR = re.compile(r"^(\d{1,3})\.(\d{1,3})$")


def _device_sql(spec: str, alias: str, name: str, params: dict[str, Any]) -> str:
    m = _BUSADDR.match(spec)
    if m:
        params[f"{name}_bus"], params[f"{name}_dev"] = int(m[1]), int(m[2])
        return f"({alias}.bus = :{name}_bus AND {alias}.device = :{name}_dev)"
    m = _VIDPID.match(spec)
    if m:
        params[f"{name}_vid"], params[f"{name}_pid"] = int(m[1], 16), int(m[2], 16)
        return (f"EXISTS (SELECT 1 FROM devices d WHERE d.session_id = {alias}.session_id "
                f"AND d.bus = {alias}.bus AND d.device = {alias}.device "
                f"AND d.vid = :{name}_vid AND d.pid = :{name}_pid)")
    raise InputError(f"--device {spec}: give VID:PID in hex (0781:5567) or BUS.ADDRESS (1.8)")


def _opcode_number(spec: str) -> int | None:
    text = spec.strip().lower()
    try:
        value = int(text, 16) if text.startswith("0x") else int(text) if text.isdigit() \
            else None
    except ValueError:
        value = None
    if value is None:
        return None
    if not 0 <= value <= 0xFF:
        raise InputError(f"--opcode {spec}: an operation code is 0 to 255 (0x00 to 0xff)")
    return value


def _opcode_name(spec: str) -> str:
    """``READ(10)``, ``read 10``, ``read-10`` and ``read_10`` all name read_10."""
    name = re.sub(r"[^a-z0-9]+", "_", spec.strip().lower()).strip("_")
    if not name:
        raise InputError(f"--opcode {spec!r}: give a command name (read_10) or a number "
                         "(40, 0x28)")
    return name


def parse_range(text: str, what: str, integer: bool = False) -> Range:
    """``A-B``, ``A-`` or ``-B`` (also ``A..B``); numbers, hex for integers."""
    raw = text.strip()
    if ".." in raw:
        low_text, high_text = raw.split("..", 1)
    else:
        m = re.match(r"^([^-]*)-([^-]*)$", raw)
        if not m:
            raise InputError(f"{what} {text}: give a range A-B (either end may be left out)")
        low_text, high_text = m[1], m[2]

    def number(part: str) -> float | None:
        part = part.strip()
        if not part:
            return None
        try:
            if integer:
                value = int(part, 0) if part.lower().startswith("0x") else int(part)
                if value < 0:
                    raise ValueError
                return value
            value_f = float(part)
            if value_f != value_f or value_f in (float("inf"), float("-inf")):
                raise ValueError
            return value_f
        except ValueError:
            kind = "non-negative integers" if integer else "numbers (seconds)"
            raise InputError(f"{what} {text}: the ends must be {kind}") from None

    low, high = number(low_text), number(high_text)
    if low is None and high is None:
        raise InputError(f"{what} {text}: give at least one end of the range")
    if low is not None and high is not None and low > high:
        raise InputError(f"{what} {text}: the range ends before it starts")
    return Range(low, high)


def build_filter(device: Sequence[str] = (), lun: Sequence[int] = (),
                 opcode: Sequence[str] = (), lba: str | None = None,
                 status: Sequence[str] = (), file: Sequence[str] = (),
                 time: str | None = None, where: str | None = None) -> Filter:
    """A ``Filter`` from option values, every one checked (``InputError`` on a bad one)."""
    for spec in device:
        _device_sql(spec, "c", "check", {})
    opcodes = []
    for spec in opcode:
        for part in spec.split(","):
            if part.strip():
                if _opcode_number(part) is None:
                    _opcode_name(part)
                opcodes.append(part)
    statuses = []
    for spec in status:
        for part in spec.split(","):
            value = part.strip().lower()
            if value and not _STATUS.match(value):
                raise InputError(f"--status {part}: a status name such as "
                                 f"{', '.join(STATUSES)}")
            if value:
                statuses.append(value)
    if where is not None and not where.strip():
        raise InputError("--where: give a SQL condition on scsi_commands c")
    if where is not None and ";" in where:
        raise InputError("--where: one condition, no ';'")
    return Filter(devices=tuple(device), luns=tuple(lun), opcodes=tuple(opcodes),
                  lba=parse_range(lba, "--lba", integer=True) if lba else None,
                  statuses=tuple(statuses), files=tuple(file),
                  time=parse_range(time, "--time") if time else None,
                  where=where.strip() if where else None)


def filter_options(func: F) -> F:
    """Add the filter options to a click command; it receives ``flt: Filter``."""
    options = [
        click.option("--device", "flt_device", multiple=True, metavar="VID:PID|BUS.ADDR",
                     help="Only this device (repeat for several)."),
        click.option("--lun", "flt_lun", multiple=True, type=click.IntRange(0, 255),
                     help="Only this LUN."),
        click.option("--opcode", "flt_opcode", multiple=True, metavar="NAME|NUMBER",
                     help="Only this SCSI operation: read_10, 'READ(10)', 40 or 0x28."),
        click.option("--lba", "flt_lba", metavar="A-B",
                     help="Only commands touching blocks A to B (either end may be left out)."),
        click.option("--status", "flt_status", multiple=True, metavar="STATUS",
                     help=f"Only commands that ended so: {', '.join(STATUSES)}."),
        click.option("--file", "flt_file", multiple=True, metavar="GLOB",
                     help="Only commands whose blocks belong to a file matching this glob "
                     "('/docs/*', '*.txt')."),
        click.option("--time", "flt_time", metavar="A-B",
                     help="Only commands between A and B seconds from the session start."),
        click.option("--where", "flt_where", metavar="SQL",
                     help="Only commands for which this SQL condition on scsi_commands c "
                     "holds (read-only), e.g. \"c.data_length > 65536\"."),
    ]

    @functools.wraps(func)
    def wrapper(*args: Any, flt_device: tuple[str, ...], flt_lun: tuple[int, ...],
                flt_opcode: tuple[str, ...], flt_lba: str | None, flt_status: tuple[str, ...],
                flt_file: tuple[str, ...], flt_time: str | None, flt_where: str | None,
                **kwargs: Any) -> Any:
        try:
            kwargs["flt"] = build_filter(flt_device, flt_lun, flt_opcode, flt_lba, flt_status,
                                         flt_file, flt_time, flt_where)
        except InputError as e:  # before the command's own error handling: one line too
            from usbtrace.cli import fail

            fail(str(e))
        return func(*args, **kwargs)

    result: Any = wrapper
    for option in reversed(options):
        result = option(result)
    return result  # type: ignore[no-any-return]


# ---- time display -------------------------------------------------------------------

time_format_option = click.option(
    "-t", "time_format", type=click.Choice(["r", "a", "d"]), default="r", show_default=True,
    help="Times as r: seconds from the session start, a: absolute (UTC), d: delta from "
    "the previous row (as tshark -t).")


@dataclass
class TimeFormat:
    """Rewrites one time column of rows as they pass (``r`` leaves them as stored)."""

    kind: str = "r"
    origin: float | None = None  # the session's time_origin (epoch seconds)

    def value(self, t: float | None, previous: float | None) -> Any:
        if t is None or self.kind == "r":
            return t
        if self.kind == "d":
            return round(t - previous, 6) if previous is not None else 0.0
        if self.origin is None:
            return t
        stamp = datetime.fromtimestamp(self.origin + t, tz=timezone.utc)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"

    def rows(self, rows: Iterable[Sequence[Any]], column: int) -> Iterator[tuple[Any, ...]]:
        previous: float | None = None
        for row in rows:
            t = row[column]
            shown = self.value(t, previous)
            if t is not None:
                previous = t
            yield (*row[:column], shown, *row[column + 1:])


def session_origin(database: Any, session: int) -> float | None:
    """Epoch seconds of a session's time zero: ``time_origin``, else ``started_at``."""
    _, rows = database.query("SELECT time_origin, started_at FROM sessions WHERE id = :id",
                             {"id": session})
    if not rows:
        return None
    origin, started = rows[0]
    if origin is not None:
        return float(origin)
    try:
        return datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None
