"""Sessions back out as pcapng (or classic pcap) that Wireshark opens: USBPcap (249)
or usbmon (220).

Each ``urbs`` row becomes its submission and completion records, written in
time order.  A live session exported as USBPcap carries the tracer's IRP ids,
URB function codes and USBD status, as USBPcap on Windows would.  As usbmon,
USBD status is translated back to the errno Linux would report.
"""

from __future__ import annotations

import heapq
import io
import operator
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

from usbtrace.capture import usbpcap
from usbtrace.capture.pcap import BT_EPB, PcapngWriter, PcapWriter
from usbtrace.capture.usbmon import LINKTYPE_USB_LINUX_MMAPPED
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


def _usbmon_pair(row: Sequence[Any], origin: float, framed: bool = False
                 ) -> tuple[bytes | None, bytes | None]:
    """A row's submission and completion as usbmon records, straight from its columns
    (what ``encode_usbmon`` makes of ``events_of``'s events, without the events);
    ``framed``: each already in its pcapng Enhanced Packet Block, packed in one go."""
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
        submit = _epb_usbmon(origin + submitted_at, fields, out) if framed else \
            USBMON_HEADER.pack(*fields) + out
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
        complete = _epb_usbmon(origin + completed_at, fields, into) if framed else \
            USBMON_HEADER.pack(*fields) + into
    return submit, complete


EPB_USBMON = struct.Struct("<IIIIIII" + USBMON_HEADER.format.lstrip("<"))


def _epb_usbmon(ts: float, fields: tuple[Any, ...], data: bytes) -> bytes:
    """One usbmon record in its pcapng Enhanced Packet Block (as ``PcapngWriter.write``
    frames it), header and block header in one ``pack``."""
    ts_ns = int(round(ts * 1e9))
    size = USBMON_HEADER.size + len(data)
    pad = -size % 4
    total = size + pad + 32
    return EPB_USBMON.pack(BT_EPB, total, 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, size, size,
                           *fields) + data + b"\0" * pad + U32.pack(total)


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
    wanted = fields_for(linktype, container)
    if columns is not None and tuple(columns) == wanted:
        picked: Iterable[Sequence[Any]] = rows  # already in order: no copy a row
    else:
        keys: Sequence[Any] = wanted
        if columns is not None:
            index = {name: i for i, name in enumerate(columns)}
            keys = [index[name] for name in wanted]
        picked = map(operator.itemgetter(*keys), rows)
    pcapng = container != "pcap"
    if pcapng:  # the header blocks; the records are framed here, a batch a write
        PcapngWriter(stream, LINKTYPES[linktype], comments=comments)
    else:
        PcapWriter(stream, LINKTYPES[linktype])
    if pcapng and linktype == "usbmon":
        return _usbmon_pcapng(picked, stream, origin)
    return _framed(picked, stream, linktype, origin, pcapng)


def _framed(rows: Iterable[Sequence[Any]], stream: BinaryIO, linktype: str, origin: float,
            pcapng: bool) -> tuple[int, int]:
    """Any record format in either container: each event's records framed as bytes and
    ordered through a heap (``_usbmon_pcapng`` is the common case, faster)."""
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


# usbmon in pcapng, encoded straight into one preallocated buffer: the Enhanced Packet
# Block's head and the usbmon header in one pack_into (the interface id and the header's
# four trailing fields are always 0: pad bytes, which struct writes as zeros), and a
# record without data with its block's trailer too
EPB_MON = struct.Struct("<II4xIIII" + USBMON_HEADER.format[1:-4] + "16x")
EPB_MON_EMPTY = struct.Struct(EPB_MON.format + "I")
XFER_BY_NAME = {name: USBMON_XFER.get(code, 3) for code, name in TRANSFER_TYPE_NAMES.items()}
ZERO8 = bytes(8)
DIRECT = 1 << 16  # a row whose data is larger goes through the heap, as bytes
# the columns usbmon needs, in the order _usbmon_pcapng takes them: no seq (rows come in
# seq order, so their count orders the heap as well), no URB function
USBMON_FIELDS = ("irp_id", "submitted_at", "completed_at", "bus", "device", "endpoint",
                 "transfer_type", "direction", "setup", "requested_length", "actual_length",
                 "status", "data")


