"""IRP completion semantics: routines bottom-up, invoke flags, pending, cancel, IRQL."""

from __future__ import annotations

from typing import Any

import pytest

from usbtrace.wdm.device import DriverObject, IoAttachDeviceToDeviceStack, IoCreateDevice
from usbtrace.wdm.iomgr import (
    IoCallDriver,
    IoCancelIrp,
    IoCompleteRequest,
    IoCopyCurrentIrpStackLocationToNext,
    IoMarkIrpPending,
    IoReleaseCancelSpinLock,
    IoSetCancelRoutine,
    IoSetCompletionRoutine,
    IoSkipCurrentIrpStackLocation,
)
from usbtrace.wdm.irp import IRP_MJ_READ, IoMakeAssociatedIrp, Irp, ReadWriteParameters
from usbtrace.wdm.kernel import Kernel
from usbtrace.wdm.sched import DISPATCH_LEVEL, PASSIVE_LEVEL, BugCheck, KEvent
from usbtrace.wdm.status import NTSTATUS

SUCCESS = NTSTATUS.STATUS_SUCCESS
MORE = NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED


class ThreeLayers:
    """bottom (completes or pends), middle (pass-through + routine), top (pass-through)."""

    def __init__(self, pend: bool = False, middle_returns: int = SUCCESS,
                 on_success: bool = True, on_error: bool = True) -> None:
        self.kernel = Kernel()
        self.calls: list[str] = []
        self.pending: list[Irp] = []
        k = self.kernel

        def bottom(dev: Any, irp: Irp) -> int:
            self.calls.append("bottom")
            if pend:
                IoMarkIrpPending(irp)
                self.pending.append(irp)
                return NTSTATUS.STATUS_PENDING
            irp.io_status.status = SUCCESS
            IoCompleteRequest(irp)
            return SUCCESS

        def middle_completion(dev: Any, irp: Irp, ctx: Any) -> int:
            self.calls.append(f"middle_completion({ctx}) pending={irp.pending_returned}")
            if irp.pending_returned:
                IoMarkIrpPending(irp)
            return middle_returns

        def middle(dev: Any, irp: Irp) -> int:
            self.calls.append("middle")
            IoCopyCurrentIrpStackLocationToNext(irp)
            IoSetCompletionRoutine(irp, middle_completion, "ctx", on_success, on_error, True)
            return IoCallDriver(dev.device_extension, irp)

        def top(dev: Any, irp: Irp) -> int:
            self.calls.append("top")
            IoSkipCurrentIrpStackLocation(irp)
            return IoCallDriver(dev.device_extension, irp)

        drivers = []
        for name, routine in (("bottom", bottom), ("middle", middle), ("top", top)):
            d = DriverObject(k, name)
            d.major_function[IRP_MJ_READ] = routine
            drivers.append(d)
        self.bottom = IoCreateDevice(drivers[0], None, None, 0)
        self.middle = IoCreateDevice(drivers[1], None, None, 0)
        self.middle.device_extension = IoAttachDeviceToDeviceStack(self.middle, self.bottom)
        self.top = IoCreateDevice(drivers[2], None, None, 0)
        self.top.device_extension = IoAttachDeviceToDeviceStack(self.top, self.bottom)

    def irp(self) -> tuple[Irp, KEvent]:
        irp = Irp(self.top.stack_size)
        loc = irp.IoGetNextIrpStackLocation()
        loc.major_function = IRP_MJ_READ
        loc.parameters = ReadWriteParameters(512, 0)
        event = KEvent()
        irp.user_event = event
        return irp, event


def test_stack_sizes_grow_as_devices_attach() -> None:
    s = ThreeLayers()
    assert (s.bottom.stack_size, s.middle.stack_size, s.top.stack_size) == (1, 2, 3)


def test_completion_routine_runs_after_lower_driver_and_irp_finishes() -> None:
    s = ThreeLayers()
    irp, event = s.irp()
    assert IoCallDriver(s.top, irp) == SUCCESS
    assert s.calls == ["top", "middle", "bottom", "middle_completion(ctx) pending=False"]
    assert irp.completed and event.signaled


def test_more_processing_required_stops_the_unwind() -> None:
    s = ThreeLayers(middle_returns=MORE)
    irp, event = s.irp()
    IoCallDriver(s.top, irp)
    assert not irp.completed and not event.signaled
    IoCompleteRequest(irp)  # the middle driver finishes it later
    assert irp.completed and event.signaled


def test_invoke_on_flags_select_success_or_error() -> None:
    s = ThreeLayers(on_success=False)
    irp, _ = s.irp()
    IoCallDriver(s.top, irp)
    assert not any("completion" in c for c in s.calls)


def test_pending_irp_propagates_pending_returned() -> None:
    s = ThreeLayers(pend=True)
    irp, event = s.irp()
    assert IoCallDriver(s.top, irp) == NTSTATUS.STATUS_PENDING
    assert not event.signaled
    pended = s.pending.pop()
    pended.io_status.status = SUCCESS
    IoCompleteRequest(pended)
    assert "middle_completion(ctx) pending=True" in s.calls
    # the IRP pended, so its last stage is an APC to the requesting thread
    # (IopCompleteRequest): not run inside the completing call, run when the
    # requester's thread next gets its turn on the scheduler
    assert irp.pending_returned and not event.signaled
    s.kernel.scheduler.run_until_idle()
    assert event.signaled


