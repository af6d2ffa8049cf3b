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
    IRP_BUFFERED_IO,
    IRP_INPUT_OPERATION,
    SL_INVOKE_ON_CANCEL,
    SL_INVOKE_ON_ERROR,
    SL_INVOKE_ON_SUCCESS,
    SL_PENDING_RETURNED,
    CancelRoutine,
    CompletionRoutine,
    Irp,
    release_irp,
)
from usbtrace.wdm.sched import APC_LEVEL, DISPATCH_LEVEL, BugCheck, KSpinLock
from usbtrace.wdm.status import NTSTATUS

STATUS_PENDING = NTSTATUS.STATUS_PENDING.value
STATUS_MORE_PROCESSING_REQUIRED = NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED.value
_INVOKE_ALWAYS = SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL
# Irp.pending_checks' bit for stack location n, and the mask that clears it: looked
# up, not shifted, on every IoCallDriver of an IRP that pended (a filter that marks
# the IRP pending from its completion routine sets and clears one each pass); an IRP
# has at most 127 locations (StackSize is a CCHAR)
_BIT = [1 << n for n in range(128)]
_CLEAR_BIT = [~(1 << n) for n in range(128)]


def IoCallDriver(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """Hand ``irp`` to the driver of ``device`` at the next stack location."""
    location = irp.current_location - 1
    if location < 0:
        raise BugCheck("NO_MORE_IRP_STACK_LOCATIONS", f"{irp!r} sent to {device!r}")
    driver = device.driver_object
    if driver.kernel.scheduler.irql > DISPATCH_LEVEL:
        raise BugCheck("IRQL_NOT_LESS_OR_EQUAL", "IoCallDriver above DISPATCH_LEVEL")
    if device.freed:
        raise BugCheck("DRIVER_VERIFIER_IOMANAGER_VIOLATION",
                       f"{irp!r} sent to deleted {device!r}")
    if driver.unloaded:
        raise BugCheck("DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
                       f"{irp!r} dispatched into unloaded {driver.name}")
    if irp.registry is None:
        irps = irp.registry = driver.kernel.irps
        irps[irp.id] = irp
    irp.current_location = location
    stack = irp.stack[location]
    stack.device_object = device
    if irp.pending_checks:
        irp.pending_checks &= _CLEAR_BIT[location]
    status = driver.major_function[stack.major_function](device, irp)
    if status == STATUS_PENDING and not stack.control & SL_PENDING_RETURNED:
        # Driver Verifier: STATUS_PENDING without IoMarkIrpPending.  A pass-through
        # driver may still mark it from its completion routine (if PendingReturned,
        # IoMarkIrpPending), so an IRP not yet completed is checked when completion
        # reaches this location.  (Completion past this location covers an IRP
        # completed altogether: its walk ends at the top, above every location.)
        if irp.current_location > location:
            raise BugCheck("DRIVER_VERIFIER_IOMANAGER_VIOLATION",
                           f"{driver.name} returned STATUS_PENDING for {irp!r} without "
                           "IoMarkIrpPending")
        irp.pending_checks |= _BIT[location]
    return status


def IoSkipCurrentIrpStackLocation(irp: Irp) -> None:  # noqa: N802
    """Let the next driver reuse this driver's stack location."""
    irp.current_location += 1


def IoCopyCurrentIrpStackLocationToNext(irp: Irp) -> None:  # noqa: N802
    """Copy this location to the next one, without completion routine or control bits.

    As wdm.h's inline does: the fields before CompletionRoutine are copied and Control
    is cleared; CompletionRoutine and Context are left as they were.  With Control
    clear no invoke flag is set, so a routine left there from an earlier pass is
    never called (the caller's IoSetCompletionRoutine, if any, replaces both)."""
    src = irp.stack[irp.current_location]
    dst = irp.stack[irp.current_location - 1]
    dst.major_function = src.major_function
    dst.minor_function = src.minor_function
    dst.flags = src.flags
    dst.parameters = src.parameters
    dst.file_object = src.file_object
    dst.control = 0


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
    if invoke_on_success and invoke_on_error and invoke_on_cancel:  # what most drivers ask
        loc.control = _INVOKE_ALWAYS
    else:
        loc.control = (SL_INVOKE_ON_SUCCESS if invoke_on_success else 0) | \
            (SL_INVOKE_ON_ERROR if invoke_on_error else 0) | \
            (SL_INVOKE_ON_CANCEL if invoke_on_cancel else 0)


def IoMarkIrpPending(irp: Irp) -> None:  # noqa: N802
    irp.stack[irp.current_location].control |= SL_PENDING_RETURNED


def IoSetCancelRoutine(irp: Irp, routine: CancelRoutine | None) -> CancelRoutine | None:  # noqa: N802
    """Exchange the IRP's cancel routine, returning the previous one."""
    old = irp.cancel_routine
    irp.cancel_routine = routine
    return old


def _cancel_lock(device: DeviceObject) -> KSpinLock:
    """The machine's one cancel spin lock (IopCancelSpinLock)."""
    kernel = device.driver_object.kernel
    lock: KSpinLock | None = kernel.cancel_spin_lock
    if lock is None:
        lock = KSpinLock("the cancel spin lock")
        kernel.cancel_spin_lock = lock
    return lock


def IoAcquireCancelSpinLock(device: DeviceObject) -> int:  # noqa: N802
    """Take the cancel spin lock; the IRQL to give IoReleaseCancelSpinLock back."""
    kernel = device.driver_object.kernel
    return kernel.scheduler.KeAcquireSpinLock(kernel.cancel_spin_lock or _cancel_lock(device))


def IoReleaseCancelSpinLock(device: DeviceObject, irql: int) -> None:  # noqa: N802
    kernel = device.driver_object.kernel
    kernel.scheduler.KeReleaseSpinLock(kernel.cancel_spin_lock or _cancel_lock(device), irql)


def IoCancelIrp(irp: Irp) -> bool:  # noqa: N802
    """Set the cancel flag and call the cancel routine, if one is set.

    As Windows does, the routine is called holding the cancel spin lock, with the
    IRQL to restore in ``irp.cancel_irql``; the routine must release it
    (IoReleaseCancelSpinLock(irp.CancelIrql)).  A routine that returns still holding
    it stops the machine.  Returns whether a routine was called, as IoCancelIrp's
    BOOLEAN does.
    """
    irp.cancel = True
    device = irp.stack[irp.current_location].device_object \
        if irp.current_location < irp.stack_count else None
    if device is None:
        return IoSetCancelRoutine(irp, None) is not None
    lock = _cancel_lock(device)
    sched = device.driver_object.kernel.scheduler
    irql = sched.KeAcquireSpinLock(lock)
    routine = IoSetCancelRoutine(irp, None)
    if routine is None:
        sched.KeReleaseSpinLock(lock, irql)
        return False
    irp.cancel_irql = irql
    routine(device, irp)
    if lock.held:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       f"cancel routine {routine.__name__} returned holding the cancel spin lock")
    return True