def fields_for(linktype: str, container: str) -> tuple[str, ...]:
    """The ``urbs`` columns ``write_capture`` reads for this output, in its order: a
    caller that selects just these spares the database and the cursor the others."""
    return USBMON_FIELDS if linktype == "usbmon" and container != "pcap" else FIELDS


def _usbmon_pcapng(rows: Iterable[Sequence[Any]], stream: BinaryIO, origin: float
                   ) -> tuple[int, int]:
    """What ``_framed`` writes for usbmon in pcapng, byte for byte, at a fraction of
    the cost; ``rows`` in ``USBMON_FIELDS`` order.

    Transfers rarely overlap: a row's records are nearly always both due before the
    next row's submission, ahead of anything still waiting (a pending interrupt
    transfer).  So the last row is held, as its tuple, until the next row's time is
    known; if its records come first then, they are encoded straight into the output
    buffer, in the order the heap would give them.  Otherwise they become bytes in
    the heap, and leave it as in ``_framed``.  A record with data is packed whole,
    data and trailer too, by a ``struct`` kept for its length."""
    buf = bytearray(FLUSH)
    view = memoryview(buf)
    pos = count = seen = 0
    room = FLUSH - DIRECT - 256  # past this, the buffer is written out before a row
    write = stream.write
    pack_empty = EPB_MON_EMPTY.pack_into
    sized: dict[int, tuple[Any, int, int]] = {}  # data length -> pack_into, size, total
    xfers, errnos = XFER_BY_NAME, _ERRNO_BY_STATUS.copy()
    origin = float(origin)  # so a time is a float, and float's own methods round it
    trunc, fround, _bytes = float.__trunc__, float.__round__, bytes
    ahead: list[tuple[Any, int, int, bytes]] = []  # a heap, as in _framed
    ahead_min: Any = INF  # the time of its first record
    pop = heapq.heappop
    held: Sequence[Any] = ()
    held_no = 0
    held_sub: Any = None  # the held row's times
    held_done: Any = None
    last: Any
    for row in rows:
        seen += 1
        sub = row[1]
        done = row[2]
        now = sub if sub is not None else done
        if now is None:
            continue  # no records, and nothing is due
        if held_no:
            last = held_done if held_done is not None else held_sub
            if last <= now and last < ahead_min and (
                    held_sub is None or held_done is None or held_sub <= held_done) and \
                    len(data := held[12] or b"") <= DIRECT:
                # due by now, and before whatever waits (an earlier row's, so at an
                # equal time that comes first): written now, in the heap's order
                (irp_text, _, _, bus, device, endpoint, ttype, direction, setup, requested,
                 actual, status, _) = held
                if data.__class__ is not bytes:
                    data = _bytes(data)
                xfer = xfers.get(ttype)
                if xfer is None:
                    xfer = USBMON_XFER.get(TYPE_CODES.get(ttype, CONTROL), 3)
                endpoint = endpoint or 0
                device = device or 0
                bus = bus or 0
                irp_id = int(irp_text, 16) & MASK64
                if pos > room:
                    write(view[:pos])
                    pos = 0
                if held_sub is not None:
                    ts = origin + held_sub
                    sec = trunc(ts)
                    usec = fround((ts - sec) * 1e6)
                    if usec >= 1_000_000:
                        sec, usec = sec + 1, usec - 1_000_000
                    ts_ns = fround(ts * 1e9)
                    if setup:
                        if setup.__class__ is not bytes:
                            setup = _bytes(setup)
                        flag_setup = 0
                    else:
                        setup = None
                        flag_setup = 45
                    if not data or direction == "in":
                        pack_empty(buf, pos, BT_EPB, 96, ts_ns >> 32, ts_ns & 0xFFFFFFFF,
                                   64, 64, irp_id, 83, xfer, endpoint, device, bus, flag_setup,
                                   60 if (setup[0] if setup else endpoint) & 0x80 else 62,
                                   sec, usec, -115, requested or 0, 0, setup or ZERO8, 96)
                        pos += 96
                    else:
                        n = len(data)
                        pack, size, total = sized.get(n) or _sized(sized, n)
                        pack(buf, pos, BT_EPB, total, ts_ns >> 32, ts_ns & 0xFFFFFFFF, size,
                             size, irp_id, 83, xfer, endpoint, device, bus, flag_setup, 0, sec,
                             usec, -115, requested or 0, n, setup or ZERO8, data, total)
                        pos += total
                    count += 1
                if held_done is not None:
                    ts = origin + held_done
                    sec = trunc(ts)
                    usec = fround((ts - sec) * 1e6)
                    if usec >= 1_000_000:
                        sec, usec = sec + 1, usec - 1_000_000
                    ts_ns = fround(ts * 1e9)
                    errno = errnos.get(status)
                    if errno is None:
                        errno = errnos[status] = USBD_TO_ERRNO.get(
                            _status_code(status) or 0, -71)
                    if data and direction == "in":
                        n = len(data)
                        pack, size, total = sized.get(n) or _sized(sized, n)
                        pack(buf, pos, BT_EPB, total, ts_ns >> 32, ts_ns & 0xFFFFFFFF, size,
                             size, irp_id, 67, xfer, endpoint, device, bus, 45, 0, sec, usec,
                             errno, actual or 0, n, ZERO8, data, total)
                        pos += total
                    else:
                        pack_empty(buf, pos, BT_EPB, 96, ts_ns >> 32, ts_ns & 0xFFFFFFFF,
                                   64, 64, irp_id, 67, xfer, endpoint, device, bus, 45,
                                   60 if endpoint & 0x80 else 62, sec, usec, errno,
                                   actual or 0, 0, ZERO8, 96)
                        pos += 96
                    count += 1
            else:
                _hold(ahead, held, held_no, origin)
                ahead_min = ahead[0][0]
            if ahead_min <= now:
                while ahead and ahead[0][0] <= now:
                    blob = pop(ahead)[3]
                    count += 1
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
        held_no = seen
        held_sub = sub
        held_done = done
    if held_no:
        _hold(ahead, held, held_no, origin)
    write(view[:pos])
    while ahead:  # the rest, in order (a few, unless the data is larger than the buffer)
        write(pop(ahead)[3])
        count += 1
    view.release()
    return count, seen


