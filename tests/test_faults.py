"""Faults through the whole stack: each recovers, or fails with the right NTSTATUS."""

from __future__ import annotations

import pytest

from usbtrace.devices.faults import Fault, parse_fault
from usbtrace.devices.simulated import BULK_IN, BULK_OUT
from usbtrace.drivers.disk import MAXIMUM_RETRIES
from usbtrace.records import COMPLETE, SUBMIT
from usbtrace.usb.urb import (
    URB_FUNCTION_BULK_OR_INTERRUPT_TRANSFER,
    URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL,
    USBD_STATUS_STALL_PID,
)
from usbtrace.wdm.win32 import NtStatusError

from .conftest import Stack


def urb_functions(stack: Stack) -> list[int]:
    return [e.urb_function for e in stack.events
            if e.kind == SUBMIT and e.urb_function is not None]


def wire(stack: Stack, since: int = 0) -> list[str]:
    """The bus traffic under usbstor, one step a line: what a bus analyser shows."""
    steps: list[str] = []
    for e in stack.events[since:]:
        if e.position != "lower":
            continue
        if e.kind == SUBMIT:
            if e.data[:4] == b"USBC":
                steps.append(f"CBW {e.data[15]:02X}")
            elif e.setup is not None and e.setup[:2] == b"\x21\xff":
                steps.append("reset")
            elif e.urb_function == URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL:
                steps.append(f"clear {e.endpoint:02X}")
        elif e.kind == COMPLETE and e.urb_function == URB_FUNCTION_BULK_OR_INTERRUPT_TRANSFER:
            if e.urb_status == USBD_STATUS_STALL_PID:
                steps.append(f"stall {e.endpoint:02X}")
            elif e.length == 13 and e.data[:4] in (b"USBS", b"USBX"):
                steps.append(f"CSW {e.data[:4].decode()} {e.data[12]}")
    return steps


def next_command(stack: Stack) -> int:
    """The number the stick gives the next CBW (faults are armed by command number)."""
    return stack.stick.bot.commands + 1


READ_RETRIED = ["CBW 28", "CSW USBS 0"]  # the retried READ(10), good
RESET_RECOVERY = ["reset", "clear 81", "clear 02"]  # BOT 1.0 §5.3.4


def test_stalled_data_in_is_cleared_and_the_read_retried(stack: Stack) -> None:
    stack.stick.image.view[:512] = b"\x42" * 512
    h = stack.open()
    since = len(stack.events)
    stack.stick.faults.stall_next[BULK_IN] = 1
    buf = bytearray(512)
    # the application sees the read succeed, with the stick's data
    assert stack.win32.ReadFile(h, buf, 0) == 512 and buf == b"\x42" * 512
    # BOT §6.7.2: the stall ended the data phase; the host clears the halt and reads
    # the CSW (failed, all 512 bytes as residue); REQUEST SENSE says ABORTED COMMAND,
    # which classpnp's ClassInterpretSenseInfo retries
    assert wire(stack, since) == ["CBW 28", "stall 81", "clear 81", "CSW USBS 1",
                                  "CBW 03", "CSW USBS 0", *READ_RETRIED]
    csw = next(e.data for e in stack.events[since:] if e.data[:4] == b"USBS")
    assert int.from_bytes(csw[8:12], "little") == 512  # dCSWDataResidue: nothing moved


@pytest.mark.parametrize("kind, csw", [("invalid-csw", "CSW USBX 0"),
                                       ("phase-error", "CSW USBS 2")])
def test_one_off_bad_csw_is_recovered_and_the_read_retried(stack: Stack, kind: str,
                                                            csw: str) -> None:
    """usbstor ends the SRB with SRB_STATUS_BUS_RESET after Reset Recovery (ReactOS
    drivers/usb/usbstor/scsi.c, USBSTOR_CSWCompletionRoutine); disk retries it
    (classpnp ClassInterpretSenseInfo: SRB_STATUS_BUS_RESET is retried)."""
    stack.stick.image.view[4096:4608] = b"\x17" * 512
    h = stack.open()
    since = len(stack.events)
    stack.stick.inject(Fault(kind, next_command(stack), persistent=False))
    buf = bytearray(512)
    assert stack.win32.ReadFile(h, buf, 4096) == 512 and buf == b"\x17" * 512
    assert wire(stack, since) == ["CBW 28", csw, *RESET_RECOVERY, *READ_RETRIED]


