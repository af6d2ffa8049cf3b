"""macOS USB records (linktype 266): fields, data placement, and records cut short."""

from __future__ import annotations

import io
import struct

import pytest

from usbtrace.capture import darwin
from usbtrace.capture.pcap import Packet, PcapngWriter
from usbtrace.capture.reader import CaptureStats, events
from usbtrace.decode.pairing import Pairer
from usbtrace.records import BULK, COMPLETE, CONTROL, INTERRUPT, ISOCHRONOUS, SUBMIT
from usbtrace.usb import urb as U

LOCATION = 0x01100000  # bus 1, port path 1.0


def header(request: int, io_length: int, endpoint: int, endpoint_type: int,
           status: int = 0, frames: int = 0, request_id: int = 0x852B, address: int = 4,
           header_length: int = 40, version: int = 0x0101) -> bytes:
    """A header as macOS writes it: the 32 common bytes, then version 1.1's eight."""
    common = darwin.HEADER.pack(version, header_length, request, io_length, status, frames,
                                request_id, LOCATION, 4, address, endpoint, endpoint_type)
    return common + bytes(max(0, min(header_length, 40) - len(common)))


def packet(data: bytes, number: int = 1) -> Packet:
    return Packet(number, 100.0 + number, darwin.LINKTYPE_USB_DARWIN, data, len(data))


def test_header_layout_agrees_with_the_struct() -> None:
    raw = header(0, 18, 0x80, CONTROL)[:32]
    fields = darwin.DarwinUsbHeader.parse(raw)
    assert (fields.bcdVersion, fields.bHeaderLength, fields.dwIOLength, fields.qwIORequestId,
            fields.dwLocationId, fields.bDeviceAddress, fields.bEndpointAddress) == \
        (0x0101, 40, 18, 0x852B, LOCATION, 4, 0x80)
    assert darwin.DarwinUsbHeader.build(fields) == raw


def test_control_in_submission_and_completion() -> None:
    setup = bytes.fromhex("8006000100001200")
    submit = darwin.decode(packet(header(0, 18, 0x80, CONTROL) + setup))
    assert (submit.kind, submit.bus, submit.device, submit.endpoint, submit.setup,
            submit.length, submit.data, submit.urb_status) == \
        (SUBMIT, 1, 4, 0x80, setup, 18, b"", U.USBD_STATUS_PENDING)
    descriptor = bytes(range(18))
    complete = darwin.decode(packet(header(1, 18, 0x80, CONTROL) + descriptor, 2))
    assert (complete.kind, complete.data, complete.length, complete.urb_status,
            complete.record_number, complete.irp_id) == \
        (COMPLETE, descriptor, 18, U.USBD_STATUS_SUCCESS, 2, 0x852B)


def test_control_out_data_follows_the_setup_bytes() -> None:
    setup = bytes.fromhex("2109000200000400")
    event = darwin.decode(packet(header(0, 4, 0x00, CONTROL) + setup + b"\x01\x02\x03\x04"))
    assert (event.setup, event.data, event.data_length) == (setup, b"\x01\x02\x03\x04", 4)


def test_bulk_out_data_rides_on_the_completion_and_pairs() -> None:
    iu = bytes(range(32))
    submit = darwin.decode(packet(header(0, 32, 0x04, BULK, request_id=7), 1))
    complete = darwin.decode(packet(header(1, 32, 0x04, BULK, request_id=7) + iu, 2))
    assert submit.data == b"" and complete.data == iu
    pairer = Pairer()
    assert pairer.feed(submit) == []  # no bytes on the submission: nothing to hand on yet
    (x, sealed), = pairer.feed(complete)
    assert sealed and (x.data, x.direction_in, x.requested_length, x.truncated) == \
        (iu, False, 32, False)


def test_bulk_in_cut_short_by_the_snapshot_is_truncation() -> None:
    event = darwin.decode(packet(header(1, 512, 0x81, BULK) + bytes(100)))
    assert (len(event.data), event.data_length, event.length) == (100, 512, 512)
    pairer = Pairer()
    pairer.feed(darwin.decode(packet(header(0, 512, 0x81, BULK))))
    (x, sealed), = pairer.feed(event)
    assert sealed and x.truncated


def test_statuses_translate_and_keep_the_raw_ioreturn() -> None:
    stalled = darwin.decode(packet(header(1, 0, 0x81, BULK, status=0xE000404F)))
    aborted = darwin.decode(packet(header(1, 0, 0x81, BULK, status=0xE00002EB)))
    unknown = darwin.decode(packet(header(1, 0, 0x81, INTERRUPT, status=0xE00002BC)))
    assert stalled.urb_status == U.USBD_STATUS_STALL_PID and stalled.raw_status == 0xE000404F
    assert aborted.urb_status == U.USBD_STATUS_CANCELED
    assert unknown.urb_status == U.USBD_STATUS_REQUEST_FAILED


