"""Sessions back out as pcapng (or classic pcap) that Wireshark opens: USBPcap (249)
or usbmon (220).

Each ``urbs`` row becomes its submission and completion records, written in
time order.  A live session exported as USBPcap carries the tracer's IRP ids,
URB function codes and USBD status, as USBPcap on Windows would.  As usbmon,
USBD status is translated back to the errno Linux would report.
"""

from __future__ import annotations

import functools
import heapq
import io
import operator
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO, NamedTuple

from usbtrace.capture import usbpcap
from usbtrace.capture.pcap import BT_EPB, PcapngWriter, PcapWriter
from usbtrace.capture.usbmon import LINKTYPE_USB_LINUX_MMAPPED
from usbtrace.errors import InputError
from usbtrace.records import COMPLETE, CONTROL, SUBMIT, TRANSFER_TYPE_NAMES, Event
from usbtrace.usb import urb as U

TYPE_CODES = {name: code for code, name in TRANSFER_TYPE_NAMES.items()}
FUNCTION_CODES = {name: code for code, name in U.URB_FUNCTION_NAMES.items()}
USBD_CODES = {name: code for code, name in U.USBD_STATUS_NAMES.items()}
USBMON_XFER = {0: 2, 1: 0, 2: 3, 3: 1}  # ours -> usbmon's transfer type numbers
USBD_TO_ERRNO = {
    U.USBD_STATUS_SUCCESS: 0, U.USBD_STATUS_STALL_PID: -32, U.USBD_STATUS_CANCELED: -2,
    U.USBD_STATUS_DEVICE_GONE: -19, U.USBD_STATUS_TIMEOUT: -110,
    U.USBD_STATUS_BABBLE_DETECTED: -75, U.USBD_STATUS_ERROR_SHORT_TRANSFER: -121,
    U.USBD_STATUS_CRC: -84,
}
USBMON_HEADER = struct.Struct("<QBBBBHBBqiiII8siiII")
LINKTYPES = {"usbpcap": usbpcap.LINKTYPE_USBPCAP, "usbmon": LINKTYPE_USB_LINUX_MMAPPED}


def _status_code(name: str | None) -> int | None:
    if name is None:
        return None
    if name in USBD_CODES:
        return USBD_CODES[name]
    return int(name, 16) if name.startswith("0x") else None


# the errno usbmon reports for each USBD status name (more are added as met)
_ERRNO_BY_STATUS: dict[str | None, int] = {
    name: USBD_TO_ERRNO.get(_status_code(name) or 0, -71) for name in (*USBD_CODES, None)}


def events_of(rows: Iterable[dict[str, Any]]) -> Iterator[Event]:
    """Submission and completion events of ``urbs`` rows (in ``seq`` order), in time
    order, streaming: only completions still ahead of the current submission wait,
    so memory follows the transfers in flight, not the session."""
    ahead: list[tuple[float, int, int, Event]] = []  # a heap
    for row in rows:
        irp_id = int(row["irp_id"], 16)
        ttype = TYPE_CODES.get(row["transfer_type"], CONTROL)
        function = FUNCTION_CODES.get(row["urb_function"]) if row["urb_function"] else None
        direction_in = row["direction"] == "in"
        data = bytes(row["data"] or b"")
        common = dict(irp_id=irp_id, bus=row["bus"], device=row["device"],
                      endpoint=row["endpoint"], transfer_type=ttype, urb_function=function)
        seq = row["seq"]
        now = row["submitted_at"] if row["submitted_at"] is not None else row["completed_at"]
        if now is not None:
            while ahead and ahead[0][0] <= now:
                yield heapq.heappop(ahead)[3]
        if row["submitted_at"] is not None:
            submit = Event(SUBMIT, row["submitted_at"], setup=row["setup"],
                           length=row["requested_length"], urb_status=U.USBD_STATUS_PENDING,
                           data=b"" if direction_in else data, **common)
            heapq.heappush(ahead, (row["submitted_at"], seq, 0, submit))
        if row["completed_at"] is not None:
            complete = Event(COMPLETE, row["completed_at"],
                             length=row["actual_length"], urb_status=_status_code(row["status"]),
                             data=data if direction_in else b"", **common)
            heapq.heappush(ahead, (row["completed_at"], seq, 1, complete))
    while ahead:
        yield heapq.heappop(ahead)[3]


def encode_usbmon(event: Event, origin: float) -> bytes:
    ts = origin + event.ts
    sec = int(ts)
    usec = int(round((ts - sec) * 1e6))
    if usec >= 1_000_000:
        sec, usec = sec + 1, usec - 1_000_000
    submit = event.kind == SUBMIT
    setup = event.setup if submit and event.setup else None
    data = event.data
    direction_in = bool((setup[0] if setup else (event.endpoint or 0)) & 0x80)
    if data:
        flag_data = 0
    else:
        flag_data = ord("<") if direction_in else ord(">")
    if submit:
        status = -115  # -EINPROGRESS
    else:
        status = USBD_TO_ERRNO.get(event.urb_status or 0, -71)
    xfer = USBMON_XFER.get(event.transfer_type or 0, 3)
    header = USBMON_HEADER.pack(
        event.irp_id & 0xFFFFFFFFFFFFFFFF, ord("S") if submit else ord("C"), xfer,
        event.endpoint or 0, event.device or 0, event.bus or 0,
        0 if setup else ord("-"), flag_data, sec, usec, status, event.length or 0, len(data),
        setup or bytes(8), 0, 0, 0, 0)
    return header + data


def encode_usbpcap(event: Event) -> list[bytes]:
    if event.transfer_type != CONTROL:
        return [usbpcap.encode(event)]
    if event.kind == COMPLETE:
        return [usbpcap.encode(event, usbpcap.STAGE_COMPLETE)]
    records = [usbpcap.encode(event, usbpcap.STAGE_SETUP, event.setup or b"")]
    if event.data:
        records.append(usbpcap.encode(event, usbpcap.STAGE_DATA))
    return records


CONTAINERS = ("pcap", "pcapng")


def container_for(path: str, chosen: str | None = None) -> str:
    """``chosen`` when given, else what the file name says: ``.pcap`` is classic pcap,
    anything else pcapng (it carries more: the application, nanosecond resolution)."""
    if chosen is not None:
        return chosen
    return "pcap" if path.lower().endswith(".pcap") else "pcapng"


COMMAND_LINE_COMMENT = "usbtrace session command line: "


def provenance(version: str | None, command_line: str | None) -> list[str]:
    """The pcapng section comments that say what made a session: Wireshark shows
    them (Statistics > Capture File Properties), the pytest plugin re-records from them."""
    comments = [f"made by usbtrace {version}"] if version else []
    if command_line:
        comments.append(COMMAND_LINE_COMMENT + command_line)
    return comments


def recorded_command_line(comments: Iterable[str]) -> str | None:
    for comment in comments:
        if comment.startswith(COMMAND_LINE_COMMENT):
            return comment[len(COMMAND_LINE_COMMENT):]
    return None


# the ``urbs`` columns export reads, in the order the encoders below take them
FIELDS = ("seq", "irp_id", "submitted_at", "completed_at", "bus", "device", "endpoint",
          "transfer_type", "urb_function", "direction", "setup", "requested_length",
          "actual_length", "status", "data")
MASK64 = 0xFFFFFFFFFFFFFFFF
EPB_HEAD = struct.Struct("<IIIIIII")  # block type and length, then the EPB's own fields
U32 = struct.Struct("<I")
FLUSH = 1 << 20  # bytes gathered before one write to the file


def _usbmon_pair(row: Sequence[Any], origin: float) -> tuple[bytes | None, bytes | None]:
    """A row's submission and completion as usbmon records, straight from its columns
    (what ``encode_usbmon`` makes of ``events_of``'s events, without the events)."""
    (_, irp_text, submitted_at, completed_at, bus, device, endpoint, ttype, _, direction,
     setup, requested, actual, status, payload) = row
    irp_id = int(irp_text, 16) & MASK64
    xfer = USBMON_XFER.get(TYPE_CODES.get(ttype, CONTROL), 3)
    endpoint = endpoint or 0
    device = device or 0
    bus = bus or 0
    data = bytes(payload) if payload else b""
    direction_in = direction == "in"
    submit = complete = None
    if submitted_at is not None:
        ts = origin + submitted_at
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        setup = bytes(setup) if setup else None
        out = b"" if direction_in else data
        flag_data = 0 if out else (
            60 if (setup[0] if setup else endpoint) & 0x80 else 62)  # '<' or '>'
        fields = (irp_id, 83, xfer, endpoint, device, bus, 0 if setup else 45, flag_data,
                  sec, usec, -115, requested or 0, len(out), setup or bytes(8), 0, 0, 0, 0)
        submit = USBMON_HEADER.pack(*fields) + out
    if completed_at is not None:
        ts = origin + completed_at
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        into = data if direction_in else b""
        code = _status_code(status)
        flag_data = 0 if into else (60 if endpoint & 0x80 else 62)
        fields = (irp_id, 67, xfer, endpoint, device, bus, 45, flag_data, sec, usec,
                  USBD_TO_ERRNO.get(code or 0, -71), actual or 0, len(into), bytes(8),
                  0, 0, 0, 0)
        complete = USBMON_HEADER.pack(*fields) + into
    return submit, complete


USBPCAP_HEADER = usbpcap.HEADER
USBPCAP_TRANSFER = usbpcap.FROM_RECORD


def _usbpcap_pair(row: Sequence[Any]) -> tuple[list[bytes] | None, list[bytes] | None]:
    """A row's submission and completion as USBPcap records; a control transfer's
    stages go through ``encode_usbpcap``."""
    (_, irp_text, submitted_at, completed_at, bus, device, endpoint, ttype, function_name,
     direction, setup, requested, actual, status, payload) = row
    kind = TYPE_CODES.get(ttype, CONTROL)
    if kind == CONTROL:
        submit = complete = None
        for event in _row_events(row):
            if event.kind == SUBMIT:
                submit = encode_usbpcap(event)
            else:
                complete = encode_usbpcap(event)
        return submit, complete
    irp_id = int(irp_text, 16) & MASK64
    function = FUNCTION_CODES.get(function_name, 0) if function_name else 0
    transfer = USBPCAP_TRANSFER.get(kind, usbpcap.TRANSFER_UNKNOWN)
    data = bytes(payload) if payload else b""
    direction_in = direction == "in"
    bus = bus or 0
    device = device or 0
    endpoint = endpoint if endpoint is not None else 0
    size = USBPCAP_HEADER.size
    first = last = None
    if submitted_at is not None:
        out = b"" if direction_in else data
        first = [USBPCAP_HEADER.pack(size, irp_id, 0, function, 0, bus, device, endpoint,
                                     transfer, len(out)) + out]
    if completed_at is not None:
        into = data if direction_in else b""
        code = _status_code(status)
        last = [USBPCAP_HEADER.pack(size, irp_id, (code or 0) & 0xFFFFFFFF, function,
                                    usbpcap.USBPCAP_INFO_PDO_TO_FDO, bus, device, endpoint,
                                    transfer, len(into)) + into]
    return first, last


