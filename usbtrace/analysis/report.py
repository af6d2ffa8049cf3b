"""One self-contained HTML report of a session, drawn with plotly, working offline.

The plotly.js bundle is embedded once; each figure is a ``<div>`` drawn by it,
so the file opens without a network.  Point clouds are capped (``MAX_POINTS``
per figure, every k-th command beyond, and the figure says so): a session of
any size gives a report a browser can open.
"""

from __future__ import annotations

import html
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from usbtrace.analysis import stats as st
from usbtrace.analysis.extract import RW_NAMES, command_segments, slice_segments
from usbtrace.analysis.filters import Filter

MAX_POINTS = 20_000  # SVG points: a browser draws these without WebGL
TOP_FILES = 12
_RW_SQL = "(" + ", ".join(f"'{n}'" for n in RW_NAMES) + ")"


@dataclass
class Summary:
    """What the report's first table says about the session."""

    fields: list[tuple[str, str]] = field(default_factory=list)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def capacity(database: Any, session: int) -> str | None:
    """The medium's size from the first good READ CAPACITY reply."""
    _, rows = database.query(
        "SELECT seq, name FROM scsi_commands WHERE session_id = :sid AND status = 'good' "
        "AND name IN ('read_capacity_10', 'read_capacity_16') AND data_length >= 8 "
        "ORDER BY seq LIMIT 1", {"sid": session})
    if not rows:
        return None
    segments, _ = command_segments(database, session, int(rows[0][0]))
    data = b"".join(piece for _, piece in slice_segments(segments, 0, 12))
    if rows[0][1] == "read_capacity_10" and len(data) >= 8:
        last, block = struct.unpack(">II", data[:8])
    elif len(data) >= 12:
        last, block = struct.unpack(">QI", data[:12])
    else:
        return None
    return f"{_size((last + 1) * block)} ({last + 1} blocks of {block} B)"


def file_system(database: Any, session: int) -> str | None:
    """The kind of volume the first boot sector read or written describes."""
    from usbtrace.fs.shadow import Malformed, _fat_volume

    _, rows = database.query(
        "SELECT scsi_seq, command_offset, lba FROM file_activity WHERE session_id = :sid "
        "AND kind = 'boot_sector' ORDER BY id LIMIT 1", {"sid": session})
    if not rows:
        _, kinds = database.query("SELECT DISTINCT detail FROM file_activity WHERE "
                                  "session_id = :sid AND kind = 'unsupported'", {"sid": session})
        return ", ".join(str(k[0]) for k in kinds if k[0]) or None
    seq, offset, lba = rows[0]
    segments, _ = command_segments(database, session, int(seq))
    sector = b"".join(p for _, p in slice_segments(segments, int(offset or 0), 512))
    volume = _fat_volume(int(lba or 0), sector)
    if volume is None:
        return None
    if isinstance(volume, str):
        return volume.upper()
    if isinstance(volume, Malformed):
        return f"malformed boot sector: {volume.reason}"
    label = {"fat12": "FAT12", "fat16": "FAT16", "fat32": "FAT32", "exfat": "exFAT"}
    return f"{label.get(volume.kind, volume.kind)} at LBA {volume.start}, " \
           f"{_size(volume.cluster_bytes)} clusters"


