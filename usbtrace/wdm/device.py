"""Driver objects, device objects and device stacks (wdm.h, IoCreateDevice & co).

A driver is a Python module with a ``DriverEntry(driver, registry_path)`` that
fills the MajorFunction table and sets ``driver_extension.add_device`` and
``driver_unload``, exactly as a WDM driver does.  Unfilled MajorFunction slots
complete with STATUS_INVALID_DEVICE_REQUEST, as the I/O manager's default does.

Lifetime follows the object manager: a file object holds a reference on the
device it opened (``ObReferenceObject``).  ``IoDeleteDevice`` takes the name
away at once and marks the device DOE_DELETE_PENDING; the object itself goes
(IopCompleteUnloadOrDelete) only when the last reference is dropped, and a
driver whose unload was asked for is unloaded only once its last device
object is gone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from usbtrace.wdm.irp import IRP_MJ_MAXIMUM_FUNCTION, Irp
from usbtrace.wdm.status import NTSTATUS

if TYPE_CHECKING:
    from usbtrace.wdm.kernel import Kernel

# DEVICE_OBJECT.Flags
DO_BUFFERED_IO = 0x00000004
DO_DIRECT_IO = 0x00000010
DO_DEVICE_INITIALIZING = 0x00000080
DO_POWER_PAGABLE = 0x00002000

# DEVOBJ_EXTENSION.ExtensionFlags
DOE_UNLOAD_PENDING = 0x00000001
DOE_DELETE_PENDING = 0x00000002

# Device types (devioctl.h)
FILE_DEVICE_BUS_EXTENDER = 0x2A
FILE_DEVICE_DISK = 0x07
FILE_DEVICE_MASS_STORAGE = 0x2D
FILE_DEVICE_UNKNOWN = 0x22
FILE_DEVICE_USB = 0x22

DispatchRoutine = Callable[["DeviceObject", Irp], int]
AddDeviceRoutine = Callable[["DriverObject", "DeviceObject"], int]


def IopInvalidDeviceRequest(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """The I/O manager's default dispatch routine for an unhandled major function."""
    from usbtrace.wdm.iomgr import IoCompleteRequest

    irp.io_status.status = NTSTATUS.STATUS_INVALID_DEVICE_REQUEST
    irp.io_status.information = 0
    IoCompleteRequest(irp)
    return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST


class DriverExtension:
    __slots__ = ("add_device",)

    def __init__(self) -> None:
        self.add_device: AddDeviceRoutine | None = None


class DriverObject:
    """DRIVER_OBJECT: the dispatch table and entry points of one loaded driver."""

    def __init__(self, kernel: Kernel, name: str) -> None:
        self.kernel = kernel
        self.name = name  # e.g. "\\Driver\\usbstor"
        self.major_function: list[DispatchRoutine] = [IopInvalidDeviceRequest] * (
            IRP_MJ_MAXIMUM_FUNCTION + 1
        )
        self.driver_extension = DriverExtension()
        self.driver_unload: Callable[[DriverObject], None] | None = None
        self.driver_start_io: Callable[[DeviceObject, Any], None] | None = None  # DriverStartIo
        self.device_objects: list[DeviceObject] = []
        self.driver_context: Any = None  # driver-global state (what C keeps in globals)
        self.module = ""  # where the driver's code lives: its routines' __module__
        self.unload_pending = False  # PnP asked for the unload; it waits for the last device
        self.unloaded = False

    def __repr__(self) -> str:
        return f"<DriverObject {self.name}>"


_device_numbers = itertools.count(1)


class DeviceObject:
    """DEVICE_OBJECT: one layer of a device stack."""

    def __init__(
        self, driver: DriverObject, extension: Any, name: str | None, device_type: int
    ) -> None:
        self.driver_object = driver
        self.device_extension = extension
        self.name = name or f"\\Device\\{next(_device_numbers):08X}"
        self.device_type = device_type
        self.flags = DO_DEVICE_INITIALIZING
        self.characteristics = 0
        self.stack_size = 1
        self.attached_device: DeviceObject | None = None  # the device above this one
        self.attached_to: DeviceObject | None = None  # the device this one sits on
        self.deleted = False  # IoDeleteDevice was called (DOE_DELETE_PENDING)
        self.freed = False  # the object itself is gone: no reference was left
        self.reference_count = 0
        self.extension_flags = 0
        self.power_state = 0  # DEVICE_POWER_STATE as PoSetPowerState last reported it
        # IoStartPacket's state: CurrentIrp and the DeviceQueue (KDEVICE_QUEUE)
        self.current_irp: Any = None
        self.device_queue: Any = None

    def __repr__(self) -> str:
        return f"<DeviceObject {self.name} of {self.driver_object.name}>"