def _row_events(row: Sequence[Any]) -> Iterator[Event]:
    """The events of one row given as a tuple in ``FIELDS`` order."""
    return events_of([dict(zip(FIELDS, row))])


def export(rows: Iterable[Any], stream: BinaryIO, linktype: str,
           origin: float, container: str = "pcapng", comments: Sequence[str] = (),
           columns: Sequence[str] | None = None) -> int:
    """Write ``rows`` as ``container`` ('pcapng' or 'pcap') with ``linktype`` ('usbpcap'
    or 'usbmon'), ``comments`` in pcapng's section header; returns the records written.

    ``rows`` are ``urbs`` rows in ``seq`` order: dicts, or tuples in ``columns``' order
    (straight from a cursor: no dict a row).  Each row is encoded once, to bytes, and
    its two records wait in a heap only while a completion is still ahead of the next
    submission, as in ``events_of``; so memory follows the transfers in flight."""
    return write_capture(rows, stream, linktype, origin, container, comments, columns)[0]


def write_capture(rows: Iterable[Any], stream: BinaryIO, linktype: str,
                  origin: float, container: str = "pcapng", comments: Sequence[str] = (),
                  columns: Sequence[str] | None = None) -> tuple[int, int]:
    """``export``, returning the records written and the rows read: the command line
    says both, and counting the rows here spares it a generator around the cursor."""
    pcapng = container != "pcap"
    usbmon = linktype == "usbmon"
    if pcapng:  # the header blocks; the records are framed here, a batch a write
        PcapngWriter(stream, LINKTYPES[linktype], comments=comments)
    else:
        PcapWriter(stream, LINKTYPES[linktype])
    if columns is not None and usbmon and not pcapng and tuple(columns) == PREPARED_PCAP:
        return _usbmon_pcap(rows, stream, origin)  # from SQLite (see classic_sql)
    if columns is not None and tuple(columns) == (PREPARED if usbmon else PREPARED_USBPCAP):
        # ready to pack, from SQLite (see select_for)
        if usbmon:
            if pcapng:
                return _usbmon_pcapng(rows, stream, origin)
            return _usbmon_fast(rows, stream, origin, False)
        return _usbpcap_fast(rows, stream, origin, pcapng)
    wanted = fields_for(linktype, container)
    if columns is not None and tuple(columns) == wanted:
        picked: Iterable[Sequence[Any]] = rows  # already in order: no copy a row
    else:
        keys: Sequence[Any] = wanted
        if columns is not None:
            index = {name: i for i, name in enumerate(columns)}
            keys = [index[name] for name in wanted]
        picked = map(operator.itemgetter(*keys), rows)
    if usbmon:
        return _usbmon_fast(map(_prepare, picked), stream, origin, pcapng)
    return _usbpcap_fast(map(_prepare_usbpcap, picked), stream, origin, pcapng)


def _framed(rows: Iterable[Sequence[Any]], stream: BinaryIO, linktype: str, origin: float,
            pcapng: bool) -> tuple[int, int]:
    """Any record format in either container: each event's records framed as bytes and
    ordered through a heap: what ``_usbmon_fast`` and ``_usbpcap_fast`` write, faster,
    pinned against it by the tests."""
    classic_buffer = io.BytesIO()  # classic pcap's records, framed by its own writer
    classic = PcapWriter(classic_buffer, LINKTYPES[linktype])
    usbmon = linktype == "usbmon"
    epb, u32 = EPB_HEAD.pack, U32.pack

    def frame(ts_ns: int, records: Any) -> bytes:
        """The records of one event, framed as the container's blocks."""
        if pcapng:
            out = []
            for record in records:
                size = len(record)
                pad = -size % 4
                total = size + pad + 32
                out.append(epb(BT_EPB, total, 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, size, size))
                out.append(record + b"\0" * pad + u32(total) if pad else record + u32(total))
            return b"".join(out)
        classic_buffer.seek(0)
        classic_buffer.truncate()
        for record in records:
            classic.write(ts_ns, record)
        return classic_buffer.getvalue()

    ahead: list[tuple[float, int, int, int, bytes]] = []  # a heap
    pending: list[bytes] = []
    gathered = 0
    count = 0
    seen = 0
    push, pop = heapq.heappush, heapq.heappop
    for fields in rows:
        seen += 1
        seq, submitted_at, completed_at = fields[0], fields[2], fields[3]
        now = submitted_at if submitted_at is not None else completed_at
        if now is not None:
            while ahead and ahead[0][0] <= now:
                item = pop(ahead)
                count += item[3]
                pending.append(item[4])
                gathered += len(item[4])
            if gathered >= FLUSH:
                stream.write(b"".join(pending))
                pending.clear()
                gathered = 0
        submit: Sequence[bytes] | None
        complete: Sequence[bytes] | None
        if usbmon:
            one, two = _usbmon_pair(fields, origin)
            submit = None if one is None else (one,)
            complete = None if two is None else (two,)
        else:
            submit, complete = _usbpcap_pair(fields)
        if submit is not None:
            push(ahead, (submitted_at, seq, 0, len(submit),
                         frame(round((origin + submitted_at) * 1e9), submit)))
        if complete is not None:
            push(ahead, (completed_at, seq, 1, len(complete),
                         frame(round((origin + completed_at) * 1e9), complete)))
    while ahead:
        item = pop(ahead)
        count += item[3]
        pending.append(item[4])
    stream.write(b"".join(pending))
    return count, seen


# usbmon in pcapng, packed straight into one preallocated buffer from rows "ready to
# pack".  Each column costs the sqlite3 module a release of the interpreter lock and
# SQLite its mutex, about 0.1 us a row, and each field decided in Python costs more.  So
# SQLite folds what a row's two records hold besides times, IRP id, lengths, setup and
# data into one integer, the row's "shape": transfer type, endpoint, device, bus,
# whether the row has setup bytes (and bmRequestType's direction bit), direction in,
# which status, and the data's length.  A session has few shapes (a mass storage
# session: a few dozen), each decoded once (``_shape``) into the bytes of both records
# that only the shape decides, and a struct that packs a row's two records around them
# in one call.  The setup bytes, of control transfers only, follow the IRP id, in
# hexadecimal after a space: a session has few distinct pairs of them too, each decoded
# once (``_irp``).  Six columns in place of thirteen, and no branch on them in the loop.
PREPARED = ("irp", "submitted_at", "completed_at", "shape", "lengths", "data")
# the columns usbmon needs when rows are not prepared in SQL (a dict a row, PostgreSQL),
# in the order _prepare takes them: no seq (rows come in seq order, so their count
# orders the heap as well), no URB function
USBMON_FIELDS = ("irp_id", "submitted_at", "completed_at", "bus", "device", "endpoint",
                 "transfer_type", "direction", "setup", "requested_length", "actual_length",
                 "status", "data")
XFER_BY_NAME = {name: USBMON_XFER.get(code, 3) for code, name in TRANSFER_TYPE_NAMES.items()}
XFER_OTHER = USBMON_XFER[CONTROL]  # a name export does not know is taken for control
# the statuses a shape names by number: the names (success first, the common case),
# None, then any other name (which is no USBD status: errno 0)
STATUSES: tuple[str | None, ...] = (
    "success", *sorted(name for name in _ERRNO_BY_STATUS if name not in (None, "success")),
    None)
STATUS_OTHER = len(STATUSES)
# a shape's bits, from the lowest: the data's length (up to LENGTH_MAX, which stands for
# any longer: such a row goes through the heap), transfer type (usbmon's number),
# endpoint, device, bus, then one bit each for setup bytes, bmRequestType's direction
# (with setup bytes) and direction in, then the status's number
LENGTH_BITS = 17
LENGTH_MAX = (1 << LENGTH_BITS) - 1
XFER_AT, EP_AT, DEV_AT, BUS_AT = 17, 19, 27, 35
SETUP_AT, SETUP_IN_AT, IN_AT, STATUS_AT = 51, 52, 53, 54
XFER_ORDER = ("bulk", "control", "interrupt", "isochronous")  # by how common
ZERO8 = bytes(8)
DIRECT = 1 << 16  # a row whose data is larger goes through the heap, as bytes
# one record in its Enhanced Packet Block, as the pieces a shape keeps and those a row
# gives: block type, block length and interface 0 (kept); time high and low; captured
# and original length (kept); the usbmon header's id; its flag bytes (kept); seconds and
# microseconds; status and length; captured length (kept); setup bytes; 16 zero bytes;
# then data, pad and trailer
SUBMIT_RECORD = "12sII8s8s8sqiiII8s16x"
COMPLETE_RECORD = "12sII8s8s8sqiiII24x"  # the setup bytes are zeros
assert DIRECT <= LENGTH_MAX


def fields_for(linktype: str, container: str) -> tuple[str, ...]:
    """The ``urbs`` columns ``write_capture`` reads for this output, in its order: a
    caller that selects just these spares the database and the cursor the others."""
    return USBMON_FIELDS if linktype == "usbmon" else USBPCAP_FIELDS


def select_for(linktype: str, container: str, alias: str, sqlite: bool
               ) -> tuple[str, tuple[str, ...]]:
    """The select list for ``write_capture``'s rows from ``urbs`` as ``alias``, and the
    column names to pass it: from SQLite, rows come prepared for the fast writers
    (``PREPARED``, see ``prepared_sql``; for classic pcap ``PREPARED_PCAP``, see
    ``classic_sql``; ``PREPARED_USBPCAP``, see ``usbpcap_sql``);
    otherwise the plain columns ``fields_for`` names, prepared in Python."""
    if sqlite:
        if linktype == "usbmon":
            if container == "pcap":
                return classic_sql(alias), PREPARED_PCAP
            return prepared_sql(alias), PREPARED
        return usbpcap_sql(alias), PREPARED_USBPCAP
    names = fields_for(linktype, container)
    return ", ".join(f"{alias}.{name}" for name in names), names


