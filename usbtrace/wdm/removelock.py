"""Remove locks (IO_REMOVE_LOCK): what keeps a device object alive while IRPs use it.

A driver acquires its device's remove lock for every IRP it dispatches and
releases it when it is done with the IRP (in its completion routine for an
IRP it passes down).  On IRP_MN_REMOVE_DEVICE it calls
``IoReleaseRemoveLockAndWait``: from then on every acquire fails with
STATUS_DELETE_PENDING, and the call returns only once every IRP that held
the lock has been released, so the driver can detach and delete its device
without a completion routine ever running on a deleted device object.

As in ntoskrnl (and ReactOS ``ntoskrnl/io/iomgr/remlock.c``), the count
starts at one, the bias that ``IoReleaseRemoveLockAndWait`` drops.  Releasing
more than was acquired takes the count to zero before removal, a bug check.

Only a checked build tracks tags (``IoInitializeRemoveLockEx`` with the debug
block, ReactOS ``remlock.c``: the ``IO_REMOVE_LOCK_DBG_BLOCK`` path); a free
build counts and nothing more.  So does this model unless the lock is set up
with ``checked=True``: then releasing with a tag that holds nothing is a bug
check even while other holders keep the count up.  Every IRP every driver
passes acquires and releases a lock, so the free build's count is what the
stack pays; the test suite runs the checked build (``CHECKED_BUILD``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usbtrace.wdm.sched import BugCheck, KEvent
from usbtrace.wdm.status import NTSTATUS

if TYPE_CHECKING:
    from usbtrace.wdm.sched import Scheduler


# What IoInitializeRemoveLock sets up when its caller does not say: the tests turn it
# on (tests/conftest.py), so that every driver's locks track their tags there
CHECKED_BUILD = False


class IoRemoveLock:
    """IO_REMOVE_LOCK: the removed flag, the I/O count, and the event REMOVE waits on."""

    __slots__ = ("removed", "io_count", "remove_event", "tags", "scheduler", "name")

    def __init__(self) -> None:
        self.removed = True  # until IoInitializeRemoveLock: a lock never set up refuses
        self.io_count = 1
        self.remove_event = KEvent()
        self.tags: dict[int, int] | None = None  # the checked build's holders by tag
        self.scheduler: Scheduler | None = None
        self.name = ""


def IoInitializeRemoveLock(lock: IoRemoveLock, scheduler: Scheduler, name: str = "",  # noqa: N802
                           checked: bool | None = None) -> None:
    """Set the lock up for a new device object (in AddDevice); ``checked``: track the
    holders by tag, as a checked build's IoInitializeRemoveLockEx does (by default,
    as ``CHECKED_BUILD`` says)."""
    lock.removed = False
    lock.io_count = 1
    lock.remove_event = KEvent()
    lock.tags = {} if (CHECKED_BUILD if checked is None else checked) else None
    lock.scheduler = scheduler
    lock.name = name


def _tag_key(tag: object) -> int:
    return id(tag)


_SUCCESS = NTSTATUS.STATUS_SUCCESS.value
_DELETE_PENDING = NTSTATUS.STATUS_DELETE_PENDING.value


def IoAcquireRemoveLock(lock: IoRemoveLock, tag: object) -> int:  # noqa: N802
    """Count one more user of the device; STATUS_DELETE_PENDING once removal began."""
    if lock.removed:  # removal began, or the lock was never set up
        if lock.scheduler is None:
            raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                           "IoAcquireRemoveLock on a remove lock never initialized")
        if lock.io_count == 0:  # the count went up and back down: the last one out
            lock.remove_event.KeSetEvent()
        return _DELETE_PENDING
    lock.io_count += 1
    if lock.tags is not None:  # a checked build's lock
        tags = lock.tags
        key = id(tag)  # _tag_key, inline
        tags[key] = tags.get(key, 0) + 1
    return _SUCCESS


def IoReleaseRemoveLock(lock: IoRemoveLock, tag: object) -> None:  # noqa: N802
    """Drop one user; the last one out after removal began wakes the waiting REMOVE."""
    if lock.tags is not None:  # a checked build's lock
        tags = lock.tags
        key = id(tag)
        held = tags.get(key, 0)
        if held == 1:
            del tags[key]
        elif held == 0:
            raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                           f"{lock.name}: remove lock released with a tag that holds nothing")
        else:
            tags[key] = held - 1
    lock.io_count -= 1
    if not lock.io_count:
        if lock.scheduler is None:
            raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                           "IoReleaseRemoveLock on a remove lock never initialized")
        if not lock.removed:
            raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                           f"{lock.name}: remove lock count reached zero before removal")
        lock.remove_event.KeSetEvent()


def IoReleaseRemoveLockAndWait(lock: IoRemoveLock, tag: object) -> None:  # noqa: N802
    """In IRP_MN_REMOVE_DEVICE: refuse new users, release ours, wait for the rest.

    Waiting runs the machine (PASSIVE_LEVEL only), so in-flight IRPs complete
    and release the lock before this returns.
    """
    scheduler = lock.scheduler
    if scheduler is None:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       "IoReleaseRemoveLockAndWait on a remove lock never initialized")
    scheduler.require_irql(0, "IoReleaseRemoveLockAndWait")
    if lock.removed:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       f"{lock.name}: IoReleaseRemoveLockAndWait called twice")
    lock.removed = True
    lock.io_count -= 1  # the bias from IoInitializeRemoveLock
    IoReleaseRemoveLock(lock, tag)
    if lock.io_count > 0:
        scheduler.KeWaitForSingleObject(lock.remove_event, f"{lock.name} remove lock")
