"""Linux usbmon records: LINKTYPE_USB_LINUX (189) and LINKTYPE_USB_LINUX_MMAPPED (220).

The header is ``struct usbmon_packet`` (Documentation/usb/usbmon.rst), 48 bytes,
or 64 with the mmapped extension (interval, start frame, transfer flags, number
of isochronous descriptors; the descriptors, 16 bytes each, precede the data).
It is in the capturing host's byte order, which is the file's.

What the reader makes of it:

* event type 'S' is a submission, 'C' a completion, 'E' a submission error
  (a completion that never reached the bus);
* transfer types are renumbered to USB's (usbmon: 0 iso, 1 interrupt,
  2 control, 3 bulk);
* status is a negative errno; it is kept raw and translated to the USBD
  status a Windows log would carry (-EPIPE is a stall, -ENOENT and
  -ECONNRESET cancellation, -ESHUTDOWN and -ENODEV a device that is gone);
* ``length`` is the URB's length (requested at submission, actual at
  completion); only the captured bytes are data.  Data is expected only at
  OUT submissions and IN completions, so ``data_length`` is set there, and a
  shorter capture is truncation; elsewhere a large ``length`` with no data is
  the format, not a loss.
"""

from __future__ import annotations

import struct

from usbtrace.capture.pcap import Packet
from usbtrace.records import BULK, COMPLETE, CONTROL, INTERRUPT, ISOCHRONOUS, SUBMIT, Event
from usbtrace.usb import urb as U

LINKTYPE_USB_LINUX = 189
LINKTYPE_USB_LINUX_MMAPPED = 220

HEADER_LE = struct.Struct("<QBBBBHBBqiiII8s")
HEADER_BE = struct.Struct(">QBBBBHBBqiiII8s")
MMAPPED_LE = struct.Struct("<iiII")
MMAPPED_BE = struct.Struct(">iiII")
UNPACK_HEADER = {False: HEADER_LE.unpack_from, True: HEADER_BE.unpack_from}  # by big_endian

XFER_TYPES = {0: ISOCHRONOUS, 1: INTERRUPT, 2: CONTROL, 3: BULK}

# The kernel writes 0 for "data present"; QEMU's usbmon-format recorder writes '='
# (the text interface's tag), and its len_cap counts the header too: the data is
# then what the record holds.
DATA_PRESENT = (0, 0x3D)

EINPROGRESS = -115
ERRNO_TO_USBD = {
    0: U.USBD_STATUS_SUCCESS,
    EINPROGRESS: U.USBD_STATUS_PENDING,
    -32: U.USBD_STATUS_STALL_PID,  # EPIPE
    -2: U.USBD_STATUS_CANCELED,  # ENOENT: unlinked synchronously
    -104: U.USBD_STATUS_CANCELED,  # ECONNRESET: unlinked asynchronously
    -108: U.USBD_STATUS_DEVICE_GONE,  # ESHUTDOWN
    -19: U.USBD_STATUS_DEVICE_GONE,  # ENODEV
    -71: U.USBD_STATUS_DEV_NOT_RESPONDING,  # EPROTO
    -84: U.USBD_STATUS_CRC,  # EILSEQ
    -62: U.USBD_STATUS_TIMEOUT,  # ETIME
    -110: U.USBD_STATUS_TIMEOUT,  # ETIMEDOUT
    -75: U.USBD_STATUS_BABBLE_DETECTED,  # EOVERFLOW
    -121: U.USBD_STATUS_ERROR_SHORT_TRANSFER,  # EREMOTEIO
    -63: U.USBD_STATUS_BUFFER_OVERRUN,  # ENOSR
    -70: U.USBD_STATUS_BUFFER_UNDERRUN,  # ECOMM
}


class MalformedRecord(Exception):  # noqa: N818
    pass


def decode(packet: Packet) -> Event:
    """One usbmon record as an :class:`Event`; raises MalformedRecord."""
    return decode_record(packet.number, packet.ts, packet.linktype, packet.data,
                         packet.big_endian)


def decode_record(number: int, ts: float, linktype: int, data: bytes,
                  big_endian: bool) -> Event:
    """:func:`decode` from a record's fields, for the import loop."""
    mmapped = linktype == LINKTYPE_USB_LINUX_MMAPPED
    size = 64 if mmapped else 48
    if len(data) < size:
        raise MalformedRecord(f"usbmon header needs {size} bytes, record has {len(data)}")
    (urb_id, kind, xfer, epnum, devnum, busnum, flag_setup, flag_data, _sec, _usec,
     status, length, len_cap, setup) = UNPACK_HEADER[big_endian](data)
    transfer_type = XFER_TYPES.get(xfer)
    if transfer_type is None:
        raise MalformedRecord(f"unknown usbmon transfer type {xfer}")
    offset = size
    if mmapped and transfer_type == ISOCHRONOUS:
        ndesc = (MMAPPED_BE if big_endian else MMAPPED_LE).unpack_from(data, 48)[3]
        offset += 16 * ndesc
    payload = data[offset : offset + len_cap] if flag_data in DATA_PRESENT and len_cap else b""
    direction_in = epnum & 0x80
    if kind == 0x53:  # 'S'
        if transfer_type == CONTROL and flag_setup == 0:
            direction_in = setup[0] & 0x80
        else:
            setup = None
        expects_data = not direction_in and transfer_type != ISOCHRONOUS
        return Event(SUBMIT, ts, urb_id, "capture", None, None, None, None, None, None,
                     None, None, busnum, devnum, epnum, transfer_type, U.USBD_STATUS_PENDING,
                     length, setup, payload, length if expects_data else len(payload), None,
                     None, number, status)
    if kind != 0x43 and kind != 0x45:  # 'C', 'E'
        raise MalformedRecord(f"unknown usbmon event type 0x{kind:02x}")
    expects_data = direction_in and transfer_type != ISOCHRONOUS
    return Event(COMPLETE, ts, urb_id, "capture", None, None, None, None, None, None,
                 "submission error" if kind == 0x45 else None, None, busnum, devnum, epnum,
                 transfer_type, ERRNO_TO_USBD.get(status, U.USBD_STATUS_REQUEST_FAILED),
                 length, None, payload, length if expects_data else len(payload), None, None,
                 number, status)