# ---- StartIo: IoStartPacket, IoStartNextPacket and the device queue ----------------


class KDeviceQueue:
    """KDEVICE_QUEUE: IRPs waiting for the device's StartIo; Busy while one is started."""

    __slots__ = ("entries", "busy")

    def __init__(self) -> None:
        self.entries: list[Irp] = []
        self.busy = False


def _device_queue(device: DeviceObject) -> KDeviceQueue:
    queue: KDeviceQueue | None = device.device_queue
    if queue is None:
        queue = device.device_queue = KDeviceQueue()
    return queue


def IoStartPacket(device: DeviceObject, irp: Irp, key: int | None,  # noqa: N802
                  cancel_function: CancelRoutine | None) -> None:
    """Start ``irp`` on the driver's StartIo now, or queue it while the device is busy.

    As ntoskrnl's IoStartPacket (``io/iomgr/device.c``): at DISPATCH_LEVEL, holding
    the cancel spin lock, set the cancel routine, then KeInsertDeviceQueue; if the
    device was not busy, the IRP becomes CurrentIrp and DriverStartIo runs (at
    DISPATCH_LEVEL).  An IRP cancelled before it is queued is handed to its cancel
    routine.
    """
    kernel = device.driver_object.kernel
    sched = kernel.scheduler
    old = sched.KeRaiseIrql(DISPATCH_LEVEL)
    lock = kernel.cancel_spin_lock or _cancel_lock(device)  # made at the first use
    irql = sched.KeAcquireSpinLock(lock)
    if cancel_function is not None:
        irp.cancel_routine = cancel_function  # IoSetCancelRoutine
    queue = device.device_queue
    if queue is None:
        queue = device.device_queue = KDeviceQueue()
    if queue.busy:
        if key is None:
            queue.entries.append(irp)
        else:  # sorted by key, as KeInsertByKeyDeviceQueue
            keys = [getattr(i, "sort_key", 0) for i in queue.entries]
            irp.sort_key = key
            queue.entries.insert(next((n for n, k in enumerate(keys) if k > key),
                                      len(keys)), irp)
        if irp.cancel and cancel_function is not None and \
                IoSetCancelRoutine(irp, None) is not None:
            irp.cancel_irql = irql
            cancel_function(device, irp)  # releases the cancel spin lock
        else:
            sched.KeReleaseSpinLock(lock, irql)
    else:
        queue.busy = True
        device.current_irp = irp
        sched.KeReleaseSpinLock(lock, irql)
        start_io = device.driver_object.driver_start_io
        assert start_io is not None, "IoStartPacket needs a DriverStartIo"
        start_io(device, irp)
    sched.KeLowerIrql(old)