def prepared_sql(u: str) -> str:
    """SQLite's select list of ``PREPARED`` from ``urbs`` as ``u``: what ``_prepare``
    computes, term for term (``test_export_bytes`` checks that the two agree).

    A bus, device, endpoint or length out of its range in the header makes the shape
    NULL, which ``_shape`` refuses, as struct refused the field itself.  A hexadecimal
    status (a USBD code without a name) makes it text, "STATUS SHAPE": SQLite cannot
    read hexadecimal, ``_shape`` does."""
    return ", ".join(_usbmon_terms(u))


def _usbmon_bits(u: str, length: str, plain: bool = False) -> str:
    """A usbmon shape's bits but the status's, the data's length given as ``length``;
    ``plain``: bus, device and endpoint are known not to be NULL."""
    ep, dev, bus = (f"{u}.endpoint", f"{u}.device", f"{u}.bus") if plain else \
        (f"ifnull({u}.endpoint, 0)", f"ifnull({u}.device, 0)", f"ifnull({u}.bus, 0)")
    xfer = " ".join(f"WHEN '{name}' THEN {XFER_BY_NAME[name]}"  # the common first
                    for name in sorted(XFER_BY_NAME, key=XFER_ORDER.index))
    # SQLite's "|", "&", "<<" and ">>" bind equally, left to right: each term in brackets
    return (f"{length} | ((CASE {u}.transfer_type "
            f"{xfer} ELSE {XFER_OTHER} END) << {XFER_AT}) | ({ep} << {EP_AT}) | ({dev} << "
            f"{DEV_AT}) | ({bus} << {BUS_AT}) | ((CASE WHEN {u}.setup IS NULL OR {u}.setup = x'' "
            f"THEN 0 ELSE 1 | ((substr(hex({u}.setup), 1, 1) >= '8') << 1) END) << {SETUP_AT}) | "
            f"(({u}.direction IS 'in') << {IN_AT})")


def _usbmon_terms(u: str) -> tuple[str, str, str, str, str, str]:
    """``prepared_sql``'s six terms, in ``PREPARED`` order."""
    ep, dev, bus = f"ifnull({u}.endpoint, 0)", f"ifnull({u}.device, 0)", f"ifnull({u}.bus, 0)"
    requested, actual = f"ifnull({u}.requested_length, 0)", f"ifnull({u}.actual_length, 0)"
    bits = _usbmon_bits(u, f"min(ifnull(length({u}.data), 0), {LENGTH_MAX})")
    named = " ".join(f"WHEN '{name}' THEN {i}" for i, name in enumerate(STATUSES)
                     if name not in ("success", None))
    in_range = (f"(({bus} >> 16) | (({dev} | {ep}) >> 8) | (({requested} | {actual}) >> 32)) "
                "= 0")
    shape = (f"CASE WHEN NOT ({in_range}) THEN NULL WHEN {u}.status = 'success' THEN {bits} "
             f"WHEN {u}.status GLOB '0x*' THEN {u}.status || ' ' || ({bits}) ELSE {bits} | "
             f"((CASE {u}.status {named} ELSE (CASE WHEN {u}.status IS NULL THEN "
             f"{STATUSES.index(None)} ELSE {STATUS_OTHER} END) END) << {STATUS_AT}) END")
    irp = f"CASE WHEN {u}.setup IS NULL THEN {u}.irp_id ELSE {u}.irp_id || ' ' || " \
        f"hex({u}.setup) END"
    return (irp, f"{u}.submitted_at", f"{u}.completed_at", shape,
            f"{requested} | ({actual} << 32)", f"ifnull({u}.data, x'')")