INF = float("inf")


def _sized(cache: dict[int, tuple[Any, int, int]], n: int) -> tuple[Any, int, int]:
    """The ``struct`` that packs a usbmon record with ``n`` bytes of data in its block,
    whole (kept for the next record of that length, up to a few thousand lengths)."""
    pad = -n % 4
    entry = (struct.Struct(f"{EPB_MON.format}{n}s{pad}xI").pack_into, 64 + n, 96 + n + pad)
    if len(cache) < 4096:
        cache[n] = entry
    return entry


def _hold(ahead: list[tuple[Any, int, int, bytes]], row: Sequence[Any], number: int,
          origin: float) -> None:
    """A row (in ``USBMON_FIELDS`` order, the ``number``-th) into the heap of records
    waiting for their time, as ``_framed`` puts them there."""
    (irp_text, submitted_at, completed_at, bus, device, endpoint, ttype, direction, setup,
     requested, actual, status, payload) = row
    one, two = _usbmon_pair((number, irp_text, submitted_at, completed_at, bus, device,
                             endpoint, ttype, None, direction, setup, requested, actual,
                             status, payload), origin, True)
    if one is not None:
        heapq.heappush(ahead, (submitted_at, number, 0, one))
    if two is not None:
        heapq.heappush(ahead, (completed_at, number, 1, two))
