"""A session as Chrome trace events, the JSON that Perfetto and chrome://tracing open.

One process per device, one track (thread) per tracer position: ``upper``
(READ/WRITE and the other IRPs above the disk driver), ``lower`` (the
commands and URBs under usbstor that no upper IRP explains) or ``capture``
for an imported capture, and ``transfers`` for URBs outside any command
(enumeration, interrupts).  A slice sits on the track of its outermost IRP,
so a READ holds its SRBs (the SCSI commands) and they hold their URBs:
READ -> SRB -> URB, each exactly once.  PnP and power IRPs are instants.

Viewers nest slices on one track by time, so nesting must be exact: times
are whole nanoseconds (as microseconds with 3 decimals), children are
clamped into their parent, siblings that overlap are cut at the next one's
start (marked ``clipped``), and top-level slices that overlap (queued IRPs,
UAS streams) go to a further track of the same kind (``lower #2``).

Everything is streamed: rows are read in order and events written as they
come; what is kept is the open slices and one end time per track.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any


def us(seconds: float) -> float:
    """Seconds to trace microseconds, rounded to the nanosecond."""
    return round(seconds * 1e6, 3)


@dataclass
class Tracks:
    """Track ids per device process, with greedy lanes for overlapping slices."""

    pids: dict[str, int] = field(default_factory=dict)
    tids: dict[tuple[int, str], int] = field(default_factory=dict)
    lane_end: dict[tuple[int, str, int], float] = field(default_factory=dict)
    meta: list[dict[str, Any]] = field(default_factory=list)  # new metadata to write

    def pid(self, device: str, label: str) -> int:
        if device not in self.pids:
            self.pids[device] = len(self.pids) + 1
            self.meta.append({"ph": "M", "name": "process_name", "pid": self.pids[device],
                              "tid": 0, "args": {"name": label}})
            self.meta.append({"ph": "M", "name": "process_sort_index",
                              "pid": self.pids[device], "tid": 0,
                              "args": {"sort_index": self.pids[device]}})
        return self.pids[device]

    def tid(self, pid: int, kind: str, lane: int = 0) -> int:
        name = kind if lane == 0 else f"{kind} #{lane + 1}"
        if (pid, name) not in self.tids:
            tid = len([k for k in self.tids if k[0] == pid]) + 1
            self.tids[(pid, name)] = tid
            self.meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                              "args": {"name": name}})
            self.meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid,
                              "tid": tid, "args": {"sort_index": tid}})
        return self.tids[(pid, name)]

    def place(self, pid: int, kind: str, start: float, end: float) -> tuple[int, int]:
        """The first lane of ``kind`` free at ``start``: (tid, lane)."""
        lane = 0
        while self.lane_end.get((pid, kind, lane), float("-inf")) > start:
            lane += 1
        self.lane_end[(pid, kind, lane)] = max(end, self.lane_end.get((pid, kind, lane),
                                                                      float("-inf")))
        return self.tid(pid, kind, lane), lane

    def take_meta(self) -> list[dict[str, Any]]:
        out, self.meta = self.meta, []
        return out


def _span(start: float | None, end: float | None) -> tuple[float, float] | None:
    if start is None and end is None:
        return None
    a = us(start if start is not None else end)  # type: ignore[arg-type]
    b = us(end if end is not None else start)  # type: ignore[arg-type]
    return a, max(a, b)


def _clamp(span: tuple[float, float], parent: tuple[float, float]) -> tuple[float, float]:
    a = min(max(span[0], parent[0]), parent[1])
    b = min(max(span[1], a), parent[1])
    return a, b


def _slice(name: str, cat: str, pid: int, tid: int, span: tuple[float, float],
           args: dict[str, Any]) -> dict[str, Any]:
    return {"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": span[0],
            "dur": round(span[1] - span[0], 3),
            "args": {k: v for k, v in args.items() if v is not None}}


def _hex(value: Any) -> Any:
    return bytes(value).hex() if isinstance(value, (bytes, bytearray, memoryview)) else value


def trace_events(database: Any, session: int) -> Iterator[dict[str, Any]]:
    """The session's trace events, streamed (metadata events come before the first
    event that uses their track)."""
    tracks = Tracks()
    sid = {"sid": session}
    _, info = database.query("SELECT source, source_name FROM sessions WHERE id = :sid", sid)
    source = info[0][0] if info else "capture"
    _, rows = database.query(
        "SELECT c.bus, c.device, d.vid, d.pid, d.product FROM scsi_commands c "
        "LEFT JOIN devices d ON d.session_id = c.session_id AND d.bus = c.bus AND "
        "d.device = c.device WHERE c.session_id = :sid "
        "GROUP BY c.bus, c.device, d.vid, d.pid, d.product ORDER BY count(*) DESC", sid)
    labels: dict[str, str] = {}
    for bus, dev, vid, pid_, product in rows:
        ident = f" {vid:04x}:{pid_:04x}" if vid is not None and pid_ is not None else ""
        labels[f"{bus}.{dev}"] = f"device {bus}.{dev}{ident}" + (f" {product}" if product
                                                                 else "")
    storage = next(iter(labels), None)
    _, counted = database.query("SELECT count(*) FROM irps WHERE session_id = :sid", sid)
    lower = "lower" if counted[0][0] else source

    def pid_of(device: str | None) -> int:
        key = device or storage or "host"
        return tracks.pid(key, labels.get(key, f"device {key}" if key != "host" else "host"))

    upper_lanes: dict[str, tuple[int, int]] = {}  # upper IRP -> (pid, tid), off lane 0 only
    # -- upper and other IRPs: slices; PnP and power: instants ------------------------
    with database.stream(
            "SELECT i.irp_id, i.position, i.major, i.minor, i.ioctl, i.status, "
            "i.information, i.detail, i.\"offset\", i.length, i.file_object, i.submitted_at, "
            "i.completed_at, (SELECT c.bus || '.' || c.device FROM irps l JOIN scsi_commands "
            "c ON c.session_id = l.session_id AND c.irp_id = l.irp_id WHERE l.session_id = "
            "i.session_id AND l.parent_irp_id = i.irp_id LIMIT 1) "
            "FROM irps i WHERE i.session_id = :sid AND (i.position = 'upper' OR i.major IN "
            "('pnp', 'power')) ORDER BY i.submitted_at, i.seq", sid) as (_, irps):
        for (irp_id, position, major, minor, ioctl, status, information, detail, offset,
             length, file_object, start, end, device) in irps:
            span = _span(start, end)
            if span is None:
                continue
            pid = pid_of(device)
            args = {"irp": irp_id, "minor": minor, "ioctl": ioctl, "status": status,
                    "information": information, "detail": detail, "offset": offset,
                    "length": length, "file_object": file_object}
            name = (minor or major).upper() if major in ("pnp", "power") else \
                (ioctl or major).upper()
            if major in ("pnp", "power"):
                tid = tracks.tid(pid, position)
                yield from tracks.take_meta()
                yield {"ph": "i", "s": "t", "name": name, "cat": major, "pid": pid,
                       "tid": tid, "ts": span[0], "args": {k: v for k, v in args.items()
                                                           if v is not None}}
                continue
            tid, lane = tracks.place(pid, position, span[0], span[1])
            if lane:
                upper_lanes[irp_id] = (pid, tid)
            yield from tracks.take_meta()
            yield _slice(name, "irp", pid, tid, span, args)
    # -- commands (SRBs) and their URBs, merged in record order ------------------------
    files = database.aggregate(
        "CASE WHEN f.kind = 'data' THEN f.path || ' @' || f.file_offset "
        "WHEN f.path IS NOT NULL THEN f.operation || ' ' || f.path ELSE f.kind END", "f.id")
    commands_sql = (
        "SELECT c.seq, c.bus, c.device, c.lun, c.tag, c.name, c.lba, c.blocks, c.data_length, "
        "c.status, c.sense_key, c.irp_id, c.cbw_seq, coalesce(c.csw_seq, c.cbw_seq), "
        "c.submitted_at, c.completed_at, p.irp_id, p.submitted_at, p.completed_at, "
        f"(SELECT {files} FROM file_activity f WHERE f.session_id = c.session_id AND "
        "f.scsi_seq = c.seq AND f.kind IN ('data', 'event')) "
        "FROM scsi_commands c LEFT JOIN irps p ON p.session_id = c.session_id AND "
        "p.position = 'upper' AND p.irp_id = (SELECT l.parent_irp_id FROM irps l WHERE "
        "l.session_id = c.session_id AND l.irp_id = c.irp_id AND l.parent_irp_id IS NOT "
        "NULL LIMIT 1) WHERE c.session_id = :sid ORDER BY c.cbw_seq")
    urbs_sql = (
        "SELECT u.seq, u.bus, u.device, u.endpoint, u.transfer_type, u.direction, u.status, "
        "u.requested_length, u.actual_length, u.truncated, u.setup, u.irp_id, "
        "u.submitted_at, u.completed_at FROM urbs u WHERE u.session_id = :sid ORDER BY u.seq")

    @dataclass
    class Open:
        seq: int
        last: int            # csw_seq
        pid: int
        tid: int
        span: tuple[float, float]
        child_end: float

    with database.stream(commands_sql, sid) as (_, commands), \
            database.stream(urbs_sql, sid) as (_, urbs):
        pending = next(commands, None)
        open_by_device: dict[str, list[Open]] = {}
        for (useq, ubus, udev, endpoint, ttype, direction, ustatus, requested, actual,
             truncated, setup, uirp, ustart, uend) in urbs:
            while pending is not None and pending[12] <= useq:
                (seq, bus, dev, lun, tag, name, lba, blocks, nbytes, status, sense, irp_id,
                 cbw, csw, start, end, parent, pstart, pend, owners) = pending
                pending = next(commands, None)
                span = _span(start, end)
                if span is None:
                    continue
                device = f"{bus}.{dev}"
                pid = pid_of(device)
                if parent is not None and _span(pstart, pend) is not None:
                    span = _clamp(span, _span(pstart, pend))  # type: ignore[arg-type]
                    ppid, tid = upper_lanes.get(parent, (pid, tracks.tid(pid, "upper")))
                    pid = ppid
                else:
                    tid, _ = tracks.place(pid, lower, span[0], span[1])
                yield from tracks.take_meta()
                yield _slice(name.upper(), "scsi", pid, tid, span, {
                    "seq": seq, "lun": lun, "tag": tag, "lba": lba, "blocks": blocks,
                    "bytes": nbytes, "status": status, "sense_key": sense, "irp": irp_id,
                    "files": owners})
                open_by_device.setdefault(device, []).append(
                    Open(seq, csw, pid, tid, span, span[0]))
            device = f"{ubus}.{udev}"
            alive = [o for o in open_by_device.get(device, ()) if o.last >= useq]
            open_by_device[device] = alive
            span = _span(ustart, uend)
            if span is None:
                continue
            name = f"URB {ttype} {direction} ep 0x{endpoint:02x}"
            args = {"seq": useq, "irp": uirp, "status": ustatus, "requested": requested,
                    "actual": actual, "truncated": bool(truncated) or None,
                    "setup": _hex(setup)}
            owner = alive[0] if alive else None
            if owner is not None:
                clipped = _clamp(span, owner.span)
                if clipped[0] < owner.child_end:  # overlaps the previous sibling
                    clipped = (owner.child_end, max(owner.child_end, clipped[1]))
                    args["clipped"] = True
                owner.child_end = clipped[1]
                args["command_seq"] = owner.seq
                yield _slice(name, "urb", owner.pid, owner.tid, clipped, args)
                continue
            pid = pid_of(device)
            tid, _ = tracks.place(pid, "transfers", span[0], span[1])
            yield from tracks.take_meta()
            yield _slice(name, "urb", pid, tid, span, args)
        # commands after the last URB (none in a well-formed session)
        while pending is not None:
            (seq, bus, dev, lun, tag, name, lba, blocks, nbytes, status, sense, irp_id,
             cbw, csw, start, end, parent, pstart, pend, owners) = pending
            pending = next(commands, None)
            span = _span(start, end)
            if span is None:
                continue
            pid = pid_of(f"{bus}.{dev}")
            tid, _ = tracks.place(pid, lower, span[0], span[1])
            yield from tracks.take_meta()
            yield _slice(name.upper(), "scsi", pid, tid, span, {"seq": seq, "lba": lba,
                                                                "status": status,
                                                                "files": owners})


def write_trace(database: Any, session: int, stream: IO[str]) -> int:
    """Write the trace as one JSON object, event by event; return the event count."""
    head = {"displayTimeUnit": "ns", "otherData": {"session": session}}
    stream.write(json.dumps(head)[:-1] + ', "traceEvents": [\n')
    count = 0
    for event in trace_events(database, session):
        stream.write((",\n" if count else "") + json.dumps(event, ensure_ascii=False))
        count += 1
    stream.write("\n]}\n")
    return count
