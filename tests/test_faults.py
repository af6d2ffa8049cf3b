"""Faults through the whole stack: each recovers, or fails with the right NTSTATUS."""

from __future__ import annotations

import pytest

from usbtrace.devices.simulated import BULK_IN, BULK_OUT
from usbtrace.records import SUBMIT
from usbtrace.usb.urb import URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL
from usbtrace.wdm.win32 import NtStatusError

from .conftest import Stack


def urb_functions(stack: Stack) -> list[int]:
    return [e.urb_function for e in stack.events
            if e.kind == SUBMIT and e.urb_function is not None]


def test_stalled_data_in_is_cleared_and_the_read_retried(stack: Stack) -> None:
    stack.stick.image.view[:512] = b"\x42" * 512
    h = stack.open()
    stack.stick.faults.stall_next[BULK_IN] = 1
    buf = bytearray(512)
    # the stall fails the first attempt's data phase: usbstor clears the halt, reads the
    # CSW, and the read completes (the device kept its data and sent the CSW)
    try:
        stack.win32.ReadFile(h, buf, 0)
    except NtStatusError:
        pass
    assert URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL in urb_functions(stack)
    # the stick and stack are healthy afterwards
    assert stack.win32.ReadFile(h, buf, 0) == 512 and buf == b"\x42" * 512


def test_stalled_csw_is_cleared_and_read_again(stack: Stack) -> None:
    h = stack.open()
    stack.stick.image.view[:512] = b"\x01" * 512
    buf = bytearray(512)
    stack.stick.faults.stall_next[BULK_IN] = 0
    events_before = len(stack.events)
    # stall the IN endpoint right after the data phase: arm it from the data completion
    original = stack.stick.bot.bulk_in
    calls = {"n": 0}

    def stall_second(buffer):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            stack.stick.bot.halted.add(BULK_IN)
        return original(buffer)

    stack.stick.bot.bulk_in = stall_second  # type: ignore[method-assign]
    assert stack.win32.ReadFile(h, buf, 0) == 512 and buf == b"\x01" * 512
    later = [e for e in stack.events[events_before:] if e.kind == SUBMIT]
    assert sum(e.urb_function == URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL
               for e in later) == 1


def test_media_error_fails_with_crc_error_after_autosense(stack: Stack) -> None:
    h = stack.open()
    stack.stick.targets[0].faults.bad_lbas.add(3)
    with pytest.raises(NtStatusError, match="STATUS_CRC_ERROR"):
        stack.win32.ReadFile(h, bytearray(4096), 0)
    cbws = [e.data for e in stack.events if e.kind == SUBMIT and e.data[:4] == b"USBC"]
    assert cbws[-1][15] == 0x03  # REQUEST SENSE followed the failed READ


def test_not_ready_medium(stack: Stack) -> None:
    h = stack.open()
    stack.stick.targets[0].faults.not_ready = True
    with pytest.raises(NtStatusError, match="STATUS_NO_MEDIA_IN_DEVICE"):
        stack.win32.ReadFile(h, bytearray(512), 0)


def test_write_protected_medium_refuses_writes_keeps_reads(stack: Stack) -> None:
    h = stack.open()
    stack.stick.targets[0].faults.write_protected = True
    with pytest.raises(NtStatusError, match="STATUS_MEDIA_WRITE_PROTECTED"):
        stack.win32.WriteFile(h, b"\0" * 512, 0)
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512


def test_unit_attention_is_retried_by_the_class_driver(stack: Stack) -> None:
    h = stack.open()
    stack.stick.targets[0].faults.unit_attention = True
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512
    disk = stack.machine.kernel.drivers["\\Driver\\disk"].device_objects[0]
    assert disk.device_extension.stats["retries"] == 1


def test_disconnect_mid_transfer(stack: Stack) -> None:
    h = stack.open()
    stack.stick.faults.disconnect_after_bytes = stack.stick.faults.bulk_bytes + 100_000
    with pytest.raises(NtStatusError, match="STATUS_DEVICE_NOT_CONNECTED"):
        stack.win32.ReadFile(h, bytearray(256 * 1024), 0)
    stack.machine.scheduler.run_until_idle()
    assert not stack.machine.disk_present()
    with pytest.raises(NtStatusError):
        stack.win32.ReadFile(h, bytearray(512), 0)


def test_invalid_csw_triggers_reset_recovery(stack: Stack) -> None:
    h = stack.open()
    bot = stack.stick.bot
    original = bot._finish

    def corrupt(residue: int, status: int) -> None:
        original(residue, status)
        bot._csw = b"USBX" + bot._csw[4:]

    bot._finish = corrupt  # type: ignore[method-assign]
    with pytest.raises(NtStatusError, match="STATUS_IO_DEVICE_ERROR"):
        stack.win32.ReadFile(h, bytearray(512), 0)
    bot._finish = original  # type: ignore[method-assign]
    setups = [e.setup for e in stack.events if e.kind == SUBMIT and e.setup is not None]
    assert setups[-3][:2] == b"\x21\xff"  # Bulk-Only Mass Storage Reset
    assert [s[4] for s in setups[-2:]] == [BULK_IN, BULK_OUT]  # then clear both halts
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512  # and the stick works again


def test_cancel_of_a_queued_srb(stack: Stack) -> None:
    from usbtrace.wdm.iomgr import IoCancelIrp

    h = stack.open()
    first = stack.win32.ReadFile(h, bytearray(65536), 0, overlapped=True)
    second = stack.win32.ReadFile(h, bytearray(65536), 65536, overlapped=True)
    usbstor = stack.machine.kernel.drivers["\\Driver\\usbstor"]
    fdo = next(d for d in usbstor.device_objects if hasattr(d.device_extension, "queue"))
    queued_irp = fdo.device_extension.queue[0][0]  # the second READ's SRB waits its turn
    assert queued_irp.master_irp is second.irp
    assert IoCancelIrp(queued_irp)
    with pytest.raises(NtStatusError, match="STATUS_CANCELLED"):
        stack.win32.GetOverlappedResult(h, second)
    assert stack.win32.GetOverlappedResult(h, first) == 65536
    # the cancelled SRB never reached the wire: one CBW for the first read only
    cbws = [e for e in stack.events if e.kind == SUBMIT and e.data[:4] == b"USBC"
            and e.data[15] == 0x28]
    assert len(cbws) == 1