def _prepare(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row in ``USBMON_FIELDS`` order as ``PREPARED``: what ``prepared_sql`` makes
    SQLite compute, in Python, for rows that come from elsewhere."""
    (irp_text, submitted_at, completed_at, bus, device, endpoint, ttype, direction, setup,
     requested, actual, status, payload) = row
    endpoint, device, bus = endpoint or 0, device or 0, bus or 0
    requested, actual = requested or 0, actual or 0
    setup = bytes(setup) if setup is not None else None
    data = bytes(payload) if payload is not None else b""  # as SQLite's ifnull(data, x'')
    shape: Any = None
    if 0 <= endpoint <= 255 and 0 <= device <= 255 and 0 <= bus <= 65535 and \
            0 <= requested <= 0xFFFFFFFF and 0 <= actual <= 0xFFFFFFFF:
        shape = (min(len(data) if data else 0, LENGTH_MAX)
                 | XFER_BY_NAME.get(ttype, XFER_OTHER) << XFER_AT | endpoint << EP_AT
                 | device << DEV_AT | bus << BUS_AT | bool(setup) << SETUP_AT
                 | (setup is not None and setup[:1] >= b"\x80") << SETUP_IN_AT
                 | (direction == "in") << IN_AT)
        if isinstance(status, str) and status.startswith("0x"):
            shape = f"{status} {shape}"
        else:
            shape |= (STATUSES.index(status) if status in STATUSES else STATUS_OTHER) \
                << STATUS_AT
    lengths = requested | actual << 32
    if lengths >= 1 << 63:  # as SQLite's 64-bit integers wrap
        lengths -= 1 << 64
    irp = irp_text if setup is None else f"{irp_text} {setup.hex().upper()}"
    return irp, submitted_at, completed_at, shape, lengths, data


# usbmon in classic pcap reads one column fewer: a row's lengths come in its shape
PREPARED_PCAP = ("irp", "submitted_at", "completed_at", "shape_and_lengths", "data")


def classic_sql(u: str) -> str:
    """SQLite's select list of ``PREPARED_PCAP`` from ``urbs`` as ``u``: ``prepared_sql``
    without its lengths.  A successful row whose requested and actual lengths are
    both its data's length (most rows of a mass storage session: CBW, data, CSW)
    keeps its shape, an integer, which says them; any other row's shape is text,
    "REQUESTED ACTUAL SHAPE" (what ``_fold`` makes of ``_prepare``'s row).  A column
    costs the sqlite3 module about as much as the comparisons that spare it."""
    irp, submitted, completed, shape, _, data = _usbmon_terms(u)
    requested, actual = f"ifnull({u}.requested_length, 0)", f"ifnull({u}.actual_length, 0)"
    # where the lengths are the data's, they are in range, the status is known, and the
    # data's length is the actual length: the shape's bits for success, with the data's
    # length from the column, not a second length() (bus, device and endpoint checked)
    ep, dev, bus = f"ifnull({u}.endpoint, 0)", f"ifnull({u}.device, 0)", f"ifnull({u}.bus, 0)"
    bits = _usbmon_bits(u, f"(CASE WHEN {actual} < {LENGTH_MAX} THEN {actual} ELSE "
                           f"{LENGTH_MAX} END)")
    # first, with no ifnull() and no range test of its own: the same shape for most
    # rows, those where no column is NULL, bus, device and endpoint fit 8 bits and the
    # data the buffer (about a fifth of the expression's cost; any other row takes
    # the branches after it, as before)
    fast = _usbmon_bits(u, f"{u}.actual_length", plain=True)
    folded = (f"CASE WHEN {u}.status = 'success' AND {u}.requested_length = {u}.actual_length "
              f"AND {u}.actual_length = length({u}.data) AND {u}.actual_length <= {DIRECT} AND "
              f"({u}.bus | {u}.device | {u}.endpoint) BETWEEN 0 AND 255 THEN {fast} "
              f"WHEN {u}.status = 'success' AND {requested} = {actual} AND {actual} = "
              f"ifnull(length({u}.data), 0) THEN (CASE WHEN (({bus} >> 16) | (({dev} | "
              f"{ep}) >> 8)) = 0 THEN {bits} END) ELSE ({requested} | 0) || ' ' || "
              f"({actual} | 0) || ' ' || ({shape}) END")
    return ", ".join((irp, submitted, completed, folded, data))


def _fold(row: Sequence[Any]) -> tuple[Any, ...]:
    """A ``PREPARED`` row as ``PREPARED_PCAP`` (see ``classic_sql``)."""
    irp, submitted_at, completed_at, shape, lengths, data = row
    if shape is not None:
        requested, actual = lengths & 0xFFFFFFFF, lengths >> 32 & 0xFFFFFFFF
        if shape.__class__ is not int or shape >> STATUS_AT or \
                not requested == actual == len(data):
            shape = f"{requested} {actual} {shape}"
    return irp, submitted_at, completed_at, shape, data


def _unfold(shape: Any, data: bytes) -> tuple[Any, int, int]:
    """A ``PREPARED_PCAP`` shape as ``PREPARED``'s: the shape, requested and actual
    length."""
    if shape.__class__ is str:
        requested, actual, rest = shape.split(" ", 2)
        return rest if " " in rest else int(rest), int(requested), int(actual)
    return shape, len(data), len(data)


class Shape(NamedTuple):
    """What ``_shape`` makes of a shape: the struct's ``pack_into`` for a row's two
    records, their length, and the pieces of them that only the shape decides."""

    pack: Any
    total: int
    head_s: bytes    # the submission's first 12 bytes
    sizes_s: bytes   # its captured and original length
    flags_s: bytes   # its usbmon flag bytes (record type to flag_data)
    kept_s: int      # its usbmon captured length
    middle: bytes    # its pad and trailer, then the completion's first 12 bytes
    sizes_c: bytes
    flags_c: bytes
    errno: int       # the completion's status
    kept_c: int
    end: bytes       # the completion's pad and trailer
    where: int       # which record carries the data: 0 none, 1 the submission, 2 the other;
    #                  -1: more than the buffer takes directly (the row goes through the heap)
    split: int       # the submission's length (the completion follows)


def _shape(table: dict[Any, Shape], shape: Any, pcapng: bool = True) -> Shape:
    """A row's shape decoded (see ``prepared_sql``); kept for the next row of that
    shape (up to a few thousand).  In classic pcap (``pcapng`` false) the pieces of
    the blocks around the records are empty: the times and sizes before each record
    are its 16-byte record header."""
    if shape is None:
        raise struct.error("a URB's bus, device, endpoint or length does not fit a usbmon "
                           "header")
    if shape.__class__ is str:
        status, bits = shape.rsplit(" ", 1)
        key = int(bits)
        errno = USBD_TO_ERRNO.get(_status_code(status) or 0, -71)
    else:
        key = shape
        number = key >> STATUS_AT
        errno = _ERRNO_BY_STATUS[STATUSES[number]] if number < STATUS_OTHER else \
            USBD_TO_ERRNO.get(0, -71)  # a name that is no USBD status
    endpoint = key >> EP_AT & 0xFF
    n = key & LENGTH_MAX  # 0: no data
    has_setup, direction_in = key >> SETUP_AT & 1, key >> IN_AT & 1
    header = (key >> XFER_AT & 3) << 8 | endpoint << 16 | (key >> DEV_AT & 0xFF) << 24 | \
        (key >> BUS_AT & 0xFFFF) << 32
    data_out = 0 if n and not direction_in else (
        60 if (key >> SETUP_IN_AT & 1 if has_setup else endpoint & 0x80) else 62)
    data_in = 0 if n and direction_in else (60 if endpoint & 0x80 else 62)
    out = 0 if direction_in else n
    into = n if direction_in else 0
    total_s, total_c = 96 + out + -out % 4, 96 + into + -into % 4
    if pcapng:
        head_s = struct.pack("<II4x", BT_EPB, total_s)
        middle = bytes(-out % 4) + struct.pack("<III4x", total_s, BT_EPB, total_c)
        end = bytes(-into % 4) + struct.pack("<I", total_c)
    else:
        head_s = middle = end = b""
        total_s, total_c = 80 + out, 80 + into
    fmt = f"<{len(head_s)}s" + SUBMIT_RECORD[3:] + (f"{out}s" if out else "") + \
        f"{len(middle)}s" + COMPLETE_RECORD[3:] + (f"{into}s" if into else "") + f"{len(end)}s"
    entry = Shape(
        struct.Struct(fmt).pack_into, total_s + total_c, head_s,
        struct.pack("<II", 64 + out, 64 + out),
        struct.pack("<Q", 83 | header | (0 if has_setup else 45) << 48 | data_out << 56), out,
        middle, struct.pack("<II", 64 + into, 64 + into),
        struct.pack("<Q", 67 | header | 45 << 48 | data_in << 56), errno, into,
        end, -1 if n > DIRECT else 1 if out else 2 if into else 0, total_s)
    if len(table) < 4096:
        table[shape] = entry
    return entry


def _usbmon_fast(rows: Iterable[Sequence[Any]], stream: BinaryIO, origin: float,
                 pcapng: bool = True) -> tuple[int, int]:
    """What ``_framed`` writes for usbmon in pcapng (or classic pcap), byte for byte,
    at a fraction of the cost; ``rows`` in ``PREPARED`` order.

    Transfers rarely overlap: a row's records are nearly always both due before the
    next row's submission, ahead of anything still waiting (a pending interrupt
    transfer).  So the last row is held, as its tuple, until the next row's time is
    known; if its records come first then, both are packed straight into the output
    buffer, in the order the heap would give them, by its shape's struct.  Otherwise
    they become bytes in the heap, and leave it as in ``_framed``.

    A record's time goes before it as the two 32-bit halves of its nanoseconds.
    Classic pcap (``pcapng`` false) has its own writer, ``_usbmon_pcap``."""
    if not pcapng:
        return _usbmon_pcap(map(_fold, rows), stream, origin)
    buf = bytearray(FLUSH)
    view = memoryview(buf)
    pos = count = seen = 0
    room = FLUSH - DIRECT - 512  # past this, the buffer is written out before a row
    write = stream.write
    shapes: dict[Any, Shape] = {}
    # the same as plain tuples, which the loop unpacks without an iterator
    plain: dict[Any, tuple[Any, ...]] = {}
    ids: dict[str, tuple[bytes, bytes]] = {}  # IRP id text -> its halves (IRPs are reused)
    origin = float(origin)  # so a time is a float, and float's own methods round it
    trunc, fround = float.__trunc__, float.__round__
    ahead: list[tuple[Any, int, int, int, bytes]] = []  # a heap, as in _framed
    ahead_min: Any = INF  # the time of its first record
    pop, push = heapq.heappop, heapq.heappush
    held: Sequence[Any] | None = None
    for seen, row in enumerate(rows, 1):
        now = row[1]
        if now is None:
            now = row[2]
            if now is None:
                continue  # no records, and nothing is due
        if held is not None:
            text, sub, done, shape, lengths, data = held
            entry = plain.get(shape)
            if entry is None:
                entry = tuple(shapes.get(shape) or _shape(shapes, shape))
                if len(plain) < 4096:
                    plain[shape] = entry
            (pack, total, head_s, sizes_s, flags_s, kept_s, middle, sizes_c, flags_c,
             errno, kept_c, end, where, split) = entry
            if where >= 0 and sub is not None and done is not None:
                # packed in place; written there if both records are due by now,
                # before whatever waits (an earlier row's, so at an equal time
                # that comes first), else the submission alone if it is, and what
                # is not due goes to the heap
                irp = ids.get(text)
                if irp is None:
                    irp = _irp(ids, text)
                irp_id, setup = irp
                if pos > room:
                    write(view[:pos])
                    pos = 0
                ts = origin + sub
                sec_s = trunc(ts)
                usec_s = fround((ts - sec_s) * 1e6)
                if usec_s >= 1_000_000:
                    sec_s, usec_s = sec_s + 1, usec_s - 1_000_000
                ns = fround(ts * 1e9)
                hi_s = ns >> 32
                lo_s = ns & 0xFFFFFFFF
                ts = origin + done
                sec_c = trunc(ts)
                usec_c = fround((ts - sec_c) * 1e6)
                if usec_c >= 1_000_000:
                    sec_c, usec_c = sec_c + 1, usec_c - 1_000_000
                ns = fround(ts * 1e9)
                hi_c = ns >> 32
                lo_c = ns & 0xFFFFFFFF
                if where == 2:  # data in: the completion carries it
                    pack(buf, pos, head_s, hi_s, lo_s, sizes_s, irp_id, flags_s, sec_s,
                         usec_s, -115, lengths & 0xFFFFFFFF, kept_s, setup, middle, hi_c,
                         lo_c, sizes_c, irp_id, flags_c, sec_c, usec_c, errno,
                         lengths >> 32 & 0xFFFFFFFF, kept_c, data, end)
                elif where:
                    pack(buf, pos, head_s, hi_s, lo_s, sizes_s, irp_id, flags_s, sec_s,
                         usec_s, -115, lengths & 0xFFFFFFFF, kept_s, setup, data, middle,
                         hi_c, lo_c, sizes_c, irp_id, flags_c, sec_c, usec_c, errno,
                         lengths >> 32 & 0xFFFFFFFF, kept_c, end)
                else:
                    pack(buf, pos, head_s, hi_s, lo_s, sizes_s, irp_id, flags_s, sec_s,
                         usec_s, -115, lengths & 0xFFFFFFFF, kept_s, setup, middle, hi_c,
                         lo_c, sizes_c, irp_id, flags_c, sec_c, usec_c, errno,
                         lengths >> 32 & 0xFFFFFFFF, kept_c, end)
                if sub <= done <= now and done < ahead_min:
                    pos += total
                    count += 2
                else:
                    # its number in the heap's order: less than any later row's,
                    # more than any earlier row's
                    if sub <= now and sub < ahead_min and sub <= done:
                        pos += split
                        count += 1
                        push(ahead, (done, seen - 1, 1, 1,
                                     bytes(view[pos:pos + total - split])))
                    else:
                        push(ahead, (sub, seen - 1, 0, 1, bytes(view[pos:pos + split])))
                        push(ahead, (done, seen - 1, 1, 1,
                                     bytes(view[pos + split:pos + total])))
                    ahead_min = ahead[0][0]
            else:
                _hold(ahead, held, seen - 1, origin, ids, shapes)
                ahead_min = ahead[0][0]
            if ahead_min <= now:
                while ahead and ahead[0][0] <= now:
                    item = pop(ahead)
                    count += item[3]
                    blob = item[4]
                    n = len(blob)
                    if pos + n > FLUSH:
                        write(view[:pos])
                        pos = 0
                        if n > FLUSH:
                            write(blob)
                            continue
                    buf[pos:pos + n] = blob
                    pos += n
                ahead_min = ahead[0][0] if ahead else INF
        held = row
    if held is not None:
        _hold(ahead, held, seen, origin, ids, shapes)
    write(view[:pos])
    while ahead:  # the rest, in order (a few, unless the data is larger than the buffer)
        item = pop(ahead)
        write(item[4])
        count += item[3]
    view.release()
    return count, seen


class ClassicShape(NamedTuple):
    """What ``_classic_shape`` makes of a shape for classic pcap: the struct's
    ``pack_into`` for a row's two records with their 16-byte record headers, their
    length, and the pieces that only the shape decides (as in ``Shape``)."""

    pack: Any
    total: int
    sizes_s: bytes   # the submission's captured and original length
    flags_s: bytes   # its usbmon flag bytes (record type to flag_data)
    status_s: bytes  # its usbmon status, length and captured length
    sizes_c: bytes   # the completion's, as above
    flags_c: bytes
    status_c: bytes
    where: int       # 0 or more: packed in place; -1: the row goes through the heap
    split: int       # the submission's length (the completion follows)


# a row's two records in classic pcap: each record header's seconds and nanoseconds,
# then one piece (its two lengths, the IRP id, the usbmon flag bytes), the usbmon
# header's seconds (the low 32 bits: see _usbmon_pcap) and microseconds, another piece
# (status, length, captured length and, in the submission, the setup bytes), then the
# data; the data of the record that carries none is a field of length 0, so every
# shape's struct takes the same arguments and the loop one call
CLASSIC_PAIR = "<II24sI4xi20s16x{}sII24sI4xi12s24x{}s"


class ClassicPair(NamedTuple):
    """What ``_classic_pair`` makes of a row's IRP id text and shape: the pieces of
    its two records that only those decide, joined where they touch."""

    pack: Any
    total: int
    head_s: bytes    # the submission's lengths, IRP id and flag bytes
    tail_s: bytes    # its status, lengths and setup bytes
    head_c: bytes    # the completion's, as above
    tail_c: bytes
    where: int       # 0 or more: packed in place; -1: the row goes through the heap
    split: int       # the submission's length (the completion follows)


def _classic_shape(table: dict[Any, ClassicShape], shape: Any) -> ClassicShape:
    """A ``PREPARED_PCAP`` shape decoded (``_shape``'s pieces, without pcapng's blocks
    around them, and the lengths it says), kept for the next row of that shape (up
    to a few thousand).  An integer shape's lengths are its data's (see
    ``classic_sql``); for a row whose data is longer than a shape says, the row goes
    through the heap, which takes them from the data."""
    if shape is None:
        raise struct.error("a URB's bus, device, endpoint or length does not fit a usbmon "
                           "header")
    inner, requested, actual = _unfold(shape, b"")
    kept = _shape({}, inner, False)
    if shape.__class__ is not str:
        requested = actual = kept.kept_s + kept.kept_c  # the data's length, in one of them
    packer = struct.Struct(CLASSIC_PAIR.format(kept.kept_s, kept.kept_c))
    entry = ClassicShape(packer.pack_into, packer.size, kept.sizes_s, kept.flags_s,
                         struct.pack("<iII", -115, requested, kept.kept_s), kept.sizes_c,
                         kept.flags_c, struct.pack("<iII", kept.errno, actual, kept.kept_c),
                         kept.where, kept.split)
    assert entry.total == kept.total
    if len(table) < 4096:
        table[shape] = entry
    return entry


def _classic_pair(pairs: dict[Any, tuple[Any, ...]], text: str, shape: Any,
                  ids: dict[str, tuple[bytes, bytes]], shapes: dict[Any, ClassicShape]
                  ) -> tuple[Any, ...]:
    """A row's IRP id text (see ``_irp``) and shape decoded for ``_usbmon_pcap`` (a
    ``ClassicPair``'s fields), kept in ``pairs`` (the table of that text) for the next
    row of both, up to 32 shapes an IRP id (and 256 IRP ids): a session reuses few of
    each, and memory stays within a few MiB whatever it holds."""
    irp_id, setup = ids.get(text) or _irp(ids, text)
    kept = shapes.get(shape) or _classic_shape(shapes, shape)
    # a plain tuple: the loop's unpacking of a tuple subclass goes through an iterator
    entry = tuple(ClassicPair(kept.pack, kept.total, kept.sizes_s + irp_id + kept.flags_s,
                              kept.status_s + setup, kept.sizes_c + irp_id + kept.flags_c,
                              kept.status_c, kept.where, kept.split))
    if len(pairs) < 32:
        pairs[shape] = entry
    return entry


NS = 1_000_000_000
SECONDS_MAX = 0xFFFFFFFF  # classic pcap's record header holds 32-bit seconds


def _second(ts: float) -> tuple[int, float, float, float]:
    """The whole second of time ``ts`` as ``int`` gives it, the times from it to the
    next (for which ``int`` gives it too) and the second in nanoseconds, a float:
    exact, for a second that classic pcap holds (0 to 2**32 - 1; for any other, no
    time is in it, and every time goes through ``_pcap_times``)."""
    sec = int(ts)
    if 0 <= sec <= SECONDS_MAX:
        low = float(sec)
        return sec, low, low + 1.0, low * 1e9
    return sec, INF, -INF, 0.0


def _pcap_times(ts: float) -> tuple[int, int, int, int]:
    """A time's four numbers in classic pcap as the general path computes them
    (``_usbmon_pair``, ``_frame``): the usbmon header's seconds and microseconds, the
    record header's seconds and nanoseconds."""
    sec = int(ts)
    usec = int(round((ts - sec) * 1e6))
    if usec >= 1_000_000:
        sec, usec = sec + 1, usec - 1_000_000
    hi, lo = divmod(int(round(ts * 1e9)), NS)
    return sec, usec, hi, lo


def _usbmon_pcap(rows: Iterable[Sequence[Any]], stream: BinaryIO, origin: float
                 ) -> tuple[int, int]:
    """``_usbmon_fast`` for classic pcap: the same rows, order and bytes, each row's
    two records packed by one call with one argument list whatever its shape.

    A row's IRP id and shape decide four pieces of its records (``_classic_pair``),
    looked up once a row.  Each time becomes four numbers: the record header's
    seconds and nanoseconds, the usbmon header's seconds and microseconds.  Most times
    fall in the second of the time before them: then both seconds are that second,
    the microseconds are rounded from the time's distance to it, and the nanoseconds
    are the time in nanoseconds less the second's, a difference of two floats that is
    exact (Sterbenz's lemma: the two are within a factor of two), so rounded it is
    what ``divmod`` of the rounded time gives, without an integer of 61 bits; a time
    rounded up to the next second or microsecond goes through ``_pcap_times``.  The
    usbmon header's 64-bit seconds are packed as their low 32 bits and four zero bytes
    (struct converts a wider integer slowly): a time classic pcap holds has them."""
    buf = bytearray(FLUSH)
    view = memoryview(buf)
    pos = count = seen = 0
    room = FLUSH - DIRECT - 512  # past this, the buffer is written out before a row
    write = stream.write
    shapes: dict[Any, ClassicShape] = {}
    ids: dict[str, tuple[bytes, bytes]] = {}
    by_text: dict[str, dict[Any, tuple[Any, ...]]] = {}  # IRP id text -> shape -> pieces
    origin = float(origin)
    fround = float.__round__
    ahead: list[tuple[Any, int, int, int, bytes]] = []  # a heap, as in _framed
    ahead_min: Any = INF
    pop, push = heapq.heappop, heapq.heappush
    held: Sequence[Any] | None = None
    # the second of the last time converted: as int gives it, the times in it, in ns
    base, low, high, low_ns = 0, INF, -INF, 0.0
    hi_s = hi_c = 0
    try:
        for seen, row in enumerate(rows, 1):
            now = row[1]
            if now is None:
                now = row[2]
                if now is None:
                    continue  # no records, and nothing is due
            if held is not None:
                text, sub, done, shape, data = held
                pairs = by_text.get(text)
                if pairs is None:
                    pairs = {}
                    if len(by_text) < 256:
                        by_text[text] = pairs
                entry = pairs.get(shape)
                if entry is None:
                    entry = _classic_pair(pairs, text, shape, ids, shapes)
                pack, total, head_s, tail_s, head_c, tail_c, where, split = entry
                if where >= 0 and sub is not None and done is not None:
                    if pos > room:
                        write(view[:pos])
                        pos = 0
                    ts = origin + sub
                    if low <= ts < high:
                        sec_s = hi_s = base
                        usec_s = fround((ts - low) * 1e6)
                        lo_s = fround(ts * 1e9 - low_ns)
                        if usec_s >= 1_000_000 or lo_s >= NS:
                            sec_s, usec_s, hi_s, lo_s = _pcap_times(ts)
                    else:
                        base, low, high, low_ns = _second(ts)
                        sec_s, usec_s, hi_s, lo_s = _pcap_times(ts)
                    ts = origin + done
                    if low <= ts < high:
                        sec_c = hi_c = base
                        usec_c = fround((ts - low) * 1e6)
                        lo_c = fround(ts * 1e9 - low_ns)
                        if usec_c >= 1_000_000 or lo_c >= NS:
                            sec_c, usec_c, hi_c, lo_c = _pcap_times(ts)
                    else:
                        base, low, high, low_ns = _second(ts)
                        sec_c, usec_c, hi_c, lo_c = _pcap_times(ts)
                    try:
                        pack(buf, pos, hi_s, lo_s, head_s, sec_s, usec_s, tail_s, data, hi_c,
                             lo_c, head_c, sec_c, usec_c, tail_c, data)
                    except struct.error:
                        # a usbmon second rounded up to 2**32, the record header's
                        # within 32 bits: the row goes through the heap, which packs 64
                        if max(sec_s, sec_c) <= SECONDS_MAX or \
                                not 0 <= min(hi_s, hi_c) <= max(hi_s, hi_c) <= SECONDS_MAX:
                            raise
                        _hold_usbmon_pcap(ahead, held, seen - 1, origin)
                        ahead_min = ahead[0][0]
                    else:
                        if sub <= done <= now and done < ahead_min:
                            pos += total
                            count += 2
                        else:
                            # as in _usbmon_fast
                            if sub <= now and sub < ahead_min and sub <= done:
                                pos += split
                                count += 1
                                push(ahead, (done, seen - 1, 1, 1,
                                             bytes(view[pos:pos + total - split])))
                            else:
                                push(ahead, (sub, seen - 1, 0, 1,
                                             bytes(view[pos:pos + split])))
                                push(ahead, (done, seen - 1, 1, 1,
                                             bytes(view[pos + split:pos + total])))
                            ahead_min = ahead[0][0]
                else:  # one-sided, or long data
                    _hold_usbmon_pcap(ahead, held, seen - 1, origin)
                    ahead_min = ahead[0][0]
                if ahead_min <= now:
                    while ahead and ahead[0][0] <= now:
                        item = pop(ahead)
                        count += item[3]
                        blob = item[4]
                        n = len(blob)
                        if pos + n > FLUSH:
                            write(view[:pos])
                            pos = 0
                            if n > FLUSH:
                                write(blob)
                                continue
                        buf[pos:pos + n] = blob
                        pos += n
                    ahead_min = ahead[0][0] if ahead else INF
            held = row
    except struct.error:
        _classic_time(False, hi_s, hi_c)
        raise
    if held is not None:
        _hold_usbmon_pcap(ahead, held, seen, origin)
    write(view[:pos])
    while ahead:
        item = pop(ahead)
        write(item[4])
        count += item[3]
    view.release()
    return count, seen


def _usbmon_pcapng(rows: Iterable[Sequence[Any]], stream: BinaryIO, origin: float
                   ) -> tuple[int, int]:
    """``_usbmon_fast`` for pcapng, the default export of a usbmon session, under the
    name it had before classic pcap went through it too."""
    return _usbmon_fast(rows, stream, origin, True)


INF = float("inf")


def _irp(ids: dict[str, tuple[bytes, bytes]], text: str) -> tuple[bytes, bytes]:
    """An IRP id as the usbmon header has it and the setup bytes after it (see
    ``prepared_sql``), kept for the next row of that text (up to a few thousand)."""
    irp_text, _, setup_hex = text.partition(" ")
    number = int(irp_text, 16) & MASK64
    entry = (struct.pack("<Q", number), bytes.fromhex(setup_hex) or ZERO8)
    if len(ids) < 4096:
        ids[text] = entry
    return entry


def _hold(ahead: list[tuple[Any, int, int, int, bytes]], row: Sequence[Any], number: int,
          origin: float, ids: dict[str, tuple[bytes, bytes]], shapes: dict[Any, Shape]) -> None:
    """A row (in ``PREPARED`` order, the ``number``-th) into the heap of records
    waiting for their time, each as its block's bytes, as ``_framed`` puts them there
    (its data may be longer than a shape says)."""
    irp_text, submitted_at, completed_at, shape, lengths, data = row
    irp, setup = ids.get(irp_text) or _irp(ids, irp_text)
    kept = shapes.get(shape) or _shape(shapes, shape)
    for kind, at in ((0, submitted_at), (1, completed_at)):
        if at is None:
            continue
        ts = origin + at
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        ns = int(round(ts * 1e9))
        own = data if (kept.kept_c if kind else kept.kept_s) else b""  # as a shape says
        size = 64 + len(own)
        pad = -size % 4
        total = 32 + size + pad
        head = struct.pack("<II4xIIII", BT_EPB, total, ns >> 32, ns & 0xFFFFFFFF, size, size)
        if kind == 0:
            rest = struct.pack("<8sqiiII8s16x", kept.flags_s, sec, usec, -115,
                               lengths & 0xFFFFFFFF, len(own), setup)
        else:
            rest = struct.pack("<8sqiiII24x", kept.flags_c, sec, usec, kept.errno,
                               lengths >> 32 & 0xFFFFFFFF, len(own))
        record = b"".join((head, irp, rest, own, bytes(pad), struct.pack("<I", total)))
        heapq.heappush(ahead, (at, number, kind, 1, record))


# ---- the other formats: USBPcap in either container, usbmon in classic pcap ----------------
#
# The same idea as usbmon in pcapng, for USBPcap: SQLite folds a row into five columns
# (``PREPARED_USBPCAP``), the shape holding all USBPcap's pseudo-header takes from the
# row besides IRP id and data: URB function, bus and device included, so the
# header's middle (status, function, info, bus, device, endpoint, transfer, length,
# stage) is one constant of the shape.  A control transfer's stages (SETUP with the 8
# setup bytes, DATA for data going out, COMPLETE) are one shape's records too.
PREPARED_USBPCAP = ("irp", "submitted_at", "completed_at", "shape", "data")
# the columns USBPcap needs when rows are not prepared in SQL, in ``_prepare_usbpcap``'s
# order: no seq, no lengths (USBPcap says how long the data is, nothing more)
USBPCAP_FIELDS = ("irp_id", "submitted_at", "completed_at", "bus", "device", "endpoint",
                  "transfer_type", "urb_function", "direction", "setup", "status", "data")
# USBPcap's transfer number of each name; a name export does not know is control
PCAP_XFER_BY_NAME = {name: usbpcap.FROM_RECORD[code] for code, name in TRANSFER_TYPE_NAMES.items()}
PCAP_XFER_OTHER = usbpcap.FROM_RECORD[CONTROL]
PCAP_XFER_ORDER = ("bulk", "control", "interrupt", "isochronous")
# a USBPcap shape's bits, from the lowest: the data's length (as in a usbmon shape),
# transfer type (USBPcap's number), endpoint, direction in, the setup bytes (0 none or
# empty, 1 eight, 2 any other length: such a row goes through the heap), the status's
# number (6 bits), the URB function's code (6), bus and device (8 each).  A bus or
# device past 8 bits (USBPcap has 16), or a hexadecimal status, makes the shape text:
# "STATUS BUS DEVICE SHAPE", the shape without those.
PCAP_XFER_AT, PCAP_EP_AT, PCAP_IN_AT, PCAP_SETUP_AT, PCAP_STATUS_AT = 17, 19, 27, 28, 30
PCAP_FUNCTION_AT, PCAP_BUS_AT, PCAP_DEV_AT = 36, 42, 50
FUNCTION_ORDER = ("bulk_or_interrupt_transfer", "control_transfer")  # the common first
FUNCTION_NAMES = {code: name for name, code in FUNCTION_CODES.items()}
assert max(FUNCTION_CODES.values()) < 64 and STATUS_OTHER < 64
# the reverse of the shapes' numbers, to rebuild a row that goes through the heap
NAME_BY_USBMON_XFER = {XFER_BY_NAME[name]: name for name in reversed(XFER_ORDER)}
NAME_BY_PCAP_XFER = {PCAP_XFER_BY_NAME[name]: name for name in reversed(PCAP_XFER_ORDER)}


def usbpcap_sql(u: str) -> str:
    """SQLite's select list of ``PREPARED_USBPCAP`` from ``urbs`` as ``u``: what
    ``_prepare_usbpcap`` computes, term for term.  A bus or device past 16 bits, an
    endpoint past 8 make the shape NULL, which ``_pcap_shape`` refuses, as struct
    refuses the field."""
    ep, dev, bus = f"ifnull({u}.endpoint, 0)", f"ifnull({u}.device, 0)", f"ifnull({u}.bus, 0)"
    xfer = " ".join(f"WHEN '{name}' THEN {PCAP_XFER_BY_NAME[name]}" for name in PCAP_XFER_ORDER)
    functions = sorted(FUNCTION_CODES, key=lambda name: (
        FUNCTION_ORDER.index(name) if name in FUNCTION_ORDER else len(FUNCTION_ORDER), name))
    function = " ".join(f"WHEN '{name}' THEN {FUNCTION_CODES[name]}" for name in functions)

    def bits_of(length: str, ep: str) -> str:
        return (f"{length} | ((CASE {u}.transfer_type "
                f"{xfer} ELSE {PCAP_XFER_OTHER} END) << {PCAP_XFER_AT}) | ({ep} << {PCAP_EP_AT})"
                f" | (({u}.direction IS 'in') << {PCAP_IN_AT}) | ((CASE WHEN {u}.setup IS NULL "
                f"OR length({u}.setup) = 0 THEN 0 WHEN length({u}.setup) = 8 THEN 1 ELSE 2 END) "
                f"<< {PCAP_SETUP_AT}) | ((CASE WHEN {u}.urb_function IS NULL THEN 0 ELSE (CASE "
                f"{u}.urb_function {function} ELSE 0 END) END) << {PCAP_FUNCTION_AT})")

    bits = bits_of(f"min(ifnull(length({u}.data), 0), {LENGTH_MAX})", ep)
    # most rows' shape, with no ifnull() and no range test of its own (about a fifth
    # of the expression's cost): no column NULL, bus, device and endpoint in 8 bits,
    # data the buffer takes; any other row takes the branches after it, as before
    fast = (f"WHEN {u}.status = 'success' AND ({u}.bus | {u}.device | {u}.endpoint) BETWEEN 0 "
            f"AND 255 AND length({u}.data) <= {DIRECT} THEN "
            f"{bits_of(f'length({u}.data)', f'{u}.endpoint')} | ({u}.bus << {PCAP_BUS_AT}) | "
            f"({u}.device << {PCAP_DEV_AT}) ")
    named = " ".join(f"WHEN '{name}' THEN {i}" for i, name in enumerate(STATUSES)
                     if name not in ("success", None))
    where = f"({bus} << {PCAP_BUS_AT}) | ({dev} << {PCAP_DEV_AT})"
    # then the common case: success, bus and device in 8 bits (so in range), and an
    # endpoint in range
    shape = (f"CASE {fast}WHEN {u}.status = 'success' AND ({bus} | {dev}) BETWEEN 0 AND 255 "
             f"AND {ep} BETWEEN 0 AND 255 THEN {bits} | {where} "
             f"WHEN (({bus} | {dev}) >> 16) | ({ep} >> 8) THEN NULL "
             f"WHEN ({bus} | {dev}) >> 8 OR {u}.status GLOB '0x*' THEN ifnull({u}.status, '') "
             f"|| ' ' || {bus} || ' ' || {dev} || ' ' || ({bits}) "
             f"ELSE {bits} | {where} | "
             f"((CASE {u}.status {named} ELSE (CASE WHEN {u}.status IS NULL THEN "
             f"{STATUSES.index(None)} ELSE {STATUS_OTHER} END) END) << {PCAP_STATUS_AT}) END")
    irp = f"CASE WHEN {u}.setup IS NULL THEN {u}.irp_id ELSE {u}.irp_id || ' ' || " \
        f"hex({u}.setup) END"
    return f"{irp}, {u}.submitted_at, {u}.completed_at, {shape}, {u}.data"


def _prepare_usbpcap(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row in ``USBPCAP_FIELDS`` order as ``PREPARED_USBPCAP``: what ``usbpcap_sql``
    makes SQLite compute, in Python, for rows that come from elsewhere."""
    (irp_text, submitted_at, completed_at, bus, device, endpoint, ttype, function, direction,
     setup, status, payload) = row
    endpoint, device, bus = endpoint or 0, device or 0, bus or 0
    setup = bytes(setup) if setup is not None else None
    data = bytes(payload) if payload is not None else None
    shape: Any = None
    if 0 <= endpoint <= 255 and 0 <= device <= 65535 and 0 <= bus <= 65535:
        shape = (min(len(data) if data else 0, LENGTH_MAX)
                 | PCAP_XFER_BY_NAME.get(ttype, PCAP_XFER_OTHER) << PCAP_XFER_AT
                 | endpoint << PCAP_EP_AT | (direction == "in") << PCAP_IN_AT
                 | (0 if not setup else 1 if len(setup) == 8 else 2) << PCAP_SETUP_AT
                 | FUNCTION_CODES.get(function, 0) << PCAP_FUNCTION_AT)
        if bus > 255 or device > 255 or isinstance(status, str) and status.startswith("0x"):
            shape = f"{'' if status is None else status} {bus} {device} {shape}"
        else:
            shape |= (STATUSES.index(status) if status in STATUSES else STATUS_OTHER) \
                << PCAP_STATUS_AT | bus << PCAP_BUS_AT | device << PCAP_DEV_AT
    irp = irp_text if setup is None else f"{irp_text} {setup.hex().upper()}"
    return irp, submitted_at, completed_at, shape, data


def _pcap_key(shape: Any) -> tuple[int, str | None, int, int]:
    """A USBPcap shape's bits (without status, bus and device), the status name it
    stands for ("other" for a name that is no USBD status and no number), bus, device."""
    if shape is None:
        raise struct.error("a URB's bus, device or endpoint does not fit a USBPcap header")
    if shape.__class__ is str:
        status, bus, device, bits = shape.rsplit(" ", 3)
        return int(bits), status, int(bus), int(device)
    number = shape >> PCAP_STATUS_AT & 0x3F
    return (shape, STATUSES[number] if number < STATUS_OTHER else "other",
            shape >> PCAP_BUS_AT & 0xFF, shape >> PCAP_DEV_AT & 0xFF)


def _unprepare_usbpcap(row: Sequence[Any], number: int) -> tuple[Any, ...]:
    """A ``PREPARED_USBPCAP`` row back in ``FIELDS`` order, the ``number``-th: what the
    heap path encodes, for the rows the fast writer leaves to it (one-sided, odd setup
    bytes, more data than the buffer takes)."""
    text, submitted_at, completed_at, shape, data = row
    irp_text, sep, setup_hex = text.partition(" ")
    key, status, bus, device = _pcap_key(shape)
    return (number, irp_text, submitted_at, completed_at, bus, device,
            key >> PCAP_EP_AT & 0xFF, NAME_BY_PCAP_XFER[key >> PCAP_XFER_AT & 3],
            FUNCTION_NAMES.get(key >> PCAP_FUNCTION_AT & 0x3F),
            "in" if key >> PCAP_IN_AT & 1 else "out",
            bytes.fromhex(setup_hex) if sep else None, None, None, status, data)


def _shape_status(shape: Any, at: int) -> tuple[int, str | None]:
    """A shape's bits and the status name it stands for ("other" for a name that is
    no USBD status and no number)."""
    if shape.__class__ is str:
        status, bits = shape.rsplit(" ", 1)
        return int(bits), status
    number = shape >> at
    return shape, STATUSES[number] if number < STATUS_OTHER else "other"


def _unprepare(row: Sequence[Any], number: int) -> tuple[Any, ...]:
    """A ``PREPARED`` (usbmon) row back in ``FIELDS`` order, the ``number``-th: what the
    heap path encodes, for the rows the fast writer leaves to it."""
    text, submitted_at, completed_at, shape, lengths, data = row
    irp_text, sep, setup_hex = text.partition(" ")
    setup = bytes.fromhex(setup_hex) if sep else None
    if shape is None:
        raise struct.error("a URB's bus, device, endpoint or length does not fit a usbmon "
                           "header")
    key, status = _shape_status(shape, STATUS_AT)
    return (number, irp_text, submitted_at, completed_at, key >> BUS_AT & 0xFFFF,
            key >> DEV_AT & 0xFF, key >> EP_AT & 0xFF, NAME_BY_USBMON_XFER[key >> XFER_AT & 3],
            None, "in" if key >> IN_AT & 1 else "out", setup, lengths & 0xFFFFFFFF,
            lengths >> 32 & 0xFFFFFFFF, status, data)


def _frame(ts_ns: int, records: Sequence[bytes], pcapng: bool) -> bytes:
    """The records of one event, framed as the container's blocks (as ``_framed``
    frames them)."""
    out = []
    if pcapng:
        for record in records:
            size = len(record)
            pad = -size % 4
            total = size + pad + 32
            out.append(EPB_HEAD.pack(BT_EPB, total, 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, size,
                                     size))
            out.append(record + bytes(pad) + U32.pack(total))
        return b"".join(out)
    sec, nsec = divmod(ts_ns, 1_000_000_000)
    if not 0 <= sec < 1 << 32:
        raise _too_late(sec)
    for record in records:
        out.append(PCAP_RECORD.pack(sec, nsec, len(record), len(record)))
        out.append(record)
    return b"".join(out)


PCAP_RECORD = struct.Struct("<IIII")


def _classic_time(pcapng: bool, *seconds: int) -> None:
    """Raise what classic pcap's writer raises for a time it cannot hold, when a row
    failed to pack for that reason (a fast writer packs its times with its fields)."""
    if not pcapng:
        for sec in seconds:
            if not 0 <= sec < 1 << 32:
                raise _too_late(sec) from None


def _too_late(sec: int) -> InputError:
    """What ``PcapWriter.write`` says of a time classic pcap cannot hold."""
    return InputError(f"a record at {sec} s since 1970 does not fit classic pcap's 32-bit "
                      "seconds; write pcapng (--format pcapng)")


def _push_raw(ahead: list[tuple[Any, int, int, int, bytes]], raw: Sequence[Any],
              origin: float, usbmon: bool, pcapng: bool) -> None:
    """A row in ``FIELDS`` order into the heap, its records framed as ``_framed``
    frames them, under the same key."""
    number, submitted_at, completed_at = raw[0], raw[2], raw[3]
    submit: Sequence[bytes] | None
    complete: Sequence[bytes] | None
    if usbmon:
        one, two = _usbmon_pair(raw, origin)
        submit = None if one is None else (one,)
        complete = None if two is None else (two,)
    else:
        submit, complete = _usbpcap_pair(raw)
    if submit is not None:
        heapq.heappush(ahead, (submitted_at, number, 0, len(submit),
                               _frame(round((origin + submitted_at) * 1e9), submit, pcapng)))
    if complete is not None:
        heapq.heappush(ahead, (completed_at, number, 1, len(complete),
                               _frame(round((origin + completed_at) * 1e9), complete, pcapng)))


def _hold_usbmon_pcap(ahead: list[tuple[Any, int, int, int, bytes]], row: Sequence[Any],
                      number: int, origin: float) -> None:
    """``_hold`` for usbmon in classic pcap, of a ``PREPARED_PCAP`` row (rare rows:
    through the general encoder)."""
    text, submitted_at, completed_at, shape, data = row
    if shape is not None:
        shape, requested, actual = _unfold(shape, data)
        lengths = requested | actual << 32
    else:
        lengths = 0
    _push_raw(ahead, _unprepare((text, submitted_at, completed_at, shape, lengths, data),
                                number), origin, True, False)


class PcapShape(NamedTuple):
    """What ``_pcap_shape`` makes of a USBPcap shape: the struct's ``pack_into`` for a
    row's records, their length and count, and the pieces only the shape decides."""

    pack: Any
    total: int
    records: int
    head_s: bytes    # the first record's block head (pcapng) or nothing
    sizes_s: bytes   # its captured and original length, then USBPcap's header length
    middle_s: bytes  # its header after the IRP id: status to data length (and stage)
    tail_s: bytes    # its pad and trailer, then the next record's block head
    sizes_c: bytes   # the completion, as above
    middle_c: bytes
    end: bytes       # its pad and trailer
    where: int       # the data: 0 none, 1 the submission, 2 the completion, 3 a DATA stage;
    #                  -1: the row goes through the heap
    split: int       # the length of the submission's records (the completion's follow)
    data_stage: tuple[bytes, bytes, bytes]  # a DATA stage's sizes, middle and tail