def IoStartNextPacket(device: DeviceObject, cancelable: bool) -> None:  # noqa: N802
    """The current IRP is done: start the next queued one, or mark the device idle.

    Callers are at DISPATCH_LEVEL, as the WDK requires.  With ``cancelable`` the
    dequeue happens under the cancel spin lock.
    """
    kernel = device.driver_object.kernel
    sched = kernel.scheduler
    if sched.irql != DISPATCH_LEVEL:
        raise BugCheck("IRQL_NOT_LESS_OR_EQUAL", "IoStartNextPacket below DISPATCH_LEVEL")
    lock = kernel.cancel_spin_lock or _cancel_lock(device)  # made at the first use
    if cancelable:
        sched.KeAcquireSpinLockAtDpcLevel(lock)
    device.current_irp = None
    queue = device.device_queue
    if queue is None:
        queue = device.device_queue = KDeviceQueue()
    irp = queue.entries.pop(0) if queue.entries else None
    if irp is None:
        queue.busy = False
    else:
        device.current_irp = irp
    if cancelable:
        sched.KeReleaseSpinLockFromDpcLevel(lock)
    if irp is not None:
        start_io = device.driver_object.driver_start_io
        assert start_io is not None
        start_io(device, irp)


def KeRemoveEntryDeviceQueue(device: DeviceObject, irp: Irp) -> bool:  # noqa: N802
    """Take a queued IRP out of the device queue (a cancel routine does); False if it
    was not there (it is CurrentIrp, or already started)."""
    queue = _device_queue(device)
    if irp in queue.entries:
        queue.entries.remove(irp)
        return True
    return False


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
    checks = irp.pending_checks
    # the invoke flag this status calls for, taken again after each routine (a routine
    # may change the status for the ones above it)
    invoke = SL_INVOKE_ON_SUCCESS if status < 0x80000000 else SL_INVOKE_ON_ERROR
    while index < count:
        loc = stack[index]
        control = loc.control
        if control & SL_PENDING_RETURNED:
            irp.pending_returned = True
        else:
            if checks and checks & _BIT[index]:
                driver = loc.device_object.driver_object.name if loc.device_object else "?"
                raise BugCheck("DRIVER_VERIFIER_IOMANAGER_VIOLATION",
                               f"{driver} returned STATUS_PENDING for {irp!r} and it "
                               "completed without IoMarkIrpPending")
            irp.pending_returned = False
        routine = loc.completion_routine
        index += 1
        irp.current_location = index
        if routine is not None and (control & invoke or
                                    control & SL_INVOKE_ON_CANCEL and irp.cancel):
            if index < count:  # the routine runs in the context of the driver above
                device = stack[index].device_object
                if device is not None and device.deleted:
                    _completion_on_deleted(device, irp)
            else:
                device = None
            if routine(device, irp, loc.context) == STATUS_MORE_PROCESSING_REQUIRED:
                return
            invoke = SL_INVOKE_ON_SUCCESS if irp.io_status.status < 0x80000000 \
                else SL_INVOKE_ON_ERROR
        elif control & SL_PENDING_RETURNED and index < count:
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


