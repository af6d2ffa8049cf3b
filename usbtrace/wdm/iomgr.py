"""The I/O manager's IRP routines: IoCallDriver, IoCompleteRequest and friends.

Completion follows IopCompleteRequest: walking up from the completing
driver's stack location, each location's completion routine runs in the
context of the driver above it, if its invoke-on flags match the status; a
routine that returns STATUS_MORE_PROCESSING_REQUIRED stops the walk and keeps
the IRP.  Where a location has no routine, its SL_PENDING_RETURNED is
propagated to the location above (what ``IoMarkIrpPending`` in a
pass-through completion routine would do).

When the walk passes the top, the IRP is finished: an associated IRP counts
down its master; any other IRP copies its status block to the caller's and
signals the caller's event.

Driver Verifier-style checks raise :class:`BugCheck`: completing twice,
completing with STATUS_PENDING or with a cancel routine still set, calling
down past the last stack location, calling above DISPATCH_LEVEL, sending an
IRP to a device object that is gone or whose driver is unloaded, and running
a completion routine for a device its driver already deleted (what a remove
lock held until the completion routine prevents).

Every IRP sent is kept in the kernel's list of live IRPs until it is freed:
by the I/O manager when an IRP it built finishes, by the driver
(``IoFreeIrp``) for one from ``IoAllocateIrp``.  What is still there at
shutdown leaked.
"""

from __future__ import annotations

from typing import Any

from usbtrace.wdm.device import DeviceObject
from usbtrace.wdm.irp import (
    SL_INVOKE_ON_CANCEL,
    SL_INVOKE_ON_ERROR,
    SL_INVOKE_ON_SUCCESS,
    SL_PENDING_RETURNED,
    CancelRoutine,
    CompletionRoutine,
    Irp,
)
from usbtrace.wdm.sched import DISPATCH_LEVEL, BugCheck
from usbtrace.wdm.status import NTSTATUS

STATUS_PENDING = NTSTATUS.STATUS_PENDING.value
STATUS_MORE_PROCESSING_REQUIRED = NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED.value