def _pcap_shape(table: dict[Any, PcapShape], shape: Any, pcapng: bool) -> PcapShape:
    """A USBPcap shape decoded (see ``usbpcap_sql``); kept for the next row of that
    shape (up to a few thousand)."""
    key, status, bus, device = _pcap_key(shape)
    code = (_status_code(status) or 0) & 0xFFFFFFFF
    n = key & LENGTH_MAX
    transfer, endpoint = key >> PCAP_XFER_AT & 3, key >> PCAP_EP_AT & 0xFF
    direction_in, setup_kind = key >> PCAP_IN_AT & 1, key >> PCAP_SETUP_AT & 3
    function = key >> PCAP_FUNCTION_AT & 0x3F
    control = transfer == usbpcap.TRANSFER_CONTROL
    out = 0 if direction_in else n
    into = n if direction_in else 0
    size = USBPCAP_HEADER.size + control  # a control transfer's records add the stage
    # the records: payload length, and the header from the status on (USBD status,
    # function, info, bus, device, endpoint, transfer, data length, the stage)
    records = []
    if control:
        setup_length = 8 if setup_kind == 1 else 0
        records.append((setup_length, struct.pack("<IHBHHBBIB", 0, function, 0, bus, device,
                                                  endpoint, transfer, setup_length,
                                                  usbpcap.STAGE_SETUP)))
        if out:
            records.append((out, struct.pack("<IHBHHBBIB", 0, function, 0, bus, device,
                                             endpoint, transfer, out, usbpcap.STAGE_DATA)))
    else:
        records.append((out, struct.pack("<IHBHHBBI", 0, function, 0, bus, device, endpoint,
                                         transfer, out)))
    records.append((into, struct.pack("<IHBHHBBI", code, function,
                                      usbpcap.USBPCAP_INFO_PDO_TO_FDO, bus, device, endpoint,
                                      transfer, into)
                    + (struct.pack("<B", usbpcap.STAGE_COMPLETE) if control else b"")))
    heads, sizes, tails = [], [], []
    for length, _ in records:
        length += size
        total = 32 + length + -length % 4
        sizes.append(struct.pack("<IIH", length, length, size))
        heads.append(struct.pack("<II4x", BT_EPB, total) if pcapng else b"")
        tails.append(bytes(-length % 4) + struct.pack("<I", total) if pcapng else b"")
    split = sum(32 + length + size + -(length + size) % 4 if pcapng else 16 + length + size
                for length, _ in records[:-1])
    tails = [tail + head for tail, head in zip(tails, heads[1:] + [b""])]
    where = -1 if control and setup_kind == 2 or n > DIRECT else 3 if control and out else \
        1 if out else 2 if into else 0
    # head, time, sizes, IRP id, middle, setup, data, tail; [a DATA stage: time, sizes,
    # IRP id, middle, data, tail]; the completion: time, sizes, IRP id, middle, data, end
    setup = 8 if control and setup_kind == 1 else 0
    fmt = f"<{len(heads[0])}sII10s8s{len(records[0][1])}s{setup}s" + \
        (f"{out}s" if out and not control else "") + f"{len(tails[0])}s"
    stage: tuple[bytes, bytes, bytes] = (b"", b"", b"")
    if control and out:
        fmt += f"II10s8s{len(records[1][1])}s{out}s{len(tails[1])}s"
        stage = (sizes[1], records[1][1], tails[1])
    fmt += f"II10s8s{len(records[-1][1])}s" + (f"{into}s" if into else "") + \
        f"{len(tails[-1])}s"
    packer = struct.Struct(fmt)
    entry = PcapShape(packer.pack_into, packer.size, len(records), heads[0], sizes[0],
                      records[0][1], tails[0], sizes[-1], records[-1][1], tails[-1], where,
                      split, stage)
    if len(table) < 4096:
        table[shape] = entry
    return entry