@pytest.mark.parametrize("kind", ["invalid-csw", "phase-error", "stall-in"])
def test_persistent_fault_fails_with_io_device_error_after_the_retries(stack: Stack,
                                                                       kind: str) -> None:
    h = stack.open()
    since = len(stack.events)
    stack.stick.inject(Fault(kind, next_command(stack), persistent=True))
    with pytest.raises(NtStatusError, match="STATUS_IO_DEVICE_ERROR"):
        stack.win32.ReadFile(h, bytearray(512), 0)
    # classpnp: NUM_IO_RETRIES = MAXIMUM_RETRIES = 4 retries, five READs in all
    assert wire(stack, since).count("CBW 28") == 1 + MAXIMUM_RETRIES
    stack.stick.injected.clear()
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512  # the stick works again


def test_one_off_stall_of_data_out_is_retried_and_the_write_lands(stack: Stack) -> None:
    h = stack.open()
    since = len(stack.events)
    stack.stick.inject(Fault("stall-out", next_command(stack), persistent=False))
    assert stack.win32.WriteFile(h, b"\x5a" * 1024, 8192) == 1024
    assert bytes(stack.stick.image.view[8192:9216]) == b"\x5a" * 1024
    assert wire(stack, since)[:4] == ["CBW 2A", "stall 02", "clear 02", "CSW USBS 1"]
    assert wire(stack, since).count("CBW 2A") == 2


def test_one_off_unit_attention_and_not_ready(stack: Stack) -> None:
    h = stack.open()
    stack.stick.inject(Fault("unit-attention", next_command(stack), persistent=False))
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512  # retried
    # NOT READY, MEDIUM NOT PRESENT is final: classpnp does not retry it
    stack.stick.inject(Fault("not-ready", next_command(stack), persistent=False))
    with pytest.raises(NtStatusError, match="STATUS_NO_MEDIA_IN_DEVICE"):
        stack.win32.ReadFile(h, bytearray(512), 0)
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512  # the medium is back


def test_one_off_write_protect_fails_that_write_only(stack: Stack) -> None:
    h = stack.open()
    stack.stick.inject(Fault("write-protect", next_command(stack), persistent=False))
    with pytest.raises(NtStatusError, match="STATUS_MEDIA_WRITE_PROTECTED"):
        stack.win32.WriteFile(h, b"\1" * 512, 0)
    assert stack.win32.WriteFile(h, b"\1" * 512, 0) == 512


def test_injected_disconnect_and_media_error(stack: Stack) -> None:
    h = stack.open()
    stack.stick.inject(parse_fault("media-error@8-9"))
    with pytest.raises(NtStatusError, match="STATUS_CRC_ERROR"):
        stack.win32.ReadFile(h, bytearray(512), 9 * 512)
    assert stack.win32.ReadFile(h, bytearray(512), 10 * 512) == 512
    stack.stick.inject(Fault("disconnect", next_command(stack), persistent=False))
    with pytest.raises(NtStatusError, match="STATUS_DEVICE_NOT_CONNECTED"):
        stack.win32.ReadFile(h, bytearray(4096), 0)
    stack.machine.scheduler.run_until_idle()
    assert not stack.machine.disk_present()


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
    before = len(stack.events)  # after the disk-arrival read of the partition table
    first = stack.win32.ReadFile(h, bytearray(65536), 0, overlapped=True)
    second = stack.win32.ReadFile(h, bytearray(65536), 65536, overlapped=True)
    usbstor = stack.machine.kernel.drivers["\\Driver\\usbstor"]
    fdo = next(d for d in usbstor.device_objects if hasattr(d.device_extension, "luns"))
    queued_irp = fdo.device_queue.entries[0]  # the second READ's SRB waits its turn
    assert queued_irp.master_irp is second.irp
    assert IoCancelIrp(queued_irp)
    with pytest.raises(NtStatusError, match="STATUS_CANCELLED"):
        stack.win32.GetOverlappedResult(h, second)
    assert stack.win32.GetOverlappedResult(h, first) == 65536
    # the cancelled SRB never reached the wire: one CBW for the first read only
    cbws = [e for e in stack.events[before:] if e.kind == SUBMIT and e.data[:4] == b"USBC"
            and e.data[15] == 0x28]
    assert len(cbws) == 1


