"""Object lifetime: remove locks, references, deferred REMOVE and unload, Verifier checks."""

from __future__ import annotations

from typing import Any

import pytest

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.drivers import disk
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.records import COMPLETE, SUBMIT, Event
from usbtrace.wdm.device import DeviceObject
from usbtrace.wdm.iomgr import IoCallDriver
from usbtrace.wdm.irp import (
    IRP_MJ_CLEANUP,
    IRP_MJ_CLOSE,
    IRP_MJ_PNP,
    IRP_MJ_READ,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_SURPRISE_REMOVAL,
    IoAllocateIrp,
    IoFreeIrp,
    Irp,
    ReadWriteParameters,
)
from usbtrace.wdm.removelock import (
    IoAcquireRemoveLock,
    IoInitializeRemoveLock,
    IoReleaseRemoveLock,
    IoReleaseRemoveLockAndWait,
    IoRemoveLock,
)
from usbtrace.wdm.sched import BugCheck, Scheduler
from usbtrace.wdm.status import NTSTATUS
from usbtrace.wdm.win32 import NtStatusError

from .conftest import Stack

DISK = "\\Driver\\disk"


def _pnp(events: list[Event], position: str, kind: str = SUBMIT) -> list[int | None]:
    return [e.minor for e in events
            if e.position == position and e.kind == kind and e.major == IRP_MJ_PNP]


def _disk_fdo(stack: Stack) -> DeviceObject:
    fdo = stack.machine.kernel.lookup(DISK_PATH)
    assert fdo is not None
    return fdo


# ---- remove locks ------------------------------------------------------------------


def test_remove_lock_refuses_new_users_and_waits_for_the_last_one() -> None:
    """IoReleaseRemoveLockAndWait: acquisitions fail with STATUS_DELETE_PENDING once it is
    called, and it returns only after every holder released (Microsoft Learn, "Using Remove
    Locks"; ReactOS ntoskrnl/io/iomgr/remlock.c IoReleaseRemoveLockAndWaitEx)."""
    scheduler = Scheduler()
    lock = IoRemoveLock()
    IoInitializeRemoveLock(lock, scheduler, "test")
    in_flight, remove = object(), object()
    assert IoAcquireRemoveLock(lock, in_flight) == NTSTATUS.STATUS_SUCCESS
    assert IoAcquireRemoveLock(lock, remove) == NTSTATUS.STATUS_SUCCESS
    released: list[float] = []

    def finish() -> None:
        released.append(scheduler.now())
        IoReleaseRemoveLock(lock, in_flight)

    scheduler.schedule(5_000, finish)
    IoReleaseRemoveLockAndWait(lock, remove)
    assert released == [5e-6] and lock.io_count == 0
    assert IoAcquireRemoveLock(lock, object()) == NTSTATUS.STATUS_DELETE_PENDING


def test_releasing_a_remove_lock_not_held_is_a_bug_check() -> None:
    lock = IoRemoveLock()
    IoInitializeRemoveLock(lock, Scheduler(), "test")
    with pytest.raises(BugCheck, match="DRIVER_VERIFIER_DETECTED_VIOLATION"):
        IoReleaseRemoveLock(lock, object())


def test_only_a_checked_remove_lock_knows_which_tag_holds_it() -> None:
    """A free build counts (ReactOS ntoskrnl/io/iomgr/remlock.c: the tags are kept only
    with the IO_REMOVE_LOCK_DBG_BLOCK of IoInitializeRemoveLockEx in a checked build):
    a release under the wrong tag passes while someone else keeps the count up.  A
    checked lock names the tag that holds nothing; a free one catches a release past
    the count."""
    held, stranger = object(), object()
    free, checked = IoRemoveLock(), IoRemoveLock()
    IoInitializeRemoveLock(free, Scheduler(), "free", checked=False)
    IoInitializeRemoveLock(checked, Scheduler(), "checked", checked=True)
    for lock in (free, checked):
        assert IoAcquireRemoveLock(lock, held) == NTSTATUS.STATUS_SUCCESS
    IoReleaseRemoveLock(free, stranger)
    assert free.io_count == 1
    with pytest.raises(BugCheck, match="tag that holds nothing"):
        IoReleaseRemoveLock(checked, stranger)
    IoReleaseRemoveLock(checked, held)
    with pytest.raises(BugCheck, match="count reached zero before removal"):
        IoReleaseRemoveLock(free, held)
    with pytest.raises(BugCheck, match="tag that holds nothing"):
        IoReleaseRemoveLock(checked, held)


def test_a_remove_lock_never_initialized_is_a_bug_check() -> None:
    with pytest.raises(BugCheck, match="never initialized"):
        IoAcquireRemoveLock(IoRemoveLock(), object())
    with pytest.raises(BugCheck, match="never initialized"):
        IoReleaseRemoveLock(IoRemoveLock(), object())