def IoCallDriver(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """Hand ``irp`` to the driver of ``device`` at the next stack location."""
    location = irp.current_location - 1
    if location < 0:
        raise BugCheck("NO_MORE_IRP_STACK_LOCATIONS", f"{irp!r} sent to {device!r}")
    driver = device.driver_object
    kernel = driver.kernel
    if kernel.scheduler.irql > DISPATCH_LEVEL:
        raise BugCheck("IRQL_NOT_LESS_OR_EQUAL", "IoCallDriver above DISPATCH_LEVEL")
    if device.freed:
        raise BugCheck("DRIVER_VERIFIER_IOMANAGER_VIOLATION",
                       f"{irp!r} sent to deleted {device!r}")
    if driver.unloaded:
        raise BugCheck("DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
                       f"{irp!r} dispatched into unloaded {driver.name}")
    if irp.registry is None:
        irp.registry = kernel.irps
        kernel.irps[irp.id] = irp
    irp.current_location = location
    stack = irp.stack[location]
    stack.device_object = device
    return driver.major_function[stack.major_function](device, irp)


def IoSkipCurrentIrpStackLocation(irp: Irp) -> None:  # noqa: N802
    """Let the next driver reuse this driver's stack location."""
    irp.current_location += 1


def IoCopyCurrentIrpStackLocationToNext(irp: Irp) -> None:  # noqa: N802
    """Copy this location to the next one, without completion routine or control bits."""
    src = irp.stack[irp.current_location]
    dst = irp.stack[irp.current_location - 1]
    dst.major_function = src.major_function
    dst.minor_function = src.minor_function
    dst.flags = src.flags
    dst.parameters = src.parameters
    dst.file_object = src.file_object
    dst.control = 0
    dst.completion_routine = None
    dst.context = None


def IoSetCompletionRoutine(  # noqa: N802
    irp: Irp,
    routine: CompletionRoutine,
    context: Any,
    invoke_on_success: bool = True,
    invoke_on_error: bool = True,
    invoke_on_cancel: bool = True,
) -> None:
    """Register ``routine`` to run when the next-lower driver completes ``irp``."""
    loc = irp.stack[irp.current_location - 1]
    loc.completion_routine = routine
    loc.context = context
    control = 0
    if invoke_on_success:
        control |= SL_INVOKE_ON_SUCCESS
    if invoke_on_error:
        control |= SL_INVOKE_ON_ERROR
    if invoke_on_cancel:
        control |= SL_INVOKE_ON_CANCEL
    loc.control = control


def IoMarkIrpPending(irp: Irp) -> None:  # noqa: N802
    irp.stack[irp.current_location].control |= SL_PENDING_RETURNED


def IoSetCancelRoutine(irp: Irp, routine: CancelRoutine | None) -> CancelRoutine | None:  # noqa: N802
    """Exchange the IRP's cancel routine, returning the previous one."""
    old = irp.cancel_routine
    irp.cancel_routine = routine
    return old


def IoCancelIrp(irp: Irp) -> bool:  # noqa: N802
    """Set the cancel flag and call the cancel routine, if one is set.

    The routine runs at DISPATCH_LEVEL (as under the cancel spin lock).  Returns
    whether a routine was called, as IoCancelIrp's BOOLEAN does.
    """
    irp.cancel = True
    routine = IoSetCancelRoutine(irp, None)
    if routine is None:
        return False
    device = irp.stack[irp.current_location].device_object
    assert device is not None
    sched = device.driver_object.kernel.scheduler
    old = sched.KeRaiseIrql(DISPATCH_LEVEL)
    try:
        routine(device, irp)
    finally:
        sched.irql = old
    return True


def IoCompleteRequest(irp: Irp, priority_boost: int = 0) -> None:  # noqa: N802
    """Complete ``irp``: run completion routines bottom-up, then finish it."""
    if irp.completed:
        raise BugCheck("MULTIPLE_IRP_COMPLETE_REQUESTS", f"{irp!r} completed twice")
    status = irp.io_status.status
    if status == STATUS_PENDING:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION", "IRP completed with STATUS_PENDING")
    if irp.cancel_routine is not None:
        raise BugCheck(
            "DRIVER_VERIFIER_DETECTED_VIOLATION", f"{irp!r} completed with a cancel routine set"
        )
    stack = irp.stack
    count = irp.stack_count
    index = irp.current_location
    while index < count:
        loc = stack[index]
        pending = loc.control & SL_PENDING_RETURNED
        irp.pending_returned = bool(pending)
        routine = loc.completion_routine
        index += 1
        irp.current_location = index
        if routine is not None:
            control = loc.control
            if (
                (control & SL_INVOKE_ON_SUCCESS and status < 0x80000000)
                or (control & SL_INVOKE_ON_ERROR and status >= 0x80000000)
                or (control & SL_INVOKE_ON_CANCEL and irp.cancel)
            ):
                device = stack[index].device_object if index < count else None
                if device is not None and device.deleted:
                    _completion_on_deleted(device, irp)
                if routine(device, irp, loc.context) == STATUS_MORE_PROCESSING_REQUIRED:
                    return
                status = irp.io_status.status
                continue
        if pending and index < count:
            stack[index].control |= SL_PENDING_RETURNED
    _finish(irp)


def complete_irp(irp: Irp, status: int, information: Any = 0) -> int:
    """Set the status block and complete: the three lines every dispatch routine ends
    with when it finishes an IRP itself.  Returns ``status`` for the dispatch routine."""
    irp.io_status.status = status
    irp.io_status.information = information
    IoCompleteRequest(irp)
    return status


def _completion_on_deleted(device: DeviceObject, irp: Irp) -> None:
    driver = device.driver_object
    if driver.unloaded:
        raise BugCheck("DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
                       f"completion routine of unloaded {driver.name} for {irp!r}")
    raise BugCheck("DRIVER_VERIFIER_IOMANAGER_VIOLATION",
                   f"completion routine for {irp!r} runs on deleted {device!r}")


def _free(irp: Irp) -> None:
    irp.freed = True
    if irp.registry is not None:
        irp.registry.pop(irp.id, None)


def _finish(irp: Irp) -> None:
    """The I/O manager's part once every driver is done with the IRP.

    It frees the IRPs it built and associated IRPs; an IRP a driver allocated
    stays the driver's to free.
    """
    irp.completed = True
    master = irp.master_irp
    if master is not None:
        master.irp_count -= 1
        _free(irp)
        if master.irp_count == 0:
            IoCompleteRequest(master)
        return
    if not irp.driver_allocated:
        _free(irp)
    if irp.user_iosb is not None:
        irp.user_iosb.status = irp.io_status.status
        irp.user_iosb.information = irp.io_status.information
    if irp.user_event is not None:
        irp.user_event.KeSetEvent()
    if irp.user_callback is not None:
        irp.user_callback(irp)


def IoSetNextIrpStackLocation(irp: Irp, device: DeviceObject | None = None) -> None:  # noqa: N802
    """Take ownership of the top location of an IRP this driver allocated."""
    irp.current_location -= 1
    irp.stack[irp.current_location].device_object = device


def IoForwardIrpSynchronously(lower: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """Send ``irp`` to ``lower`` and wait until it comes back (PASSIVE_LEVEL).

    The completion routine returns STATUS_MORE_PROCESSING_REQUIRED so the
    caller still owns the IRP afterwards and must complete it.
    """
    from usbtrace.wdm.sched import KEvent

    sched = lower.driver_object.kernel.scheduler
    sched.require_irql(0, "IoForwardIrpSynchronously")
    event = KEvent()

    def signal(device: DeviceObject | None, i: Irp, context: Any) -> int:
        event.KeSetEvent()
        return STATUS_MORE_PROCESSING_REQUIRED

    IoCopyCurrentIrpStackLocationToNext(irp)
    IoSetCompletionRoutine(irp, signal, None)
    if IoCallDriver(lower, irp) == STATUS_PENDING:
        sched.KeWaitForSingleObject(event, "IoForwardIrpSynchronously")
    return int(irp.io_status.status)