class PcapPair(NamedTuple):
    """What ``_pcap_pair`` makes of a row's IRP id text and USBPcap shape: the pieces
    of its records that only those decide, joined where they touch, and the struct
    that packs them around the times and the data."""

    pack: Any
    total: int
    records: int
    head: bytes      # the first record's block head (pcapng) or nothing
    a: bytes         # the first record: lengths, IRP id, the header's middle, setup bytes
    b: bytes         # its pad and trailer, and the next block's head (pcapng)
    c: bytes         # the completion: lengths, IRP id, the header's middle
    d: bytes         # its pad and trailer (pcapng)
    where: int       # -1: the row goes through the heap; 3: a DATA stage; else packed
    split: int       # the length of the submission's records (the completion's follow)
    a_d: bytes       # a DATA stage's lengths, IRP id and middle
    b_d: bytes       # its pad and trailer, and the next block's head (pcapng)


@functools.lru_cache(maxsize=1024)
def _struct(fmt: str) -> struct.Struct:
    """One struct a format: a shape's, shared by the rows of every IRP id."""
    return struct.Struct(fmt)


def _pcap_template(templates: dict[Any, tuple[Any, ...]], shape: Any,
                   shapes: dict[Any, PcapShape], pcapng: bool) -> tuple[Any, ...]:
    """What ``_pcap_pair`` takes from a row's shape alone: its struct and the pieces
    around the IRP id and setup bytes (kept for the next row of that shape, up to a few
    thousand), so that a row of an IRP id not kept costs a few joins."""
    kept = shapes.get(shape) or _pcap_shape(shapes, shape, pcapng)
    key = _pcap_key(shape)[0]
    n = key & LENGTH_MAX
    control = key >> PCAP_XFER_AT & 3 == usbpcap.TRANSFER_CONTROL
    setup = 8 if control and key >> PCAP_SETUP_AT & 3 == 1 else 0
    sizes_d, middle_d, tail_d = kept.data_stage
    # the pieces' lengths: lengths, IRP id (8 bytes), the header's middle (and setup)
    a = len(kept.sizes_s) + 8 + len(kept.middle_s) + setup
    c = len(kept.sizes_c) + 8 + len(kept.middle_c)
    d = len(sizes_d) + 8 + len(middle_d)
    if kept.where == 3:  # SETUP, DATA (the data going out), COMPLETE
        fmt = f"<{len(kept.head_s)}sII{a}s{len(kept.tail_s)}sII{d}s{n}s" \
            f"{len(tail_d)}sII{c}s{len(kept.end)}s"
    else:
        out = n if kept.where == 1 else 0
        into = n if kept.where == 2 else 0
        fmt = f"<II{a}s{out}sII{c}s{into}s"
        if pcapng:
            fmt = f"<{len(kept.head_s)}sII{a}s{out}s{len(kept.tail_s)}sII{c}s" \
                f"{into}s{len(kept.end)}s"
    packer = _struct(fmt)
    assert kept.where < 0 or packer.size == kept.total
    entry = (packer.pack_into, packer.size, kept.records, kept.head_s, kept.sizes_s,
             kept.middle_s, setup, kept.tail_s, kept.sizes_c, kept.middle_c, kept.end,
             kept.where, kept.split, sizes_d, middle_d, tail_d)
    if len(templates) < 4096:
        templates[shape] = entry
    return entry


