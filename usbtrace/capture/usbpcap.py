"""Windows USBPcap records: LINKTYPE_USBPCAP (249), and writing them back.

``USBPCAP_BUFFER_PACKET_HEADER`` (packed, little-endian, 27 bytes): header
length, IRP id, USBD status, URB function, info (bit 0: the record travels
PDO->FDO, i.e. it is a completion), bus, device, endpoint, transfer type,
data length.  Control transfers add one byte, the stage (setup, data,
status, complete); isochronous ones add start frame, packet count, error
count and 12 bytes per packet.  The header length field says where data
starts, so newer headers with more fields still read.

USBPcap writes a control transfer as a SETUP-stage record (the 8 setup bytes)
followed, for OUT data, by a DATA-stage record with the same IRP id; the
reader merges them into one submission.  The STATUS-stage record that follows
a returned DATA stage is dropped; one with no DATA stage before it (an OUT
transfer, or one that moved no data) is the transfer's completion.
``folded`` counts the records merged or dropped, so a session's record count
can be explained.  The
requested length of an IN transfer is not in the format: it stays unknown.

A request that moves no data (ABORT_PIPE, the pipe resets; transfer type IRP
INFO or UNKNOWN) is one IRP sent down and returned: its two records become one
submission and one completion of the same key, whatever endpoint each names
(the pipe's, or 0 once the pipe is gone) and even when both carry the same
direction bit — an IRP cannot be sent twice before it returns.
"""

from __future__ import annotations

import struct

from construct import Byte, Int16ul, Int32ul, Int64ul, Struct

from usbtrace.capture.pcap import Packet
from usbtrace.records import BULK, COMPLETE, CONTROL, INTERRUPT, ISOCHRONOUS, SUBMIT, Event
from usbtrace.usb.urb import (
    URB_FUNCTION_ABORT_PIPE,
    URB_FUNCTION_SYNC_CLEAR_STALL,
    URB_FUNCTION_SYNC_RESET_PIPE,
    URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL,
)

LINKTYPE_USBPCAP = 249

UsbpcapHeader = Struct(
    "headerLen" / Int16ul,
    "irpId" / Int64ul,
    "status" / Int32ul,
    "function" / Int16ul,
    "info" / Byte,
    "bus" / Int16ul,
    "device" / Int16ul,
    "endpoint" / Byte,
    "transfer" / Byte,
    "dataLength" / Int32ul,
)
HEADER = struct.Struct("<HQIHBHHBBI")  # 27 bytes

USBPCAP_INFO_PDO_TO_FDO = 0x01
TRANSFER_ISOCHRONOUS, TRANSFER_INTERRUPT, TRANSFER_CONTROL, TRANSFER_BULK = 0, 1, 2, 3
TRANSFER_IRP_INFO, TRANSFER_UNKNOWN = 0xFE, 0xFF
STAGE_SETUP, STAGE_DATA, STAGE_STATUS, STAGE_COMPLETE = 0, 1, 2, 3

TO_RECORD = {TRANSFER_ISOCHRONOUS: ISOCHRONOUS, TRANSFER_INTERRUPT: INTERRUPT,
             TRANSFER_CONTROL: CONTROL, TRANSFER_BULK: BULK}
FROM_RECORD = {v: k for k, v in TO_RECORD.items()}
PIPE_REQUESTS = frozenset({URB_FUNCTION_ABORT_PIPE, URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL,
                           URB_FUNCTION_SYNC_RESET_PIPE, URB_FUNCTION_SYNC_CLEAR_STALL})
PENDING_PIPE_REQUESTS = 256  # pipe requests sent down and not yet back, at most


class MalformedRecord(Exception):  # noqa: N818
    pass


