"""The simulated stick's Bulk-Only Transport: validity, meaning, and the thirteen cases."""

from __future__ import annotations

import pytest

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import BULK_IN, BULK_OUT, SimulatedStick
from usbtrace.storage import bot
from usbtrace.usb import setup as std
from usbtrace.usb.urb import USBD_STATUS_STALL_PID, USBD_STATUS_SUCCESS

TUR = bytes(6)
READ_1 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])  # READ(10) LBA 0, 1 block
WRITE_1 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
INQUIRY_36 = bytes([0x12, 0, 0, 0, 36, 0])


@pytest.fixture
def stick() -> SimulatedStick:
    image = DiskImage.in_memory(1 << 20)
    image.view[:512] = bytes(range(256)) * 2
    return SimulatedStick(image)


def send_cbw(stick: SimulatedStick, cdb: bytes, length: int, data_in: bool, tag: int = 7,
             lun: int = 0) -> int:
    return stick.bulk_out(BULK_OUT, bytearray(bot.build_cbw(tag, length, data_in, lun, cdb))).status


def read_csw(stick: SimulatedStick) -> bot.Csw | None:
    buf = bytearray(13)
    r = stick.bulk_in(BULK_IN, buf)
    return bot.parse_csw(buf) if r.status == USBD_STATUS_SUCCESS else None


def clear(stick: SimulatedStick, endpoint: int) -> None:
    stick.control(std.build_setup(0x02, std.CLEAR_FEATURE, 0, endpoint, 0), bytearray())


def test_case_1_no_data_expected_none_given(stick: SimulatedStick) -> None:
    send_cbw(stick, TUR, 0, False)
    assert read_csw(stick) == bot.Csw(7, 0, 0)
    assert stick.bot.history[-1] == "case1"


def test_case_2_host_expects_nothing_device_would_send(stick: SimulatedStick) -> None:
    send_cbw(stick, READ_1, 0, False)
    assert read_csw(stick) == bot.Csw(7, 0, bot.CSW_STATUS_PHASE_ERROR)


def test_case_4_host_expects_data_device_has_none_stalls_in(stick: SimulatedStick) -> None:
    send_cbw(stick, TUR, 512, True)
    assert stick.bulk_in(BULK_IN, bytearray(512)).status == USBD_STATUS_STALL_PID
    assert read_csw(stick) is None  # still halted
    clear(stick, BULK_IN)
    assert read_csw(stick) == bot.Csw(7, 512, 0)


def test_case_5_short_data_reports_residue(stick: SimulatedStick) -> None:
    send_cbw(stick, INQUIRY_36, 96, True)
    buf = bytearray(96)
    r = stick.bulk_in(BULK_IN, buf)
    assert r.actual == 36 and buf[8:16] == b"USBTRACE"
    assert read_csw(stick) == bot.Csw(7, 60, 0)


def test_case_6_exact_data(stick: SimulatedStick) -> None:
    send_cbw(stick, READ_1, 512, True)
    buf = bytearray(512)
    assert stick.bulk_in(BULK_IN, buf).actual == 512
    assert buf == bytes(range(256)) * 2
    assert read_csw(stick) == bot.Csw(7, 0, 0)


def test_case_7_host_expects_less_than_device_has(stick: SimulatedStick) -> None:
    send_cbw(stick, READ_1, 100, True)
    assert stick.bulk_in(BULK_IN, bytearray(100)).actual == 100
    assert read_csw(stick).status == bot.CSW_STATUS_PHASE_ERROR  # type: ignore[union-attr]


def test_case_8_host_reads_device_wants_to_receive(stick: SimulatedStick) -> None:
    send_cbw(stick, WRITE_1, 512, True)
    assert stick.bulk_in(BULK_IN, bytearray(512)).status == USBD_STATUS_STALL_PID
    clear(stick, BULK_IN)
    assert read_csw(stick).status == bot.CSW_STATUS_PHASE_ERROR  # type: ignore[union-attr]


def test_case_9_host_sends_device_expects_nothing_stalls_out(stick: SimulatedStick) -> None:
    send_cbw(stick, TUR, 512, False)
    assert stick.bulk_out(BULK_OUT, bytearray(512)).status == USBD_STATUS_STALL_PID
    clear(stick, BULK_OUT)
    assert read_csw(stick) == bot.Csw(7, 512, 0)


def test_case_12_exact_write_lands_on_the_medium(stick: SimulatedStick) -> None:
    send_cbw(stick, WRITE_1, 512, False)
    assert stick.bulk_out(BULK_OUT, bytearray(b"\xAB" * 512)).status == USBD_STATUS_SUCCESS
    assert read_csw(stick) == bot.Csw(7, 0, 0)
    assert bytes(stick.image.view[:512]) == b"\xAB" * 512


def test_case_13_host_sends_less_than_device_expects(stick: SimulatedStick) -> None:
    send_cbw(stick, WRITE_1, 100, False)
    stick.bulk_out(BULK_OUT, bytearray(100))
    assert read_csw(stick).status == bot.CSW_STATUS_PHASE_ERROR  # type: ignore[union-attr]


def test_invalid_cbw_stalls_both_pipes_until_reset_recovery(stick: SimulatedStick) -> None:
    stick.bulk_out(BULK_OUT, bytearray(b"USBX" + bytes(27)))
    assert stick.bot.state == "reset_needed"
    clear(stick, BULK_IN)
    assert stick.bulk_in(BULK_IN, bytearray(13)).status == USBD_STATUS_STALL_PID
    reset = std.build_setup(0x21, std.BULK_ONLY_MASS_STORAGE_RESET, 0, 0, 0)
    assert stick.control(reset, bytearray()).status == USBD_STATUS_SUCCESS
    clear(stick, BULK_IN)
    clear(stick, BULK_OUT)
    send_cbw(stick, TUR, 0, False)
    assert read_csw(stick) == bot.Csw(7, 0, 0)


def test_cbw_with_wrong_length_is_not_valid(stick: SimulatedStick) -> None:
    cbw = bot.build_cbw(1, 0, False, 0, TUR)
    stick.bulk_out(BULK_OUT, bytearray(cbw + b"\0"))
    assert stick.bot.history[-1] == "invalid_cbw"


def test_not_meaningful_cbw_fails_the_command(stick: SimulatedStick) -> None:
    send_cbw(stick, TUR, 0, False, lun=3)  # a LUN the stick does not have
    assert read_csw(stick) == bot.Csw(7, 0, bot.CSW_STATUS_FAILED)
    assert stick.bot.history[-2] == "not_meaningful"


def test_get_max_lun(stick: SimulatedStick) -> None:
    buf = bytearray(1)
    r = stick.control(std.build_setup(0xA1, std.GET_MAX_LUN, 0, 0, 1), buf)
    assert r.status == USBD_STATUS_SUCCESS and buf == b"\0"


def test_unknown_standard_request_stalls(stick: SimulatedStick) -> None:
    r = stick.control(std.build_setup(0x80, 0x77, 0, 0, 2), bytearray(2))
    assert r.status == USBD_STATUS_STALL_PID