def _pcap_pair(pairs: dict[Any, tuple[Any, ...]], text: str, shape: Any,
               ids: dict[str, tuple[bytes, bytes]], templates: dict[Any, tuple[Any, ...]],
               shapes: dict[Any, PcapShape], pcapng: bool) -> tuple[Any, ...]:
    """A row's IRP id text (see ``_irp``) and shape decoded for ``_usbpcap_fast`` (a
    ``PcapPair``'s fields), kept in ``pairs`` (the table of that text) for the next
    row of both, up to 32 shapes an IRP id (and 256 IRP ids, as ``_classic_pair``).
    The submission's data (a bulk or interrupt transfer out) or the completion's is
    one field, the other's a field of length 0: one argument list for every shape but
    a control transfer's DATA stage."""
    irp_id, setup = ids.get(text) or _irp(ids, text)
    (pack, total, records, head, sizes_s, middle_s, setup_length, tail_s, sizes_c, middle_c,
     end, where, split, sizes_d, middle_d, tail_d) = \
        templates.get(shape) or _pcap_template(templates, shape, shapes, pcapng)
    fields = PcapPair(pack, total, records, head, sizes_s + irp_id + middle_s +
                      setup[:setup_length], tail_s, sizes_c + irp_id + middle_c, end, where,
                      split, sizes_d + irp_id + middle_d if where == 3 else b"", tail_d)
    entry = tuple(fields)  # (see _classic_pair)
    if len(pairs) < 32:
        pairs[shape] = entry
    return entry