def test_a_version_1_0_header_of_32_bytes_reads() -> None:
    event = darwin.decode(packet(header(1, 4, 0x81, BULK, header_length=32, version=0x0100)
                                 + b"abcd"))
    assert event.data == b"abcd"


def iso_frame(length: int, data: bytes = b"") -> bytes:
    body = darwin.ISO_FRAME.pack(28, length, 0, 1234) + bytes(8) + data
    return body + bytes(-len(body) % 4)


def test_isochronous_frames_give_their_data() -> None:
    body = iso_frame(3, b"abc") + iso_frame(2, b"de")
    event = darwin.decode(packet(header(1, 5, 0x81, ISOCHRONOUS, frames=2) + body))
    assert event.data == b"abcde" and event.transfer_type == ISOCHRONOUS


@pytest.mark.parametrize("record, reason", [
    (b"", "header needs 32"),
    (header(1, 0, 0x81, BULK)[:31], "header needs 32"),
    (header(1, 0, 0x81, BULK, header_length=200), "does not fit"),
    (header(1, 0, 0x81, BULK, header_length=12), "does not fit"),
    (header(2, 0, 0x81, BULK), "request type"),
    (header(1, 0, 0x81, 9), "endpoint type"),
    (header(0, 18, 0x80, CONTROL) + b"\x80\x06", "setup"),
], ids=["empty", "31 bytes", "header past the record", "header under 32", "request 2",
        "endpoint type 9", "setup cut short"])
def test_records_cut_short_or_impossible_are_malformed(record: bytes, reason: str) -> None:
    with pytest.raises(darwin.MalformedRecord, match=reason):
        darwin.decode(packet(record))


def test_length_fields_never_drive_work_past_the_bytes() -> None:
    # four billion frames claimed, one frame's bytes present; a frame claiming 4 GiB of data
    huge = darwin.decode(packet(header(1, 0, 0x81, ISOCHRONOUS, frames=0xFFFFFFFF)
                                + iso_frame(0xFFFFFFF0)))
    assert huge.data == b""
    claims = darwin.decode(packet(header(1, 0xFFFFFFFF, 0x81, BULK) + b"xy"))
    assert claims.data == b"xy" and claims.data_length == 0xFFFFFFFF


def test_a_capture_file_counts_bad_records_and_imports_the_rest() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out, darwin.LINKTYPE_USB_DARWIN)
    good = header(0, 18, 0x80, CONTROL) + bytes.fromhex("8006000100001200")
    writer.write(1_000_000_000, good)
    writer.write(1_000_001_000, header(1, 0, 0x81, BULK)[:20])  # cut short
    writer.write(1_000_002_000, header(1, 18, 0x80, CONTROL) + bytes(18))
    out.seek(0)
    stats = CaptureStats()
    got = list(events(out, stats))
    assert [(e.kind, e.record_number) for e in got] == [(SUBMIT, 1), (COMPLETE, 3)]
    assert got[1].ts == pytest.approx(2e-6)
    assert [n for n, _ in stats.malformed] == [2] and stats.linktype == 266
    assert struct.unpack_from("<H", good, 0)[0] == 0x0101


def test_control_out_completion_without_data_is_not_truncation() -> None:
    setup = bytes.fromhex("2109000200000400")
    pairer = Pairer()
    pairer.feed(darwin.decode(packet(header(0, 4, 0x00, CONTROL) + setup + b"\x01\x02\x03\x04")))
    (x, sealed), = pairer.feed(darwin.decode(packet(header(1, 4, 0x00, CONTROL), 2)))
    assert sealed and (x.data, x.truncated, x.actual_length) == (b"\x01\x02\x03\x04",
                                                                         False, 4)


def test_random_records_decode_or_are_malformed_never_anything_else() -> None:
    import random

    rng = random.Random(266)
    decoded = 0
    for _ in range(3000):
        record = header(rng.choice([0, 1, 2]), rng.randrange(1 << 32), rng.randrange(256),
                        rng.choice([0, 1, 2, 3, 4]), frames=rng.choice([0, 1, 7, 1 << 31]),
                        header_length=rng.choice([0, 31, 32, 40, 64, 255]))
        record = record[: rng.randrange(len(record) + 1)] + rng.randbytes(rng.randrange(80))
        try:
            darwin.decode(packet(record))
            decoded += 1
        except darwin.MalformedRecord:
            pass
    assert decoded > 0
