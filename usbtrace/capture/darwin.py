"""macOS USB records: LINKTYPE_USB_DARWIN (266).

macOS writes them when ``tcpdump`` or Wireshark captures an XHCn/EHCn
interface.  The header is little-endian; its fields, in order (the layout
Wireshark's USB dissector reads for this linktype):

* ``bcdVersion`` (2): 0x0100, or 0x0101 with eight more bytes (interface
  class, subclass, protocol and alternate setting, VID, PID) that this
  reader does not need;
* ``bHeaderLength`` (1): where the data starts; it is the only thing that
  says so, so a header of a newer version with more fields still reads;
* ``bRequestType`` (1): 0 submit, 1 complete;
* ``dwIOLength`` (4): requested length at submission, actual at completion
  (for control transfers, without the 8 setup bytes);
* ``dwIOStatus`` (4): the IOReturn of the request;
* ``dwIsoFrameCount`` (4): isochronous frames that follow the header;
* ``qwIORequestId`` (8): pairs a submission with its completion;
* ``dwLocationId`` (4): the port path; its top byte is the bus;
* ``bSpeed`` (1): 0 low, 1 full, 2 high, 3 super, 4 super+;
* ``bDeviceAddress`` (1), ``bEndpointAddress`` (1, with the direction bit),
  ``bEndpointType`` (1): 0 control, 1 isochronous, 2 bulk, 3 interrupt.

A control submission carries the 8 setup bytes, then any OUT data.  Bulk
and interrupt OUT data rides on the completion, not the submission.
Isochronous records carry one frame header per frame (header length,
frame length, status, frame number, time stamp), and on completion the
frame's data after it, each frame padded to 4 bytes.

Every length field is bounded by the bytes captured: a record shorter than
what its header claims is data cut short (``data_length`` keeps the claim),
a header that does not fit the record is malformed.
"""

from __future__ import annotations

import struct

from construct import Byte, Int16ul, Int32ul, Int64ul, Struct

from usbtrace.capture.pcap import Packet
from usbtrace.records import COMPLETE, CONTROL, ISOCHRONOUS, SUBMIT, Event
from usbtrace.usb import urb as U

LINKTYPE_USB_DARWIN = 266

DarwinUsbHeader = Struct(
    "bcdVersion" / Int16ul,
    "bHeaderLength" / Byte,
    "bRequestType" / Byte,
    "dwIOLength" / Int32ul,
    "dwIOStatus" / Int32ul,
    "dwIsoFrameCount" / Int32ul,
    "qwIORequestId" / Int64ul,
    "dwLocationId" / Int32ul,
    "bSpeed" / Byte,
    "bDeviceAddress" / Byte,
    "bEndpointAddress" / Byte,
    "bEndpointType" / Byte,
)
HEADER = struct.Struct("<HBBIIIQIBBBB")  # 32 bytes, the fields every version has
ISO_FRAME = struct.Struct("<IIIQ")  # header length, frame length, status, frame number
ISO_FRAME_MIN = 20  # the smallest frame header: the four fields above

REQUEST_SUBMIT, REQUEST_COMPLETE = 0, 1
SPEED_NAMES = {0: "low", 1: "full", 2: "high", 3: "super", 4: "super+"}

# IOReturn values (IOKit's IOReturn.h and the USB family's iokit_usb_err codes)
IORETURN_TO_USBD = {
    0x00000000: U.USBD_STATUS_SUCCESS,
    0xE000404F: U.USBD_STATUS_STALL_PID,  # kIOUSBPipeStalled
    0xE0004051: U.USBD_STATUS_TIMEOUT,  # kIOUSBTransactionTimeout
    0xE00002D6: U.USBD_STATUS_TIMEOUT,  # kIOReturnTimeout
    0xE00002EB: U.USBD_STATUS_CANCELED,  # kIOReturnAborted
    0xE00002C0: U.USBD_STATUS_DEVICE_GONE,  # kIOReturnNoDevice
    0xE00002D7: U.USBD_STATUS_DEVICE_GONE,  # kIOReturnOffline
    0xE00002ED: U.USBD_STATUS_DEV_NOT_RESPONDING,  # kIOReturnNotResponding
    0xE00002E7: U.USBD_STATUS_DATA_UNDERRUN,  # kIOReturnUnderrun
    0xE00002E8: U.USBD_STATUS_DATA_OVERRUN,  # kIOReturnOverrun
}


class MalformedRecord(Exception):  # noqa: N818
    pass


def decode(packet: Packet) -> Event:
    """One macOS USB record as an :class:`Event`; raises MalformedRecord."""
    data = packet.data
    if len(data) < HEADER.size:
        raise MalformedRecord(f"macOS USB header needs {HEADER.size} bytes, record has "
                              f"{len(data)}")
    (_version, header_len, request, io_length, io_status, iso_frames, request_id, location,
     _speed, address, endpoint, endpoint_type) = HEADER.unpack_from(data)
    if header_len < HEADER.size or header_len > len(data):
        raise MalformedRecord(f"macOS USB header length {header_len} does not fit the "
                              f"{len(data)}-byte record")
    if request not in (REQUEST_SUBMIT, REQUEST_COMPLETE):
        raise MalformedRecord(f"unknown macOS USB request type {request}")
    if endpoint_type > 3:
        raise MalformedRecord(f"unknown macOS USB endpoint type {endpoint_type}")
    body = data[header_len:]
    submit = request == REQUEST_SUBMIT
    kind = SUBMIT if submit else COMPLETE
    event = Event(kind, packet.ts, request_id, bus=location >> 24, device=address,
                  endpoint=endpoint, transfer_type=endpoint_type, record_number=packet.number,
                  raw_status=io_status, length=io_length)
    direction_in = bool(endpoint & 0x80)
    if endpoint_type == ISOCHRONOUS:
        event.data = _iso_data(body, iso_frames, with_data=not submit)
        event.data_length = len(event.data)
    elif endpoint_type == CONTROL and submit:
        if len(body) < 8:
            raise MalformedRecord(f"control submission carries {len(body)} of the 8 setup "
                                  "bytes")
        event.setup = bytes(body[:8])
        direction_in = bool(body[0] & 0x80)
        if not direction_in:
            event.data = bytes(body[8:])
            event.data_length = io_length
    else:
        event.data = bytes(body)
        # data is expected at an IN completion, and at a bulk or interrupt OUT
        # completion (macOS records OUT data there); a shorter capture is truncation
        expects_data = not submit and (direction_in or endpoint_type != CONTROL)
        event.data_length = io_length if expects_data else len(body)
    if submit:
        event.urb_status = U.USBD_STATUS_PENDING
    else:
        event.urb_status = IORETURN_TO_USBD.get(io_status, U.USBD_STATUS_REQUEST_FAILED)
    return event


def _iso_data(body: bytes, frames: int, with_data: bool) -> bytes:
    """The frames' data, concatenated; walks at most as far as the bytes go."""
    out: list[bytes] = []
    offset = 0
    for _ in range(min(frames, len(body) // ISO_FRAME_MIN)):
        if offset + ISO_FRAME_MIN > len(body):
            break
        frame_header, frame_length, _status, _number = ISO_FRAME.unpack_from(body, offset)
        if frame_header < ISO_FRAME_MIN or offset + frame_header > len(body):
            break
        offset += frame_header
        if with_data:
            chunk = body[offset : offset + frame_length]
            out.append(chunk)
            offset += len(chunk)
        offset = (offset + 3) & ~3
    return b"".join(out)