def summary(database: Any, session: int) -> Summary:
    _, rows = database.query(
        "SELECT source, source_name, started_at, duration, record_count, command_count, "
        "dropped_count, malformed_count, state, notes, clock FROM sessions WHERE id = :sid",
        {"sid": session})
    (source, name, started, duration, records, commands, dropped, malformed, state, notes,
     clock) = rows[0]
    _, devices = database.query(
        "SELECT d.bus, d.device, d.vid, d.pid, d.manufacturer, d.product, d.serial, "
        "(SELECT count(*) FROM scsi_commands c WHERE c.session_id = d.session_id AND "
        "c.bus = d.bus AND c.device = d.device) AS n FROM devices d "
        "WHERE d.session_id = :sid ORDER BY n DESC, d.bus, d.device", {"sid": session})
    _, gaps = database.query("SELECT count(*), coalesce(sum(dropped), 0) FROM gaps "
                             "WHERE session_id = :sid", {"sid": session})
    out = Summary()
    out.fields.append(("session", f"{session} ({source}: {name})"))
    out.fields.append(("started", f"{started}, {clock} clock, state {state}"))
    out.fields.append(("duration", f"{duration:.6f} s" if duration is not None else "?"))
    for bus, dev, vid, pid, maker, product, serial, n in devices:
        if not n:
            continue
        ident = f"{vid:04x}:{pid:04x}" if vid is not None and pid is not None else "?"
        words = " ".join(w.strip() for w in (maker, product) if w and w.strip())
        out.fields.append(("device", f"{bus}.{dev} {ident} {words}"
                                     f"{', serial ' + serial if serial else ''}: "
                                     f"{n} commands"))
    out.fields.append(("capacity", capacity(database, session) or "not seen"))
    out.fields.append(("file system", file_system(database, session) or "not seen"))
    out.fields.append(("counts", f"{records} records, {commands} SCSI commands, "
                                 f"{malformed} malformed"))
    failed = st.sense_summary(database, session)
    out.fields.append(("errors", ", ".join(f"{n} {key}" for key, n in failed)
                       + " (by sense key)" if failed else "none"))
    where = f"in {gaps[0][0]} gaps" if gaps[0][0] else "(the capture's count: see notes)"
    out.fields.append(("drops", f"{dropped} records dropped {where}" if dropped else "none"))
    out.fields.append(("notes", notes or "none"))
    return out


def _stride(database: Any, sql_count: str, params: dict[str, Any]) -> int:
    _, rows = database.query(sql_count, params)
    return max(1, math.ceil((rows[0][0] or 0) / MAX_POINTS))


def lba_figure(database: Any, session: int, flt: Filter) -> Any:
    """LBA over time: a point per READ/WRITE block range, coloured by operation and
    file (the busiest files by name, the rest together)."""
    import plotly.graph_objects as go

    cond, params = flt.commands_sql("c")
    params = {**params, "sid": session}
    where = (f"c.session_id = :sid AND c.name IN {_RW_SQL} AND c.lba IS NOT NULL "
             f"AND c.submitted_at IS NOT NULL AND {cond}")
    owner = ("(SELECT coalesce(f.path, f.kind) FROM file_activity f WHERE f.session_id = "
             "c.session_id AND f.scsi_seq = c.seq AND f.kind <> 'event' "
             "ORDER BY f.kind = 'data' DESC, f.id LIMIT 1)")
    _, top = database.query(
        f"SELECT {owner} AS o, count(*) FROM scsi_commands c WHERE {where} "
        "GROUP BY o ORDER BY count(*) DESC", params)
    named = [str(o) for o, _ in top[:TOP_FILES] if o is not None]
    stride = _stride(database, f"SELECT count(*) FROM scsi_commands c WHERE {where}", params)
    points: dict[tuple[str, str], tuple[list[float], list[int], list[str]]] = {}
    with database.stream(
            f"SELECT c.submitted_at, c.lba, c.blocks, c.name, {owner} FROM scsi_commands c "
            f"WHERE {where} AND c.seq % :stride = 0 ORDER BY c.seq",
            {**params, "stride": stride}) as (_, rows):
        for t, lba, blocks, name, who in rows:
            what = "write" if name.startswith("write") else "read"
            label = str(who) if who is not None and str(who) in named else \
                ("other files" if who is not None else "unattributed")
            xs, ys, texts = points.setdefault((what, label), ([], [], []))
            xs.append(t)
            ys.append(int(lba))
            texts.append(f"{name} {lba}+{blocks}")
    from plotly.colors import qualitative

    palette = qualitative.Dark24
    labels = sorted({label for _, label in points})
    colour = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    figure = go.Figure()
    for (what, label), (xs, ys, texts) in sorted(points.items()):
        figure.add_trace(go.Scatter(
            x=xs, y=ys, text=texts, mode="markers", name=f"{what}: {label}",
            marker={"symbol": "circle" if what == "read" else "triangle-up", "size": 7,
                    "color": colour[label], "line": {"width": 0}}, legendgroup=what))
    note = f" (1 command in {stride} shown)" if stride > 1 else ""
    figure.update_layout(title=f"LBA over time{note}: read ●, write ▲, a colour per file",
                         xaxis_title="seconds from start",
                         yaxis_title="LBA", height=520, legend={"font": {"size": 10}})
    return figure


