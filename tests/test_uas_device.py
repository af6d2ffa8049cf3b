"""The simulated stick's UAS interface, driven IU by IU (T10 UAS r04)."""

from __future__ import annotations

import pytest

from usbtrace.decode import uas as iu
from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.devices.uas import (
    NAK,
    QUERY_TASK,
    UAS_COMMAND,
    UAS_DATA_IN,
    UAS_DATA_OUT,
    UAS_STATUS,
)
from usbtrace.storage import scsi
from usbtrace.usb import setup as std
from usbtrace.usb.urb import USBD_STATUS_STALL_PID, USBD_STATUS_SUCCESS

READ_10 = bytes([0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0])  # LBA 4, 2 blocks
WRITE_10 = bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0])  # LBA 8, 1 block


def uas_stick(streams: bool = False, speed: str = "super") -> SimulatedStick:
    image = DiskImage.in_memory(1 << 20)
    image.write(4 * 512, bytes(range(256)) * 4)
    stick = SimulatedStick(image, speed=speed, protocol="uas", streams=streams)
    stick.control(std.build_setup(0x00, std.SET_CONFIGURATION, 1, 0, 0), bytearray())
    result = stick.control(std.build_setup(0x01, std.SET_INTERFACE, 1, 0, 0), bytearray())
    assert result.status == USBD_STATUS_SUCCESS
    return stick


def send(stick: SimulatedStick, data: bytes, stream: int = 0) -> int:
    return stick.stream_out(UAS_COMMAND, stream, bytearray(data)).status


def status(stick: SimulatedStick, stream: int = 0) -> bytes | None:
    buffer = bytearray(128)
    result = stick.stream_in(UAS_STATUS, stream, buffer)
    if result.status == NAK:
        return None
    assert result.status == USBD_STATUS_SUCCESS
    return bytes(buffer[: result.actual])


def data_in(stick: SimulatedStick, length: int, stream: int = 0) -> bytes | None:
    buffer = bytearray(length)
    result = stick.stream_in(UAS_DATA_IN, stream, buffer)
    return None if result.status == NAK else bytes(buffer[: result.actual])


def test_configuration_has_bulk_only_then_uas_with_pipe_usage() -> None:
    """Alternate setting 0 Bulk-Only, 1 UAS with a Pipe Usage descriptor after each
    endpoint (and its companion): command 1, status 2, data-in 3, data-out 4."""
    stick = uas_stick(streams=True)
    settings = iu.pipe_usage(stick.configuration_descriptor())
    assert settings[(0, 0)] == (0x50, {})
    protocol, usage = settings[(0, 1)]
    assert protocol == 0x62
    assert usage == {1: UAS_COMMAND, 2: UAS_STATUS, 3: UAS_DATA_IN, 4: UAS_DATA_OUT}
    assert iu.UasPipes.from_usage(usage) is not None


def test_set_interface_to_a_missing_setting_stalls() -> None:
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))  # Bulk-Only only
    result = stick.control(std.build_setup(0x01, std.SET_INTERFACE, 1, 0, 0), bytearray())
    assert result.status == USBD_STATUS_STALL_PID


def test_read_without_streams_read_ready_data_then_sense() -> None:
    """No streams: Read Ready names the tag, then the data, then a GOOD Sense IU."""
    stick = uas_stick()
    assert status(stick) is None  # nothing yet: the status transfer is NAKed
    assert send(stick, iu.build_command_iu(7, READ_10)) == USBD_STATUS_SUCCESS
    assert status(stick) == iu.build_ready_iu(iu.IU_READ_READY, 7)
    assert data_in(stick, 1024) == (bytes(range(256)) * 4)
    assert status(stick) == iu.build_sense_iu(7, 0x00)
    assert status(stick) is None


def test_write_without_streams_write_ready_then_sense() -> None:
    stick = uas_stick()
    send(stick, iu.build_command_iu(3, WRITE_10))
    assert status(stick) == iu.build_ready_iu(iu.IU_WRITE_READY, 3)
    assert stick.stream_out(UAS_DATA_OUT, 0, bytearray(b"\xAB" * 512)).status == \
        USBD_STATUS_SUCCESS
    assert status(stick) == iu.build_sense_iu(3, 0x00)
    assert stick.image.read(8 * 512, 512) == b"\xAB" * 512


def test_without_streams_one_data_phase_at_a_time() -> None:
    """Two reads in flight share the FIFO data pipe: the second's Read Ready waits until
    the first's data moved, and comes after the first's Sense IU."""
    stick = uas_stick()
    send(stick, iu.build_command_iu(1, READ_10))
    send(stick, iu.build_command_iu(2, READ_10))
    assert status(stick) == iu.build_ready_iu(iu.IU_READ_READY, 1)
    assert status(stick) is None  # tag 2 waits for the pipe
    assert data_in(stick, 1024) is not None
    assert status(stick) == iu.build_sense_iu(1, 0x00)
    assert status(stick) == iu.build_ready_iu(iu.IU_READ_READY, 2)


def test_with_streams_the_stream_is_the_tag() -> None:
    """Streams: no Ready IUs; each command's data and Sense IU on the stream of its tag,
    in whatever order the host takes them."""
    stick = uas_stick(streams=True)
    send(stick, iu.build_command_iu(1, READ_10))
    send(stick, iu.build_command_iu(2, bytes([0x28, 0, 0, 0, 0, 5, 0, 0, 1, 0])))
    assert status(stick, 1) is None and status(stick, 2) is None  # data first
    assert data_in(stick, 512, 2) == (bytes(range(256)) * 4)[512:]  # LBA 5
    assert data_in(stick, 512, 3) is None  # no command has tag 3
    assert status(stick, 1) is None
    assert status(stick, 2) == iu.build_sense_iu(2, 0x00)
    assert data_in(stick, 1024, 1) == bytes(range(256)) * 4
    assert status(stick, 1) == iu.build_sense_iu(1, 0x00)


