"""Sessions back out as pcapng (or classic pcap) that Wireshark opens: USBPcap (249)
or usbmon (220).

Each ``urbs`` row becomes its submission and completion records, written in
time order.  A live session exported as USBPcap carries the tracer's IRP ids,
URB function codes and USBD status, as USBPcap on Windows would.  As usbmon,
USBD status is translated back to the errno Linux would report.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

from usbtrace.capture import usbpcap
from usbtrace.capture.pcap import PcapngWriter, PcapWriter
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


def export(rows: Iterable[dict[str, Any]], stream: BinaryIO, linktype: str,
           origin: float, container: str = "pcapng", comments: Sequence[str] = ()) -> int:
    """Write ``rows`` as ``container`` ('pcapng' or 'pcap') with ``linktype`` ('usbpcap'
    or 'usbmon'), ``comments`` in pcapng's section header; returns the records written."""
    writer: PcapngWriter | PcapWriter = PcapWriter(stream, LINKTYPES[linktype]) \
        if container == "pcap" else PcapngWriter(stream, LINKTYPES[linktype],
                                                 comments=comments)
    count = 0
    for event in events_of(rows):
        ts_ns = int(round((origin + event.ts) * 1e9))
        if linktype == "usbmon":
            writer.write(ts_ns, encode_usbmon(event, origin))
            count += 1
        else:
            for record in encode_usbpcap(event):
                writer.write(ts_ns, record)
                count += 1
    return count