class UsbpcapDecoder:
    """Stateful: holds a control SETUP record until its DATA stage (if any) arrives."""

    def __init__(self) -> None:
        self._setup: dict[int, Event] = {}
        # pipe requests sent down, by IRP id: the endpoint their return must pair on
        self._pipe_requests: dict[int, int] = {}
        self.folded = 0  # records merged into another (DATA stages) or dropped (STATUS)
        # control transfers whose DATA stage came back: their STATUS stage is folded
        self._answered: dict[int, bool] = {}

    def decode(self, packet: Packet) -> list[Event]:
        return self.decode_record(packet.number, packet.ts, packet.data)

    def decode_record(self, number: int, ts: float, data: bytes) -> list[Event]:
        """:meth:`decode` from a record's fields, for the import loop (no ``Packet``)."""
        if len(data) < HEADER.size:
            raise MalformedRecord(f"USBPcap header needs 27 bytes, record has {len(data)}")
        (header_len, irp_id, status, function, info, bus, device, endpoint, transfer,
         data_length) = HEADER.unpack_from(data)
        if header_len < HEADER.size or header_len > len(data):
            raise MalformedRecord(f"USBPcap header length {header_len} does not fit the record")
        if device > 127:
            raise MalformedRecord(f"USBPcap device address {device} is not a USB address "
                                  "(0-127)")
        payload = data[header_len : header_len + data_length]
        if transfer == TRANSFER_BULK and not self._setup and function not in PIPE_REQUESTS:
            return [self._bulk(number, ts, irp_id, status, function, info, bus, device,
                               endpoint, data_length, payload)]
        completion = bool(info & USBPCAP_INFO_PDO_TO_FDO)
        stage = data[27] if transfer == TRANSFER_CONTROL and header_len >= 28 else None
        if stage == STAGE_SETUP and not completion and len(payload) < 8:
            # checked before any state changes: the held SETUP stages stay held
            raise MalformedRecord(f"USBPcap SETUP stage carries {len(payload)} of the 8 setup "
                                  "bytes")
        held = self._setup.pop(irp_id, None)
        if held is not None and not completion and transfer == TRANSFER_CONTROL \
                and stage == STAGE_DATA:
            held.data = bytes(payload)
            held.data_length = len(payload)
            self.folded += 1
            return [held]
        # SETUP stages with no DATA stage: plain submissions (nothing held: no list built)
        out = self.flush() if self._setup else []
        if held is not None:
            out.append(held)
            if len(out) > 1:
                out.sort(key=lambda e: e.record_number or 0)
        if transfer == TRANSFER_CONTROL and stage == STAGE_STATUS:
            if not completion or self._answered.pop(irp_id, None) is not None:
                self.folded += 1
                return out  # after the DATA stage's return it adds nothing a log needs
            # no DATA stage came back (an OUT transfer, or no data): this is the return
        elif completion and transfer == TRANSFER_CONTROL:
            if len(self._answered) >= PENDING_PIPE_REQUESTS:
                del self._answered[next(iter(self._answered))]
            self._answered[irp_id] = True
        if function in PIPE_REQUESTS or transfer in (TRANSFER_IRP_INFO, TRANSFER_UNKNOWN):
            sent = self._pipe_requests.pop(irp_id, None)
            if sent is not None:  # the IRP is back: its completion, on the key it went with
                completion, endpoint = True, sent
            elif not completion:
                if len(self._pipe_requests) >= PENDING_PIPE_REQUESTS:
                    del self._pipe_requests[next(iter(self._pipe_requests))]
                self._pipe_requests[irp_id] = endpoint
        transfer_type = TO_RECORD.get(transfer, CONTROL)
        # the fields are worked out first and the event built positionally, once
        urb_status: int | None
        length: int | None
        body: bytes
        body_length: int | None
        if completion:
            urb_status = status
            # an OUT completion carries no data, and USBPcap has no "actual length"
            # field: how much went out is unknown, not zero
            length = data_length if endpoint & 0x80 or (
                transfer == TRANSFER_CONTROL and stage != STAGE_STATUS) else None
            body = bytes(payload)
            body_length = len(payload)
        else:
            urb_status = None
            if transfer == TRANSFER_CONTROL and stage == STAGE_SETUP:
                body = bytes(payload[8:])
                # some versions put OUT data right after the setup
                event = Event(SUBMIT, ts, irp_id, "capture", None, None, None, None,
                              None, None, None, function, bus, device, endpoint,
                              transfer_type, None, struct.unpack_from("<H", payload, 6)[0],
                              bytes(payload[:8]), body, len(body) if body else None, None,
                              None, number, status)
                self._setup[irp_id] = event
                return out
            if not endpoint & 0x80:
                body = bytes(payload)
                body_length = len(payload)
                length = data_length
            else:
                body, body_length, length = b"", None, None
        if len(payload) < data_length:
            body_length = data_length  # the capture was cut by the snapshot length
        out.append(Event(COMPLETE if completion else SUBMIT, ts, irp_id, "capture", None,
                         None, None, None, None, None, None, function, bus, device, endpoint,
                         transfer_type, urb_status, length, None, body, body_length, None, None,
                         number, status))
        return out

    @staticmethod
    def _bulk(number: int, ts: float, irp_id: int, status: int, function: int, info: int,
              bus: int, device: int, endpoint: int, data_length: int, payload: bytes) -> Event:
        """``decode_record`` for most records: a bulk transfer while no control SETUP stage
        is held (nothing to fold, no stage, no pipe request), the same event by the same
        rules, without the checks that only control transfers and pipe requests need."""
        captured = len(payload)
        if info & USBPCAP_INFO_PDO_TO_FDO:
            # an OUT completion carries no data, and its length is unknown (see below)
            return Event(COMPLETE, ts, irp_id, "capture", None, None, None, None, None, None,
                         None, function, bus, device, endpoint, BULK, status,
                         data_length if endpoint & 0x80 else None, None, bytes(payload),
                         data_length if captured < data_length else captured, None, None,
                         number, status)
        if endpoint & 0x80:
            body, body_length, length = b"", None, None
        else:
            body, body_length, length = bytes(payload), captured, data_length
        if captured < data_length:
            body_length = data_length  # the capture was cut by the snapshot length
        return Event(SUBMIT, ts, irp_id, "capture", None, None, None, None, None, None,
                     None, function, bus, device, endpoint, BULK, None, length, None, body,
                     body_length, None, None, number, status)

    def flush(self) -> list[Event]:
        held = list(self._setup.values())
        self._setup.clear()
        return held


def encode(event: Event, stage: int | None = None, data: bytes | None = None) -> bytes:
    """One USBPcap record for ``event`` (used by pcapng export)."""
    payload = event.data if data is None else data
    transfer = FROM_RECORD.get(event.transfer_type if event.transfer_type is not None else 0,
                               TRANSFER_UNKNOWN)
    info = USBPCAP_INFO_PDO_TO_FDO if event.kind == COMPLETE else 0
    status = event.urb_status if event.urb_status is not None and event.kind == COMPLETE else 0
    function = event.urb_function if event.urb_function is not None else 0
    endpoint = event.endpoint if event.endpoint is not None else 0
    extra = bytes([stage]) if transfer == TRANSFER_CONTROL and stage is not None else b""
    header_len = HEADER.size + len(extra)
    return HEADER.pack(header_len, event.irp_id & 0xFFFFFFFFFFFFFFFF, status & 0xFFFFFFFF,
                       function, info, event.bus or 0, event.device or 0, endpoint, transfer,
                       len(payload)) + extra + payload