class FileObject:
    """FILE_OBJECT: one open of a device; the handle a request came from."""

    _ids = itertools.count(1)

    def __init__(self, device: DeviceObject, file_name: str) -> None:
        self.id = next(self._ids)
        self.device_object = device
        self.file_name = file_name
        self.current_byte_offset = 0
        self.cleanup_complete = False
        self.closed = False


def IoCreateDevice(  # noqa: N802
    driver: DriverObject,
    extension: Any,
    name: str | None,
    device_type: int,
    characteristics: int = 0,
) -> DeviceObject:
    """Create a device object owned by ``driver`` (flag DO_DEVICE_INITIALIZING set)."""
    driver.kernel.scheduler.require_irql(0, "IoCreateDevice")
    device = DeviceObject(driver, extension, name, device_type)
    device.characteristics = characteristics
    driver.device_objects.append(device)
    if name:
        driver.kernel.register_name(name, device)
    return device


def IoGetAttachedDevice(device: DeviceObject) -> DeviceObject:  # noqa: N802
    """The top of the stack ``device`` belongs to."""
    while device.attached_device is not None:
        device = device.attached_device
    return device


def IoAttachDeviceToDeviceStack(source: DeviceObject, target: DeviceObject) -> DeviceObject:  # noqa: N802
    """Put ``source`` on top of ``target``'s stack; return the device it now sits on."""
    source.driver_object.kernel.scheduler.require_irql(0, "IoAttachDeviceToDeviceStack")
    top = IoGetAttachedDevice(target)
    if top.deleted:
        raise RuntimeError(f"cannot attach to deleted {top!r}")
    top.attached_device = source
    source.attached_to = top
    source.stack_size = top.stack_size + 1
    return top


def IoDetachDevice(target: DeviceObject) -> None:  # noqa: N802
    """Detach whatever is attached on top of ``target``."""
    above = target.attached_device
    if above is not None:
        above.attached_to = None
    target.attached_device = None


def ObReferenceObject(device: DeviceObject) -> None:  # noqa: N802
    """Keep ``device`` from being freed (a file object open on it does this)."""
    if device.freed:
        from usbtrace.wdm.sched import BugCheck

        raise BugCheck("DRIVER_VERIFIER_IOMANAGER_VIOLATION",
                       f"reference taken on freed {device!r}")
    device.reference_count += 1


def ObDereferenceObject(device: DeviceObject) -> None:  # noqa: N802
    """Drop a reference; the last one frees a delete-pending device and tells PnP."""
    from usbtrace.wdm.sched import BugCheck

    if device.reference_count <= 0:
        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                       f"{device!r} dereferenced more often than referenced")
    device.reference_count -= 1
    if device.reference_count:
        return
    if device.extension_flags & DOE_DELETE_PENDING:
        IopCompleteUnloadOrDelete(device)
    pnp = device.driver_object.kernel.pnp
    if pnp is not None:
        pnp.last_reference_dropped(device)


def IopCompleteUnloadOrDelete(device: DeviceObject) -> None:  # noqa: N802
    """Free a delete-pending device with no references; unload its driver if that waits."""
    driver = device.driver_object
    device.freed = True
    if device in driver.device_objects:
        driver.device_objects.remove(device)
    if not driver.device_objects and driver.unload_pending:
        pnp = driver.kernel.pnp
        if pnp is not None:
            pnp.unload_driver(driver)


def IoDeleteDevice(device: DeviceObject) -> None:  # noqa: N802
    """Delete ``device``: its name goes now, the object when no reference is left."""
    driver = device.driver_object
    driver.kernel.scheduler.require_irql(0, "IoDeleteDevice")
    if device.deleted:
        from usbtrace.wdm.sched import BugCheck

        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION", f"{device!r} deleted twice")
    device.deleted = True
    device.extension_flags |= DOE_DELETE_PENDING
    driver.kernel.unregister_device(device)
    if device.reference_count == 0:
        IopCompleteUnloadOrDelete(device)
