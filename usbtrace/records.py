"""The one record type every source yields and every sink consumes.

An :class:`Event` is one submission ("S") or completion ("C") of one request,
as usbmon and USBPcap record them, plus the stack context only a filter
driver can see (IRP major/minor/IOCTL, parent IRP, filter position, NTSTATUS).
Capture readers fill the URB part and leave the stack part empty; the tracer
fills both.  This module imports nothing else of the package.
"""

from __future__ import annotations

from dataclasses import dataclass

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
