"""The one record type every source yields and every sink consumes.

An :class:`Event` is one submission ("S") or completion ("C") of one request,
as usbmon and USBPcap record them, plus the stack context only a filter
driver can see (IRP major/minor/IOCTL, parent IRP, filter position, NTSTATUS).
Capture readers fill the URB part and leave the stack part empty; the tracer
fills both.  This module imports nothing else of the package.

The tracer itself makes no objects: it writes flat records, ``(fields,
payload)``, as USBPcap's filter writes flat pcap records into its buffer, and
the consumer turns them into Events (:func:`event_from_record`).  A sink that
takes them as they are derives from :class:`RecordSink`; any other sink is
given Events (:class:`EventSink`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

SUBMIT = "S"
COMPLETE = "C"
GAP = "G"  # a lossy tracer dropped ``information`` records here

CONTROL, ISOCHRONOUS, BULK, INTERRUPT = 0, 1, 2, 3
TRANSFER_TYPE_NAMES = {0: "control", 1: "isochronous", 2: "bulk", 3: "interrupt"}


@dataclass(slots=True)
class Event:
    kind: str  # SUBMIT, COMPLETE, or GAP
    ts: float  # seconds from the start of the session
    irp_id: int  # IRP address (live, USBPcap) or URB id (usbmon)
    position: str = "capture"  # tracer position: "lower", "upper"; or "capture"
    major: int | None = None
    minor: int | None = None
    ioctl: int | None = None
    parent_irp_id: int | None = None
    status: int | None = None  # NTSTATUS, at completion
    information: int | None = None
    detail: str | None = None  # readable parameters (PnP IDs, power states)
    urb_function: int | None = None
    bus: int | None = None
    device: int | None = None
    endpoint: int | None = None  # with the direction bit (0x80 = IN)
    transfer_type: int | None = None
    urb_status: int | None = None  # USBD status (usbmon errno is translated)
    length: int | None = None  # requested at submission, actual at completion
    setup: bytes | None = None
    data: bytes = b""  # payload as captured
    data_length: int | None = None  # payload length before any capture truncation
    offset: int | None = None  # byte offset of a READ/WRITE (upper position)
    file_object: int | None = None  # the handle a READ/WRITE came from
    record_number: int | None = None  # position in the capture file, from 1
    raw_status: int | None = None  # the source's own status value (errno for usbmon)
    stream_id: int | None = None  # USB 3 bulk stream (live only: no capture format has it)

    @property
    def is_urb(self) -> bool:
        return self.endpoint is not None


# A record as the tracer writes it: every Event field but the payload, in Event's order,
# then the payload apart (it travels apart too: see the live storing process).  Its
# time is the session clock's counter in integer nanoseconds, not seconds: the filter
# stamps a counter, as a kernel filter calls KeQueryPerformanceCounter, and whoever
# reads the record converts (``event_from_record``), off the I/O path.
Record = tuple[tuple[Any, ...], bytes]
EVENT_FIELDS = tuple(f.name for f in fields(Event))
DATA_INDEX = EVENT_FIELDS.index("data")
RECORD_FIELDS = EVENT_FIELDS[:DATA_INDEX] + EVENT_FIELDS[DATA_INDEX + 1:]
NS = 1e9  # counter ticks a second


def event_from_record(record: Record) -> Event:
    meta, data = record
    make: Any = Event  # positional, the payload put back in its place
    event: Event = make(*meta[:DATA_INDEX], data, *meta[DATA_INDEX:])
    event.ts /= NS  # the counter, in seconds
    return event


def events_from_flat(fields: Iterable[tuple[Any, ...]], lengths: Iterable[int],
                     payloads: memoryview) -> list[Event]:
    """``event_from_record`` for records shipped flat: each one's fields, and their
    payloads back to back in ``payloads`` (``lengths`` of them), as the live storing
    process receives a message.  Each payload becomes a ``bytes`` of its own, so the
    buffer may be reused.  One loop with its look-ups made once: a function call and a
    tuple per record cost a fifth of the conversion, which runs for every record."""
    make: Any = Event
    split, ns, empty = DATA_INDEX, NS, b""
    events: list[Event] = []
    append = events.append
    offset = 0
    for meta, length in zip(fields, lengths):
        if length:
            end = offset + length
            event = make(*meta[:split], bytes(payloads[offset:end]), *meta[split:])
            offset = end
        else:
            event = make(*meta[:split], empty, *meta[split:])
        event.ts /= ns
        append(event)
    return events


def record_from_event(event: Event) -> Record:
    meta = tuple(getattr(event, name) for name in RECORD_FIELDS)
    return (meta[0], round(event.ts * NS)) + meta[2:], event.data


def gap_record(ts_ns: int, dropped: int) -> Record:
    """The record a lossy queue puts where it dropped ``dropped`` records."""
    return record_from_event(Event(GAP, ts_ns / NS, 0, information=dropped))


class RecordSink:
    """A sink that takes the tracer's flat records as they are, in ``take``, so that no
    Event is made on the I/O path: the live recorder, which ships them to the storing
    process, and benchmarks.  The tracer calls the bound method, the cheapest call."""

    def take(self, record: Record) -> None:
        raise NotImplementedError

    def __call__(self, record: Record) -> None:
        self.take(record)


class EventSink(RecordSink):
    """A sink of Events behind the tracer: each record becomes an Event first."""

    def __init__(self, consume: Callable[[Event], None]) -> None:
        self.consume = consume

    def take(self, record: Record) -> None:
        self.consume(event_from_record(record))
