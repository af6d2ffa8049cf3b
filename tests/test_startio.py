"""usbstor's concurrency as Windows runs it: StartIo and the device queue, Reset Recovery
from a work item at PASSIVE_LEVEL, the hang timer's DPC; the kernel pieces under them.

References: ReactOS ``drivers/usb/usbstor/usbstor.c`` (DriverStartIo in DriverEntry),
``queue.c`` (IoStartPacket on the FDO, USBSTOR_StartIo, USBSTOR_CancelIo,
IoStartNextPacket), ``error.c`` (USBSTOR_QueueResetDevice queues
USBSTOR_ResetDeviceWorkItem; USBSTOR_TimerRoutine finds a hung SRB and queues the
work that aborts the pipes); ReactOS ``ntoskrnl/io/iomgr/device.c`` (IoStartPacket,
IoStartNextPacket); Microsoft docs "Cancel Routine Functionality", "IoStartNextPacket"
(callers at DISPATCH_LEVEL), "KeAcquireSpinLock".
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from tests.conftest import Stack
from usbtrace.devices.base import TransferResult
from usbtrace.drivers import usbstor
from usbtrace.records import SUBMIT
from usbtrace.storage.srb import SRB_STATUS_TIMEOUT
from usbtrace.wdm.device import DeviceObject
from usbtrace.wdm.irp import Irp
from usbtrace.wdm.kernel import Kernel
from usbtrace.wdm.sched import DISPATCH_LEVEL, PASSIVE_LEVEL, BugCheck, KDpc, KSpinLock, KTimer


def _fdo(stack: Stack) -> DeviceObject:
    driver = stack.machine.kernel.drivers["\\Driver\\usbstor"]
    return next(d for d in driver.device_objects if isinstance(d.device_extension,
                                                                usbstor.FdoExtension))


def test_driver_entry_fills_driver_start_io(stack: Stack) -> None:
    driver = stack.machine.kernel.drivers["\\Driver\\usbstor"]
    assert driver.driver_start_io is usbstor.USBSTOR_StartIo


def test_second_srb_waits_in_the_device_queue_and_starts_from_io_start_next_packet(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """queue.c: IoStartPacket on the FDO; while a command runs the next IRP waits in the
    device queue; IoStartNextPacket starts it.  StartIo runs at DISPATCH_LEVEL."""
    fdo = _fdo(stack)
    started: list[tuple[int, int]] = []
    original = fdo.driver_object.driver_start_io
    assert original is not None

    def start_io(device: DeviceObject, irp: Irp) -> None:
        started.append((irp.id, stack.machine.scheduler.irql))
        original(device, irp)

    monkeypatch.setattr(fdo.driver_object, "driver_start_io", start_io)
    h = stack.open()
    first = stack.win32.ReadFile(h, bytearray(65536), 0, overlapped=True)
    second = stack.win32.ReadFile(h, bytearray(65536), 65536, overlapped=True)
    assert fdo.current_irp is not None and fdo.current_irp.master_irp is first.irp
    assert [i.master_irp for i in fdo.device_queue.entries] == [second.irp]
    assert stack.win32.GetOverlappedResult(h, first) == 65536
    assert stack.win32.GetOverlappedResult(h, second) == 65536
    assert len(started) == 2 and all(irql == DISPATCH_LEVEL for _, irql in started)
    assert fdo.current_irp is None and not fdo.device_queue.busy


def test_reset_recovery_runs_from_a_work_item_at_passive_level(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """error.c: the reset is queued as a work item; its URBs are synchronous, each on an
    IRP of its own, and none is sent from inside USBSTOR_UrbCompletion."""
    seen: list[tuple[int, bool]] = []
    original = usbstor.USBSTOR_ResetDeviceWorkItem

    def work_item(device: DeviceObject, failed: Any) -> None:
        inside_completion = any(f.function == "USBSTOR_UrbCompletion" for f in inspect.stack())
        seen.append((stack.machine.scheduler.irql, inside_completion))
        original(device, failed)

    monkeypatch.setattr(usbstor, "USBSTOR_ResetDeviceWorkItem", work_item)
    h = stack.open()
    _inject(stack, "invalid-csw")
    before = len(stack.events)
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512  # the class driver retried
    assert seen == [(PASSIVE_LEVEL, False)]
    lower = [e for e in stack.events[before:] if e.position == "lower" and e.kind == SUBMIT]
    reset = next(e for e in lower if e.setup is not None and e.setup[:2] == b"\x21\xff")
    cbw_irps = {e.irp_id for e in lower if e.data[:4] == b"USBC"}
    clears = [e for e in lower if e.setup is not None and e.setup[1] == 0x01]  # CLEAR_FEATURE
    assert reset.irp_id not in cbw_irps  # not on the failed command's IRP
    assert len(clears) == 2 and len({reset.irp_id, *(c.irp_id for c in clears)}) == 3


def _inject(stack: Stack, kind: str) -> None:
    """Strike the next command the stick receives (``--fault KIND@N``)."""
    from usbtrace.devices.faults import parse_fault

    stack.stick.inject(parse_fault(f"{kind}@{stack.stick.bot.commands + 1}"))


def test_hang_timer_dpc_aborts_a_command_that_never_ends() -> None:
    """error.c's USBSTOR_TimerRoutine: a command still active when the timer expires is
    hung; the DPC queues the work that aborts the pipes (PASSIVE_LEVEL, synchronous
    ABORT_PIPE), the command ends SRB_STATUS_TIMEOUT, Reset Recovery follows, and the
    class driver's retry reads the data."""
    stack = Stack()
    fdo = _fdo(stack)
    ext: usbstor.FdoExtension = fdo.device_extension
    stick = stack.stick
    real_bulk_in = stick.bulk_in
    hung = {"left": 1}
    statuses: list[int] = []

    def slow_bulk_in(endpoint: int, buffer: Any) -> TransferResult:
        result = real_bulk_in(endpoint, buffer)
        if hung["left"] and len(buffer) == 4096:  # the READ's data phase
            hung["left"] -= 1
            return TransferResult(result.status, result.actual, 60 * 1_000_000_000)
        return result

    original_finish = usbstor._finish

    def finish(request: Any, terminal: str, outcome: str = "") -> None:
        original_finish(request, terminal, outcome)
        statuses.append(request.srb.srb_status)

    stick.bulk_in = slow_bulk_in  # type: ignore[method-assign]
    usbstor_finish = usbstor._finish
    usbstor._finish = finish  # type: ignore[assignment]
    try:
        h = stack.open()
        buffer = bytearray(4096)
        assert stack.win32.ReadFile(h, buffer, 8192) == 4096
    finally:
        usbstor._finish = usbstor_finish  # type: ignore[assignment]
    assert ext.hang_timer.fired == 1
    assert SRB_STATUS_TIMEOUT in statuses
    assert stack.machine.scheduler.now() >= 10  # the SRB's TimeOutValue, in seconds
    lower = [e for e in stack.events if e.position == "lower" and e.kind == SUBMIT]
    aborts = [e for e in lower if e.urb_function == 0x0002]  # URB_FUNCTION_ABORT_PIPE
    assert len(aborts) == 2
    stack.machine.scheduler.run_until_idle()
    stack.machine.stop()