def test_media_error_is_check_condition_in_the_sense_iu() -> None:
    stick = uas_stick()
    stick.targets[0].faults.bad_lbas.add(5)
    send(stick, iu.build_command_iu(9, READ_10))
    sense = status(stick)
    assert sense is not None and sense[:4] == bytes([iu.IU_SENSE, 0, 0, 9])
    head = iu.SenseIUHeader.parse(sense[:iu.SENSE_IU_HEADER])
    assert head.STATUS == 0x02 and head.LENGTH == 18
    parsed = scsi.parse_sense(sense[iu.SENSE_IU_HEADER:])
    assert parsed is not None and (parsed.key, parsed.asc) == (scsi.MEDIUM_ERROR, 0x11)
    assert data_in(stick, 1024) is None  # no data phase, no Read Ready came


def test_invalid_iu_gets_a_response_iu() -> None:
    stick = uas_stick()
    send(stick, bytes([0x42, 0, 0, 5]) + bytes(28))  # no such IU ID
    assert status(stick) == iu.build_response_iu(5, 0x02)  # INVALID INFORMATION UNIT
    send(stick, iu.build_command_iu(6, READ_10)[:20])  # a Command IU cut short
    assert status(stick) == iu.build_response_iu(6, 0x02)


def test_overlapped_tag_aborts_the_task_and_answers_overlapped() -> None:
    """SAM-5 §5.10: a second command under a tag still in use: the first is aborted (its
    Read Ready never comes), the second refused with OVERLAPPED TAG ATTEMPTED."""
    stick = uas_stick(streams=True)
    send(stick, iu.build_command_iu(4, READ_10))
    send(stick, iu.build_command_iu(4, READ_10))
    assert status(stick, 4) == iu.build_response_iu(4, 0x0A)
    assert data_in(stick, 1024, 4) is None
    assert stick.uas is not None and 4 not in stick.uas.tasks


def test_incorrect_lun() -> None:
    stick = uas_stick()
    send(stick, iu.build_command_iu(2, READ_10, lun=3))
    assert status(stick) == iu.build_response_iu(2, 0x09)


@pytest.mark.parametrize("streams", [False, True])
def test_abort_task_ends_the_task_and_its_ius(streams: bool) -> None:
    stick = uas_stick(streams=streams)
    send(stick, iu.build_command_iu(1, READ_10))
    send(stick, iu.build_command_iu(2, READ_10))
    send(stick, iu.build_task_management_iu(9, iu.ABORT_TASK, managed_tag=1))
    if streams:
        assert status(stick, 9) == iu.build_response_iu(9, 0x00)  # FUNCTION COMPLETE
        assert data_in(stick, 1024, 1) is None
        assert data_in(stick, 1024, 2) is not None
    else:  # tag 1's Read Ready went with it; tag 2 gets the pipe
        assert status(stick) == iu.build_ready_iu(iu.IU_READ_READY, 2)
        assert status(stick) == iu.build_response_iu(9, 0x00)


def test_query_task_and_logical_unit_reset() -> None:
    stick = uas_stick(streams=True)
    send(stick, iu.build_command_iu(1, READ_10))
    send(stick, iu.build_task_management_iu(10, QUERY_TASK, managed_tag=1))
    assert status(stick, 10) == iu.build_response_iu(10, 0x08)  # FUNCTION SUCCEEDED
    send(stick, iu.build_task_management_iu(11, QUERY_TASK, managed_tag=2))
    assert status(stick, 11) == iu.build_response_iu(11, 0x00)  # no such task
    send(stick, iu.build_task_management_iu(12, iu.LOGICAL_UNIT_RESET))
    assert status(stick, 12) == iu.build_response_iu(12, 0x00)
    send(stick, iu.build_task_management_iu(13, QUERY_TASK, managed_tag=1))
    assert status(stick, 13) == iu.build_response_iu(13, 0x00)  # the reset ended it
    send(stick, iu.build_task_management_iu(14, 0x40))  # CLEAR ACA: not supported here
    assert status(stick, 14) == iu.build_response_iu(14, 0x04)


def test_device_side_matches_the_decoder() -> None:
    """What the device sends, the capture decoder reads back: tag, status, sense."""
    from usbtrace.decode.pairing import Exchange
    from usbtrace.records import BULK, COMPLETE, SUBMIT, Event

    stick = uas_stick()
    stick.targets[0].faults.bad_lbas.add(4)
    decoder = iu.UasDecoder()
    pipes = iu.UasPipes(UAS_COMMAND, UAS_STATUS, UAS_DATA_IN, UAS_DATA_OUT)
    seq = 0

    def feed(endpoint: int, data: bytes) -> list:  # type: ignore[type-arg]
        nonlocal seq
        seq += 1
        inbound = bool(endpoint & 0x80)
        sub = Event(SUBMIT, seq, seq, endpoint=endpoint, transfer_type=BULK, bus=1, device=1,
                    length=len(data), data=b"" if inbound else data)
        done = Event(COMPLETE, seq, seq, endpoint=endpoint, transfer_type=BULK, bus=1,
                     device=1, length=len(data), data=data if inbound else b"", urb_status=0)
        return decoder.feed(Exchange(seq, seq, "capture", sub, done).seal(), pipes)

    command = iu.build_command_iu(3, READ_10)
    send(stick, command)
    feed(UAS_COMMAND, command)
    sense = status(stick)
    assert sense is not None
    [cmd] = feed(UAS_STATUS, sense)
    assert (cmd.tag, cmd.status, cmd.sense.key_name if cmd.sense else None) == \
        (3, "check_condition", "medium_error")