def _finish(irp: Irp) -> None:
    """The I/O manager's part once every driver is done with the IRP.

    It frees the IRPs it built and associated IRPs; an IRP a driver allocated
    stays the driver's to free (and must never complete to the I/O manager).
    An associated IRP counts down its master.  For any other IRP, the last stage
    (IopCompleteRequest: copy a buffered output back, fill the caller's status
    block, signal its event, free the IRP) must run in the requesting thread: an
    IRP that pended (PendingReturned) gets it as an APC to that thread -- here a
    turn on the scheduler at APC_LEVEL, never inside the DPC that completed the
    IRP; one completed before its dispatch routine returned is still in that
    thread and finishes at once.
    """
    irp.completed = True
    master = irp.master_irp
    if master is not None:
        master.irp_count -= 1
        release_irp(irp)  # IoFreeIrp: the I/O manager made it
        if master.irp_count == 0:
            IoCompleteRequest(master)
        return
    if irp.driver_allocated:
        # an IRP from IoAllocateIrp has no thread to finish in: its owner's completion
        # routine must return STATUS_MORE_PROCESSING_REQUIRED, then IoFreeIrp it
        raise BugCheck("DRIVER_VERIFIER_IOMANAGER_VIOLATION",
                       f"{irp!r}, allocated by a driver, completed to the I/O manager: its "
                       "completion routine must return STATUS_MORE_PROCESSING_REQUIRED")
    if irp.pending_returned and (irp.user_iosb is not None or irp.user_event is not None
                                 or irp.user_callback is not None):
        sched = _scheduler_of(irp)
        if sched is not None:
            sched.schedule(0, _completion_apc, sched, irp)
            return
    IopCompleteRequest(irp)


def _scheduler_of(irp: Irp) -> Any:
    top = irp.stack[-1].device_object  # the first driver's location, as a rule
    if top is not None:
        return top.driver_object.kernel.scheduler
    for loc in irp.stack:
        if loc.device_object is not None:
            return loc.device_object.driver_object.kernel.scheduler
    return None


def _completion_apc(sched: Any, irp: Irp) -> None:
    """The special kernel APC in the requesting thread, at APC_LEVEL."""
    old = sched.irql
    sched.irql = APC_LEVEL
    try:
        IopCompleteRequest(irp)
    finally:
        sched.irql = old


def IopCompleteRequest(irp: Irp) -> None:  # noqa: N802
    """The completion's last stage, in the requesting thread: METHOD_BUFFERED output
    copied back to the caller's buffer (IRP_BUFFERED_IO | IRP_INPUT_OPERATION, as many
    bytes as Information says), the status block, the event."""
    flags = irp.flags
    if flags & IRP_BUFFERED_IO and flags & IRP_INPUT_OPERATION and \
            irp.user_buffer is not None and isinstance(irp.system_buffer, bytearray) and \
            isinstance(irp.io_status.information, int) and \
            irp.io_status.status < 0xC0000000:
        n = min(irp.io_status.information, len(irp.user_buffer), len(irp.system_buffer))
        irp.user_buffer[:n] = irp.system_buffer[:n]
    if irp.user_iosb is not None:
        irp.user_iosb.status = irp.io_status.status
        irp.user_iosb.information = irp.io_status.information
    if irp.user_event is not None:
        irp.user_event.KeSetEvent()
    if irp.user_callback is not None:
        irp.user_callback(irp)
    release_irp(irp)  # IoFreeIrp: the I/O manager built it


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