def test_double_completion_is_a_bug_check() -> None:
    s = ThreeLayers()
    irp, _ = s.irp()
    IoCallDriver(s.top, irp)
    with pytest.raises(BugCheck, match="MULTIPLE_IRP_COMPLETE_REQUESTS"):
        IoCompleteRequest(irp)


def test_completing_with_status_pending_is_a_bug_check() -> None:
    s = ThreeLayers(pend=True)
    irp, _ = s.irp()
    IoCallDriver(s.top, irp)
    s.pending[0].io_status.status = NTSTATUS.STATUS_PENDING
    with pytest.raises(BugCheck):
        IoCompleteRequest(s.pending[0])


def test_cancel_calls_the_cancel_routine_at_dispatch_level() -> None:
    s = ThreeLayers(pend=True)
    irp, event = s.irp()
    IoCallDriver(s.top, irp)
    seen: list[int] = []

    def cancel(dev: Any, i: Irp) -> None:
        # called holding the cancel spin lock, which it gives back first (wdm.h's
        # DRIVER_CANCEL contract: IoReleaseCancelSpinLock(Irp->CancelIrql))
        seen.append(s.kernel.scheduler.irql)
        IoReleaseCancelSpinLock(dev, i.cancel_irql)
        seen.append(s.kernel.scheduler.irql)
        i.io_status.status = NTSTATUS.STATUS_CANCELLED
        IoCompleteRequest(i)

    IoSetCancelRoutine(irp, cancel)
    assert IoCancelIrp(irp) is True
    s.kernel.scheduler.run_until_idle()  # the completion APC of a pended IRP
    assert seen == [DISPATCH_LEVEL, PASSIVE_LEVEL] and irp.cancel and event.signaled
    assert irp.io_status.status == NTSTATUS.STATUS_CANCELLED
    assert IoCancelIrp(irp) is False  # the routine was taken: nothing more to call


def test_a_cancel_routine_that_keeps_the_cancel_spin_lock_is_a_bug_check() -> None:
    """Microsoft docs, "Cancel Routine Functionality": the routine must release the
    cancel spin lock; the model stops the machine if it returns holding it."""
    s = ThreeLayers(pend=True)
    irp, _ = s.irp()
    IoCallDriver(s.top, irp)
    IoSetCancelRoutine(irp, lambda dev, i: None)
    with pytest.raises(BugCheck, match="holding the cancel spin lock"):
        IoCancelIrp(irp)


def test_completing_with_a_cancel_routine_set_is_a_bug_check() -> None:
    s = ThreeLayers(pend=True)
    irp, _ = s.irp()
    IoCallDriver(s.top, irp)
    IoSetCancelRoutine(irp, lambda d, i: None)
    s.pending[0].io_status.status = SUCCESS
    with pytest.raises(BugCheck):
        IoCompleteRequest(s.pending[0])


def test_no_more_stack_locations() -> None:
    s = ThreeLayers()
    irp = Irp(1)  # too small for a three-device stack
    irp.IoGetNextIrpStackLocation().major_function = IRP_MJ_READ
    irp.IoGetNextIrpStackLocation().parameters = ReadWriteParameters(0, 0)
    with pytest.raises(BugCheck, match="NO_MORE_IRP_STACK_LOCATIONS"):
        IoCallDriver(s.top, irp)


def test_waiting_at_dispatch_level_is_a_bug_check() -> None:
    k = Kernel()
    k.scheduler.KeRaiseIrql(DISPATCH_LEVEL)
    with pytest.raises(BugCheck, match="IRQL_NOT_LESS_OR_EQUAL"):
        k.scheduler.KeWaitForSingleObject(KEvent())


def test_associated_irps_complete_their_master_when_the_last_one_does() -> None:
    master = Irp(1)
    event = KEvent()
    master.user_event = event
    master.irp_count = 3
    children = [IoMakeAssociatedIrp(master, 1) for _ in range(3)]
    for child in children[:2]:
        IoCompleteRequest(child)
        assert not event.signaled
    IoCompleteRequest(children[2])
    assert event.signaled and master.completed


def test_copy_to_next_leaves_routine_and_context_and_clears_control() -> None:
    """As wdm.h's IoCopyCurrentIrpStackLocationToNext (MS docs, wdm.h; ReactOS
    sdk/include/xdk/iofuncs.h): the fields before CompletionRoutine are copied and
    Control is cleared, so a routine left from an earlier pass stays but never runs."""
    ran: list[Any] = []
    irp = Irp(2)
    irp.current_location = 1  # the upper driver's dispatch
    mine = irp.stack[1]
    mine.major_function = IRP_MJ_READ
    mine.parameters = ReadWriteParameters(512, 0)
    below = irp.stack[0]
    below.completion_routine = lambda dev, i, ctx: ran.append(ctx) or SUCCESS
    below.context = "earlier pass"
    below.control = 0xE0  # invoke on success, error and cancel
    IoCopyCurrentIrpStackLocationToNext(irp)
    assert below.major_function == IRP_MJ_READ and below.parameters is mine.parameters
    assert below.control == 0 and below.context == "earlier pass"
    assert below.completion_routine is not None
    irp.current_location = 0  # the lower driver completes it
    irp.io_status.status = SUCCESS
    IoCompleteRequest(irp)
    assert ran == [] and irp.completed