def throughput_figure(database: Any, session: int, flt: Filter, duration: float) -> Any:
    import plotly.graph_objects as go

    interval = _nice_interval(duration / 100 if duration > 0 else 1.0)
    rows = list(st.throughput(database, session, interval, flt))
    if len(rows) > MAX_POINTS:
        interval = _nice_interval(duration / MAX_POINTS * 2)
        rows = list(st.throughput(database, session, interval, flt))
    figure = go.Figure()
    figure.add_trace(go.Bar(x=[r[0] for r in rows], y=[r[4] for r in rows],
                            name="device to host (read)", offset=0, width=interval))
    figure.add_trace(go.Bar(x=[r[0] for r in rows], y=[-r[5] for r in rows],
                            name="host to device (write, below 0)", offset=0,
                            width=interval))
    figure.update_layout(title=f"Throughput per {interval:g} s", barmode="relative",
                         xaxis_title="seconds from start", yaxis_title="MiB/s", height=380)
    return figure


def _nice_interval(seconds: float) -> float:
    """1, 2 or 5 times a power of ten, at least the given length."""
    if seconds <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(seconds))
    for step in (1, 2, 5, 10):
        if step * power >= seconds:
            return float(step * power)
    return float(10 * power)


def srt_figure(database: Any, session: int, flt: Filter) -> Any:
    """Service-time histograms, one per opcode, in milliseconds."""
    import plotly.graph_objects as go

    cond, params = flt.commands_sql("c")
    params = {**params, "sid": session}
    where = f"c.session_id = :sid AND {st.ANSWERED} AND {cond}"
    stride = _stride(database, f"SELECT count(*) FROM scsi_commands c WHERE {where}", params)
    values: dict[str, list[float]] = {}
    with database.stream(f"SELECT c.name, {st.SRT} FROM scsi_commands c WHERE {where} "
                         "AND c.seq % :stride = 0 ORDER BY c.opcode, c.seq",
                         {**params, "stride": stride}) as (_, rows):
        for name, srt in rows:
            values.setdefault(name, []).append(srt * 1000)
    figure = go.Figure()
    for name, xs in values.items():
        figure.add_trace(go.Histogram(x=xs, name=f"{name} ({len(xs)})", opacity=0.65,
                                      nbinsx=60))
    note = f" (1 command in {stride})" if stride > 1 else ""
    figure.update_layout(title=f"Service response time per opcode{note}", barmode="overlay",
                         xaxis_title="milliseconds (CBW submission to CSW completion)",
                         yaxis_title="commands", height=420)
    return figure


def files_rows(database: Any, session: int, flt: Filter) -> tuple[list[str], list[Any]]:
    cond, params = flt.files_sql("f")
    events = database.aggregate("CASE WHEN f.kind = 'event' THEN f.operation END", "f.id")
    return database.query(
        "SELECT f.path, sum(CASE WHEN f.kind = 'data' AND f.operation = 'read' "
        "THEN f.length ELSE 0 END) AS bytes_read, sum(CASE WHEN f.kind = 'data' AND "
        "f.operation = 'write' THEN f.length ELSE 0 END) AS bytes_written, "
        f"{events} AS events FROM file_activity f WHERE f.session_id = :sid AND f.path IS NOT "
        f"NULL AND f.kind IN ('data', 'event') AND {cond} GROUP BY f.path ORDER BY f.path",
        {**params, "sid": session})