# ---- outcome 1: unplug with a 192 KiB read in flight and the handle open -----------


def test_unplug_with_a_read_in_flight_defers_remove_until_the_handle_closes(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """SURPRISE_REMOVAL at once; REMOVE_DEVICE only after the last handle is closed:
    "The driver must not call IoDeleteDevice or IoDetachDevice on device objects until the
    IRP_MN_SURPRISE_REMOVAL IRP succeeds and all open handles to the device are closed. The
    PnP manager then sends an IRP_MN_REMOVE_DEVICE request" (Microsoft Learn, SDV rule
    PnpSurpriseRemove; "Handling an IRP_MN_SURPRISE_REMOVAL Request")."""
    kernel = stack.machine.kernel
    seen: list[tuple[bool, bool]] = []
    original = disk.DiskTransferCompletion

    def watched(device: DeviceObject | None, assoc: Irp, context: Any) -> int:
        assert device is not None
        seen.append((device.deleted, device.driver_object.unloaded))
        return original(device, assoc, context)

    monkeypatch.setattr(disk, "DiskTransferCompletion", watched)
    h = stack.open()
    fdo = _disk_fdo(stack)
    start = len(stack.events)
    pending = stack.win32.ReadFile(h, bytearray(192 * 1024), 0, overlapped=True)
    stack.stick.unplug()
    with pytest.raises(NtStatusError, match="STATUS_DEVICE_NOT_CONNECTED"):
        stack.win32.GetOverlappedResult(h, pending)
    stack.machine.scheduler.run_until_idle()
    # three 64 KiB pieces, each finished on a live FDO of a loaded driver
    assert seen == [(False, False)] * 3
    events = stack.events[start:]
    assert IRP_MN_SURPRISE_REMOVAL in _pnp(events, "upper")
    assert IRP_MN_REMOVE_DEVICE not in _pnp(events, "upper") + _pnp(events, "lower")
    assert DISK in kernel.drivers and not fdo.deleted
    read_done = [e for e in events if e.position == "upper" and e.major == IRP_MJ_READ
                 and e.kind == COMPLETE]
    assert len(read_done) == 1  # the filter saw its completion, on its live device

    stack.win32.CloseHandle(h)
    events = stack.events[start:]
    upper = [(e.kind, e.major, e.minor if e.major == IRP_MJ_PNP else None) for e in events
             if e.position == "upper" and e.kind == SUBMIT]
    assert upper[-3:] == [(SUBMIT, IRP_MJ_CLEANUP, None), (SUBMIT, IRP_MJ_CLOSE, None),
                          (SUBMIT, IRP_MJ_PNP, IRP_MN_REMOVE_DEVICE)]
    assert _pnp(events, "lower")[-1] == IRP_MN_REMOVE_DEVICE
    assert fdo.freed and DISK not in kernel.drivers


# ---- outcome 2: CloseHandle after the unplug ----------------------------------------


def test_close_after_unplug_reaches_a_loaded_driver_and_only_then_it_unloads(
        stack: Stack) -> None:
    """IRP_MJ_CLEANUP and IRP_MJ_CLOSE of the last handle go to the surprise-removed stack,
    whose drivers are still loaded; the device objects go with REMOVE_DEVICE and the driver
    unloads once its last device object is gone (Microsoft Learn, "Handling an
    IRP_MN_SURPRISE_REMOVAL Request"; ReactOS ntoskrnl/io/iomgr/device.c
    IopCompleteUnloadOrDelete)."""
    kernel = stack.machine.kernel
    driver = kernel.drivers[DISK]
    calls: list[tuple[int, bool, bool]] = []
    for major in (IRP_MJ_CLEANUP, IRP_MJ_CLOSE):
        routine = driver.major_function[major]

        def spy(device: DeviceObject, irp: Irp, routine: Any = routine) -> int:
            loc = irp.IoGetCurrentIrpStackLocation()
            calls.append((loc.major_function, device.deleted, device.driver_object.unloaded))
            return int(routine(device, irp))

        driver.major_function[major] = spy
    h = stack.open()
    stack.stick.unplug()
    stack.machine.scheduler.run_until_idle()
    with pytest.raises(NtStatusError, match="STATUS_DEVICE_NOT_CONNECTED"):
        stack.win32.ReadFile(h, bytearray(512), 0)  # the open handle still reaches disk
    with pytest.raises(NtStatusError):
        stack.open()  # but nothing new opens: PhysicalDrive0 is gone
    assert DISK in kernel.drivers
    stack.win32.CloseHandle(h)
    assert calls == [(IRP_MJ_CLEANUP, False, False), (IRP_MJ_CLOSE, False, False)]
    assert driver.unloaded and DISK not in kernel.drivers


def test_a_handle_keeps_a_deleted_device_object_and_its_driver() -> None:
    """IoDeleteDevice with a file object still open: the name goes, the object stays
    DOE_DELETE_PENDING until the last reference is dropped, and only then can its driver
    unload (ReactOS ntoskrnl/io/iomgr/device.c IoDeleteDevice, IopDereferenceDeviceObject)."""
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    h = machine.win32.CreateFile(DISK_PATH)
    file_object = machine.win32.handles[h]
    fdo = file_object.device_object
    del machine.win32.handles[h]  # a handle the machine does not close for us
    machine.pnp.shutdown()  # orderly removal of everything with the file object open
    driver = fdo.driver_object
    assert fdo.deleted and not fdo.freed and fdo.reference_count == 1
    assert not machine.disk_present() and not driver.unloaded and driver.unload_pending
    machine.win32.handles[h] = file_object
    machine.win32.CloseHandle(h)  # CLEANUP and CLOSE reach the delete-pending FDO
    assert fdo.freed and driver.unloaded


# ---- Verifier checks ----------------------------------------------------------------


def test_a_driver_that_deletes_its_device_without_waiting_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk driver made to skip IoReleaseRemoveLockAndWait: its completion routine then
    runs for a deleted FDO, which Driver Verifier stops (I/O Verification)."""
    monkeypatch.setattr(disk, "IoReleaseRemoveLockAndWait", lambda lock, tag: None)
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    h = machine.win32.CreateFile(DISK_PATH)
    machine.win32.ReadFile(h, bytearray(192 * 1024), 0, overlapped=True)
    assert machine.root is not None
    usb = machine.root.children[0]
    with pytest.raises(BugCheck, match="DRIVER_VERIFIER_IOMANAGER_VIOLATION"):
        machine.pnp.remove(usb)


def test_unloading_a_driver_with_io_pending_is_bug_check_0xce() -> None:
    """Bug check 0xCE DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS: a driver
    unloaded while a completion routine of its own is still to run (Microsoft Learn,
    "Bug Check 0xCE")."""
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    h = machine.win32.CreateFile(DISK_PATH)
    machine.win32.ReadFile(h, bytearray(65536), 0, overlapped=True)
    with pytest.raises(BugCheck, match="DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING"):
        machine.pnp.unload_driver(machine.kernel.drivers[DISK])


def test_an_irp_sent_to_a_deleted_device_is_a_bug_check() -> None:
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    fdo = machine.kernel.lookup(DISK_PATH)
    assert fdo is not None
    machine.stop()
    irp = Irp(fdo.stack_size)
    loc = irp.IoGetNextIrpStackLocation()
    loc.major_function = IRP_MJ_READ
    loc.parameters = ReadWriteParameters(512, 0)
    with pytest.raises(BugCheck, match="DRIVER_VERIFIER_IOMANAGER_VIOLATION"):
        IoCallDriver(fdo, irp)


def test_an_irp_a_driver_never_frees_is_found_at_shutdown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Driver Verifier's leak check: an IoAllocateIrp IRP not freed when the machine stops."""
    original = disk.IoFreeIrp
    skipped: list[Irp] = []

    def forget_once(irp: Irp) -> None:
        if not skipped:
            skipped.append(irp)
            return
        original(irp)

    monkeypatch.setattr(disk, "IoFreeIrp", forget_once)
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    with pytest.raises(BugCheck, match="never freed at shutdown"):
        machine.stop()
    assert skipped


def test_freeing_an_irp_twice_is_a_bug_check() -> None:
    irp = IoAllocateIrp(1)
    IoFreeIrp(irp)
    with pytest.raises(BugCheck, match="MULTIPLE_IRP_COMPLETE_REQUESTS"):
        IoFreeIrp(irp)


def test_removing_the_parent_of_a_subtree_still_waiting_for_closes(stack: Stack) -> None:
    """The host controller goes while a surprise-removed stick still has a handle open: the
    stick's stacks get their REMOVE with it, the disk FDO stays DOE_DELETE_PENDING under
    the file object's reference, and the close that follows finds it and unloads disk."""
    h = stack.open()
    fdo = _disk_fdo(stack)
    stack.stick.unplug()
    stack.machine.scheduler.run_until_idle()
    file_object = stack.win32.handles.pop(h)  # kept open past the removal
    stack.machine.pnp.shutdown()
    assert stack.machine.pnp.roots == [] and stack.machine.pnp.pending_removals == []
    assert fdo.deleted and not fdo.freed and DISK in stack.machine.kernel.drivers
    stack.win32.handles[h] = file_object
    stack.win32.CloseHandle(h)
    assert fdo.freed and DISK not in stack.machine.kernel.drivers
