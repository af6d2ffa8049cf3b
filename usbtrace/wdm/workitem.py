"""Work items (IoAllocateWorkItem, IoQueueWorkItem): PASSIVE_LEVEL work queued from above.

A driver that must wait — send synchronous URBs, say — cannot do it in a completion
routine or DPC, which run at DISPATCH_LEVEL.  It queues a work item; a system worker
thread calls the routine at PASSIVE_LEVEL.  usbstor's Reset Recovery runs so (ReactOS
``drivers/usb/usbstor/error.c``: USBSTOR_QueueResetDevice queues
USBSTOR_ResetDeviceWorkItem on CriticalWorkQueue).

In the model the worker thread's turn is an event on the scheduler, due at once: it
runs when whatever is running now returns to the scheduler, at PASSIVE_LEVEL, never
inside the routine that queued it.  A wait inside the routine runs the machine until
its event is signalled, as any wait does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from usbtrace.wdm.device import DeviceObject
from usbtrace.wdm.sched import DISPATCH_LEVEL, PASSIVE_LEVEL, BugCheck

DelayedWorkQueue, CriticalWorkQueue = 0, 1
WorkItemRoutine = Callable[[DeviceObject, Any], None]


class IoWorkItem:
    """IO_WORKITEM: bound to a device object, queued at most once at a time."""

    __slots__ = ("device", "queued", "freed", "runs")

    def __init__(self, device: DeviceObject) -> None:
        self.device = device
        self.queued = False
        self.freed = False
        self.runs = 0


def IoAllocateWorkItem(device: DeviceObject) -> IoWorkItem:  # noqa: N802
    return IoWorkItem(device)


def IoFreeWorkItem(item: IoWorkItem) -> None:  # noqa: N802
    if item.queued:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION", "work item freed while queued")
    item.freed = True


def IoQueueWorkItem(item: IoWorkItem, routine: WorkItemRoutine, queue_type: int,  # noqa: N802
                    context: Any) -> None:
    """Queue ``routine(device, context)`` for a worker thread (IRQL <= DISPATCH_LEVEL)."""
    sched = item.device.driver_object.kernel.scheduler
    sched.require_irql(DISPATCH_LEVEL, "IoQueueWorkItem")
    if item.freed:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       "work item queued after IoFreeWorkItem")
    if item.queued:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       "work item queued again before it ran")
    item.queued = True

    def worker() -> None:
        item.queued = False
        item.runs += 1
        old = sched.irql
        sched.irql = PASSIVE_LEVEL  # a system worker thread
        try:
            routine(item.device, context)
        except BaseException:
            sched.irql = old
            raise
        if sched.irql != PASSIVE_LEVEL:
            raise BugCheck("IRQL_NOT_LESS_OR_EQUAL", "work item routine returned at raised IRQL")
        sched.irql = old

    sched.schedule(0, worker)