def recoveries(database: Any, session: int, flt: Filter) -> tuple[list[str], list[Any]]:
    """What followed each failed command on its device and LUN: its REQUEST SENSE,
    and whether the same command was issued again and how that ended.  Streamed:
    one pending failure per device and LUN."""
    cond, params = flt.commands_sql("c")
    out: list[tuple[Any, ...]] = []
    pending: dict[tuple[Any, ...], dict[str, Any]] = {}
    with database.stream(
            "SELECT c.seq, c.bus, c.device, c.lun, c.name, c.lba, c.blocks, c.status, "
            f"c.sense_key FROM scsi_commands c WHERE c.session_id = :sid AND {cond} "
            "ORDER BY c.seq", {**params, "sid": session}) as (_, rows):
        for seq, bus, dev, lun, name, lba, blocks, status, sense in rows:
            key = (bus, dev, lun)
            failure = pending.get(key)
            if failure is not None:
                if name == "request_sense" and failure["sense_by"] is None:
                    failure["sense_by"] = f"REQUEST SENSE #{seq}: {sense or '?'}"
                    continue
                if (name, lba, blocks) == failure["what"]:
                    failure["retry"] = f"#{seq} {status}"
                    if status == "good":
                        out.append(_recovery(failure))
                        del pending[key]
                        continue
                elif failure["retry"] is None or name != "request_sense":
                    out.append(_recovery(failure))
                    del pending[key]
            if status != "good" and len(out) < 1000:
                pending[key] = {"seq": seq, "device": f"{bus}.{dev}", "lun": lun,
                                "command": name, "what": (name, lba, blocks),
                                "status": status, "sense": sense, "sense_by": None,
                                "retry": None}
    out.extend(_recovery(f) for f in pending.values())
    return (["seq", "device", "lun", "command", "status", "sense_key", "sense fetched",
             "then"], out)


def _recovery(f: dict[str, Any]) -> tuple[Any, ...]:
    then = f"retried: {f['retry']}" if f["retry"] else "not retried"
    return (f["seq"], f["device"], f["lun"], f["command"], f["status"], f["sense"],
            f["sense_by"] or "", then)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> str:
    rows = list(rows)
    if not rows:
        return f"<p class='empty'>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f"<td>{html.escape('' if v is None else f'{v:.6f}' if isinstance(v, float) else str(v))}"
        "</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .empty { color: #666; } .plot { min-height: 300px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dt { font-weight: 600; }
"""


def render(database: Any, session: int, flt: Filter | None = None) -> str:
    """The whole report as one HTML string (plotly.js embedded once)."""
    flt = flt or Filter()
    info = summary(database, session)
    _, duration_rows = database.query("SELECT coalesce(duration, 0) FROM sessions "
                                      "WHERE id = :sid", {"sid": session})
    figures = [("lba", lba_figure(database, session, flt)),
               ("throughput", throughput_figure(database, session, flt,
                                                float(duration_rows[0][0] or 0))),
               ("srt", srt_figure(database, session, flt))]
    plots = {}
    for i, (name, figure) in enumerate(figures):
        figure.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 50,
                                                              "b": 50})
        plots[name] = figure.to_html(full_html=False, include_plotlyjs=(i == 0),
                                     div_id=f"plot-{name}",
                                     config={"displaylogo": False, "responsive": True})
    srt_columns, srt_rows = st.service_time_rows(st.service_times(database, session, flt))
    err_columns, err_rows = st.errors(database, session, flt)
    file_columns, file_rows = files_rows(database, session, flt)
    rec_columns, rec_rows = recoveries(database, session, flt)
    summary_html = "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                    for k, v in info.fields) + "</dl>"
    filtered = "" if flt.empty else "<p><b>Filtered:</b> only the commands the filter " \
        "options kept.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>usbtrace report: session {session}</title>
<style>{STYLE}</style></head>
<body>
<h1>usbtrace report: session {session}</h1>
{filtered}
<h2>Summary</h2>
{summary_html}
<h2>Where the blocks went</h2>
<div class="plot">{plots['lba']}</div>
<h2>Throughput</h2>
<div class="plot">{plots['throughput']}</div>
<h2>Service response time</h2>
<div class="plot">{plots['srt']}</div>
{_table(srt_columns, srt_rows, "No commands.")}
<h2>Files</h2>
{_table(file_columns, file_rows, "No file was named: the capture did not show the "
        "file system's metadata.")}
<h2>Errors</h2>
{_table(err_columns, err_rows, "Every command ended good.")}
<h2>Recoveries</h2>
{_table(rec_columns, rec_rows, "No failed command to recover from.")}
</body></html>
"""