def _usbpcap_fast(rows: Iterable[Sequence[Any]], stream: BinaryIO, origin: float,
                  pcapng: bool) -> tuple[int, int]:
    """What ``_framed`` writes for USBPcap, byte for byte, in either container, as
    ``_usbmon_fast`` writes usbmon; ``rows`` in ``PREPARED_USBPCAP`` order.  A shape
    says whether its rows can be packed at all (``where``): a row with odd setup bytes
    or more data than the buffer takes directly goes through the heap."""
    buf = bytearray(FLUSH)
    view = memoryview(buf)
    pos = count = seen = 0
    room = FLUSH - DIRECT - 512  # past this, the buffer is written out before a row
    write = stream.write
    shapes: dict[Any, PcapShape] = {}
    ids: dict[str, tuple[bytes, bytes]] = {}
    by_text: dict[str, dict[Any, tuple[Any, ...]]] = {}  # IRP id text -> shape -> pieces
    templates: dict[Any, tuple[Any, ...]] = {}  # shape -> what _pcap_pair takes from it
    origin = float(origin)
    fround = float.__round__
    ahead: list[tuple[Any, int, int, int, bytes]] = []  # a heap, as in _framed
    ahead_min: Any = INF
    pop, push = heapq.heappop, heapq.heappush
    held: Sequence[Any] | None = None
    hi_s = hi_c = 0
    # classic pcap: the second of the last time, the times in it, and in nanoseconds
    base, low, high, low_ns = 0, INF, -INF, 0.0
    try:
        for seen, row in enumerate(rows, 1):
            now = row[1]
            if now is None:
                now = row[2]
                if now is None:
                    continue  # no records, and nothing is due
            if held is not None:
                text, sub, done, shape, data = held
                pairs = by_text.get(text)
                if pairs is None:
                    pairs = {}
                    if len(by_text) < 256:
                        by_text[text] = pairs
                entry = pairs.get(shape)
                if entry is None:
                    entry = _pcap_pair(pairs, text, shape, ids, templates, shapes,
                                       pcapng)
                pack, total, records, head, a, b, c, d, where, split, a_d, b_d = entry
                if where >= 0 and sub is not None and done is not None:
                    # packed in place; written there if both records are due by now,
                    # before whatever waits (as the heap would order them), else the
                    # submission alone if it is, and what is not due goes to the heap
                    if pos > room:
                        write(view[:pos])
                        pos = 0
                    if pcapng:
                        ns_s = fround((origin + sub) * 1e9)
                        ns_c = fround((origin + done) * 1e9)
                        hi_s = ns_s >> 32
                        lo_s = ns_s & 0xFFFFFFFF
                        hi_c = ns_c >> 32
                        lo_c = ns_c & 0xFFFFFFFF
                    else:  # most times fall in the second of the time before them
                        ts = origin + sub  # (see _usbmon_pcap)
                        if low <= ts < high:
                            hi_s = base
                            lo_s = fround(ts * 1e9 - low_ns)
                            if lo_s >= NS:
                                hi_s, lo_s = divmod(fround(ts * 1e9), NS)
                        else:
                            base, low, high, low_ns = _second(ts)
                            hi_s, lo_s = divmod(fround(ts * 1e9), NS)
                        ts = origin + done
                        if low <= ts < high:
                            hi_c = base
                            lo_c = fround(ts * 1e9 - low_ns)
                            if lo_c >= NS:
                                hi_c, lo_c = divmod(fround(ts * 1e9), NS)
                        else:
                            base, low, high, low_ns = _second(ts)
                            hi_c, lo_c = divmod(fround(ts * 1e9), NS)
                    if data is None:  # no data (a field of length 0 takes no None)
                        data = b""
                    if where == 3:
                        pack(buf, pos, head, hi_s, lo_s, a, b, hi_s, lo_s, a_d, data, b_d, hi_c,
                             lo_c, c, d)
                    elif pcapng:
                        pack(buf, pos, head, hi_s, lo_s, a, data, b, hi_c, lo_c, c, data, d)
                    else:
                        pack(buf, pos, hi_s, lo_s, a, data, hi_c, lo_c, c, data)
                    if sub <= done <= now and done < ahead_min:
                        pos += total
                        count += records
                    else:
                        # its number in the heap's order: less than any later row's,
                        # more than any earlier row's
                        if sub <= now and sub < ahead_min and sub <= done:
                            pos += split
                            count += records - 1
                            push(ahead, (done, seen - 1, 1, 1,
                                         bytes(view[pos:pos + total - split])))
                        else:
                            push(ahead, (sub, seen - 1, 0, records - 1,
                                         bytes(view[pos:pos + split])))
                            push(ahead, (done, seen - 1, 1, 1,
                                         bytes(view[pos + split:pos + total])))
                        ahead_min = ahead[0][0]
                else:
                    _push_raw(ahead, _unprepare_usbpcap(held, seen - 1), origin, False,
                              pcapng)
                    ahead_min = ahead[0][0]
                if ahead_min <= now:
                    while ahead and ahead[0][0] <= now:
                        item = pop(ahead)
                        count += item[3]
                        blob = item[4]
                        n = len(blob)
                        if pos + n > FLUSH:
                            write(view[:pos])
                            pos = 0
                            if n > FLUSH:
                                write(blob)
                                continue
                        buf[pos:pos + n] = blob
                        pos += n
                    ahead_min = ahead[0][0] if ahead else INF
            held = row
    except struct.error:
        _classic_time(pcapng, hi_s, hi_c)
        raise
    if held is not None:
        _push_raw(ahead, _unprepare_usbpcap(held, seen), origin, False, pcapng)
    write(view[:pos])
    while ahead:
        item = pop(ahead)
        write(item[4])
        count += item[3]
    view.release()
    return count, seen