def test_a_stall_ends_the_data_phase_and_the_csw_counts_what_did_not_move() -> None:
    """BOT 1.0 §6.7.2: the device that stalls bulk-IN has ended its data phase; once the
    host clears the halt it sends the CSW, residue = the bytes it did not send."""
    from usbtrace.devices.image import DiskImage
    from usbtrace.devices.simulated import SimulatedStick
    from usbtrace.storage import bot, scsi
    from usbtrace.usb.urb import USBD_STATUS_SUCCESS

    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    device = stick.bot
    read4 = bytes([scsi.READ_10, 0, 0, 0, 0, 0, 0, 0, 4, 0])
    assert device.bulk_out(bot.build_cbw(9, 2048, True, 0, read4)) == USBD_STATUS_SUCCESS
    assert device.bulk_in(bytearray(512)) == (USBD_STATUS_SUCCESS, 512)
    device.halt(BULK_IN)
    assert device.bulk_in(bytearray(512))[0] == USBD_STATUS_STALL_PID
    device.clear_halt(BULK_IN)
    csw = bytearray(13)
    assert device.bulk_in(csw) == (USBD_STATUS_SUCCESS, 13)
    assert bot.parse_csw(csw) == bot.Csw(9, 1536, bot.CSW_STATUS_FAILED)
    sense = bytearray(18)
    device.bulk_out(bot.build_cbw(10, 18, True, 0, bytes([scsi.REQUEST_SENSE, 0, 0, 0, 18, 0])))
    device.bulk_in(sense)
    parsed = scsi.parse_sense(sense)
    assert parsed is not None and (parsed.key, parsed.asc) == (scsi.ABORTED_COMMAND, 0x4B)
    # the same on bulk-OUT: what arrived before the stall is not written
    write2 = bytes([scsi.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 2, 0])
    device.bulk_in(bytearray(13))  # the REQUEST SENSE's CSW
    device.bulk_out(bot.build_cbw(11, 1024, False, 0, write2))
    device.bulk_out(b"\xee" * 512)
    device.halt(BULK_OUT)
    device.clear_halt(BULK_OUT)
    assert device.bulk_in(csw)[1] == 13
    assert bot.parse_csw(csw) == bot.Csw(11, 512, bot.CSW_STATUS_FAILED)
    assert bytes(stick.image.view[:512]) == bytes(512)


@pytest.mark.parametrize(("reported", "used"), [(0, 512), (520, 512), (4096, 4096)])
def test_a_block_size_of_zero_or_odd_is_taken_as_classpnp_takes_it(
        reported: int, used: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """classpnp's ClassReadDriveCapacity: a zero block size is 512, and one that is no
    power of two is rounded down, so a later read never divides by zero (the fuzzer
    found a replayed device answering READ CAPACITY with block size 0)."""
    import struct

    from usbtrace.drivers import disk

    def answer(extension: object, srb: object) -> int:
        srb.data_buffer[:8] = struct.pack(">II", 1000, reported)  # type: ignore[attr-defined]
        return 0

    monkeypatch.setattr(disk, "ClassSendSrbSynchronous", answer)
    ext = disk.DiskExtension.__new__(disk.DiskExtension)
    assert disk.DiskReadDriveCapacity(ext) == 0
    assert ext.block_size == used and ext.block_count == 1001


def test_a_sector_size_of_gigabytes_gets_no_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device claiming 2 GiB sectors: the partition manager's read buffer is refused
    (as a pool allocation that size fails), never allocated (found by the fuzzer)."""
    from usbtrace.drivers import partmgr

    class Geometry:
        BytesPerSector = 1 << 31

    class Calls:
        def CreateFile(self, path: str) -> int:
            return 1

        def DeviceIoControl(self, handle: int, code: int, *args: object) -> tuple[int, object]:
            return 0, Geometry()

        def ReadFile(self, handle: int, buffer: bytearray, offset: int) -> int:
            raise AssertionError("no buffer of the claimed size should exist")

        def CloseHandle(self, handle: int) -> None:
            pass

    assert partmgr.PartMgrDiskArrival(Calls(), "\\\\.\\PhysicalDrive0") is None  # type: ignore[arg-type]