def test_spin_lock_rules() -> None:
    """KeAcquireSpinLock raises to DISPATCH_LEVEL and the release restores; taking it
    twice, or releasing it unheld, stops the machine (Driver Verifier)."""
    sched = Kernel().scheduler
    lock = KSpinLock("test lock")
    old = sched.KeAcquireSpinLock(lock)
    assert (old, sched.irql, lock.held) == (PASSIVE_LEVEL, DISPATCH_LEVEL, True)
    with pytest.raises(BugCheck, match="SPIN_LOCK_ALREADY_OWNED"):
        sched.KeAcquireSpinLockAtDpcLevel(lock)
    sched.KeReleaseSpinLock(lock, old)
    assert sched.irql == PASSIVE_LEVEL and not lock.held
    with pytest.raises(BugCheck, match="SPIN_LOCK_NOT_OWNED"):
        sched.KeReleaseSpinLockFromDpcLevel(lock)
    with pytest.raises(BugCheck, match="IRQL_NOT_LESS_OR_EQUAL"):
        sched.KeAcquireSpinLockAtDpcLevel(lock)  # not at DISPATCH_LEVEL


def test_timer_queues_its_dpc_and_a_cancelled_timer_takes_no_time() -> None:
    sched = Kernel().scheduler
    ran: list[tuple[int, int]] = []
    dpc = KDpc(lambda d, c: ran.append((sched.now_ns(), sched.irql)))
    timer = KTimer()
    sched.KeSetTimer(timer, 5_000, dpc)
    sched.run_until_idle()
    assert ran == [(5_000, DISPATCH_LEVEL)] and timer.fired == 1
    sched.KeSetTimer(timer, 1_000_000_000, dpc)
    assert sched.KeCancelTimer(timer) is True and sched.pending() == 0
    sched.run_until_idle()
    assert sched.now_ns() == 5_000 and len(ran) == 1
