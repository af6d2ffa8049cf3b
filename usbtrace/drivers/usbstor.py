"""USB mass-storage client driver (usbstor): Bulk-Only Transport under SCSI.

Split as Windows splits it (compare ReactOS ``drivers/usb/usbstor``):

* the **FDO** sits on the USB device's PDO.  At IRP_MN_START_DEVICE it reads
  the descriptors, selects the configuration, asks GET_MAX_LUN and sends an
  INQUIRY to each LUN; it reports one child **PDO** per LUN as BusRelations.
* each LUN **PDO** is the bottom of a disk stack.  IRP_MJ_SCSI arrives there
  with an SRB; the driver queues it (Bulk-Only runs one command at a time)
  and, when its turn comes, re-sends *that same IRP* down the USB stack three
  times — CBW, data, CSW — each time as IOCTL_INTERNAL_USB_SUBMIT_URB with
  ``USBSTOR_UrbCompletion``, which returns STATUS_MORE_PROCESSING_REQUIRED to
  keep the IRP and start the next phase.  So every URB of a command carries
  the SRB's IRP id.

What happens after each phase is the table ``PHASE_TRANSITIONS``: a CHECK
CONDITION is followed by an automatic REQUEST SENSE whose data becomes the
NTSTATUS; a stalled data or status phase is cleared with
SYNC_RESET_PIPE_AND_CLEAR_STALL (CLEAR_FEATURE(ENDPOINT_HALT) on the wire)
and the CSW read again; an invalid CSW or a phase error leads to Reset
Recovery (BOT §5.3.4: Bulk-Only Mass Storage Reset, then clear both halts),
after which the SRB ends with SRB_STATUS_BUS_RESET and STATUS_IO_DEVICE_ERROR,
as ReactOS's USBSTOR_CSWCompletionRoutine ends it (``scsi.c``); the class
driver above decides whether to send it again.

Lifetime: the FDO and each LUN PDO have a remove lock.  Dispatch routines
hold it while they work; an SRB holds its LUN's lock until it completes.
The FDO's IRP_MN_REMOVE_DEVICE fails what is queued, waits for the rest
(IoReleaseRemoveLockAndWait) and deletes the LUN PDOs it still has; a LUN
PDO's own REMOVE deletes it only once it is gone from the bus (its FDO
surprise-removed), as a bus driver keeps a PDO it still reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from usbtrace.storage import bot, scsi
from usbtrace.storage import ioctl as io
from usbtrace.storage.ntstatus import sense_to_ntstatus
from usbtrace.storage.srb import (
    SCSISTAT_CHECK_CONDITION,
    SRB_FLAGS_DATA_IN,
    SRB_FUNCTION_EXECUTE_SCSI,
    SRB_STATUS_ABORTED,
    SRB_STATUS_AUTOSENSE_VALID,
    SRB_STATUS_BUS_RESET,
    SRB_STATUS_DATA_OVERRUN,
    SRB_STATUS_ERROR,
    SRB_STATUS_NO_DEVICE,
    SRB_STATUS_SUCCESS,
    SRB_STATUS_TIMEOUT,
    Srb,
)
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb import urb as U
from usbtrace.wdm.device import (
    DO_DEVICE_INITIALIZING,
    DO_DIRECT_IO,
    DO_POWER_PAGABLE,
    FILE_DEVICE_DISK,
    FILE_DEVICE_MASS_STORAGE,
    DeviceObject,
    DriverObject,
    IoAttachDeviceToDeviceStack,
    IoCreateDevice,
    IoDeleteDevice,
    IoDetachDevice,
)
from usbtrace.wdm.iomgr import (
    IoAcquireCancelSpinLock,
    IoCallDriver,
    IoCancelIrp,
    IoCompleteRequest,
    IoCopyCurrentIrpStackLocationToNext,
    IoForwardIrpSynchronously,
    IoMarkIrpPending,
    IoReleaseCancelSpinLock,
    IoSetCancelRoutine,
    IoSetCompletionRoutine,
    IoSetNextIrpStackLocation,
    IoSkipCurrentIrpStackLocation,
    IoStartNextPacket,
    IoStartPacket,
    KeRemoveEntryDeviceQueue,
    complete_irp,
)
from usbtrace.wdm.irp import (
    IRP_MJ_CLEANUP,
    IRP_MJ_CLOSE,
    IRP_MJ_CREATE,
    IRP_MJ_DEVICE_CONTROL,
    IRP_MJ_INTERNAL_DEVICE_CONTROL,
    IRP_MJ_PNP,
    IRP_MJ_POWER,
    IRP_MJ_SCSI,
    IRP_MJ_SYSTEM_CONTROL,
    IRP_MN_CANCEL_REMOVE_DEVICE,
    IRP_MN_DEVICE_USAGE_NOTIFICATION,
    IRP_MN_QUERY_CAPABILITIES,
    IRP_MN_QUERY_DEVICE_RELATIONS,
    IRP_MN_QUERY_DEVICE_TEXT,
    IRP_MN_QUERY_ID,
    IRP_MN_QUERY_PNP_DEVICE_STATE,
    IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_SET_POWER,
    IRP_MN_START_DEVICE,
    IRP_MN_SURPRISE_REMOVAL,
    IRP_MN_WAIT_WAKE,
    SL_INVOKE_ON_CANCEL,
    SL_INVOKE_ON_ERROR,
    SL_INVOKE_ON_SUCCESS,
    BusQueryCompatibleIDs,
    BusQueryDeviceID,
    BusQueryHardwareIDs,
    BusQueryInstanceID,
    BusRelations,
    DeviceCapabilities,
    DeviceIoControlParameters,
    DeviceTextDescription,
    IoAllocateIrp,
    IoBuildDeviceIoControlRequest,
    IoFreeIrp,
    IoReuseIrp,
    Irp,
)
from usbtrace.wdm.mdl import (
    IoAllocateMdl,
    IoBuildPartialMdl,
    IoFreeMdl,
    MmBuildMdlForNonPagedPool,
)
from usbtrace.wdm.power import (
    PoCallDriver,
    PoRequestPowerIrp,
    PoSetPowerState,
    PoStartNextPowerIrp,
    PowerDeviceD0,
    PowerDeviceD2,
    PowerDeviceD3,
    PowerSystemWorking,
)
from usbtrace.wdm.removelock import (
    IoAcquireRemoveLock,
    IoInitializeRemoveLock,
    IoReleaseRemoveLock,
    IoReleaseRemoveLockAndWait,
    IoRemoveLock,
)
from usbtrace.wdm.sched import DISPATCH_LEVEL, PASSIVE_LEVEL, KDpc, KEvent, KTimer
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS
from usbtrace.wdm.workitem import (
    CriticalWorkQueue,
    IoAllocateWorkItem,
    IoQueueWorkItem,
    IoWorkItem,
)

STATUS_SUCCESS = NTSTATUS.STATUS_SUCCESS
STATUS_PENDING = NTSTATUS.STATUS_PENDING
STATUS_DEVICE_NOT_CONNECTED = NTSTATUS.STATUS_DEVICE_NOT_CONNECTED
USBD_STATUS_SUCCESS = U.USBD_STATUS_SUCCESS
STATUS_MORE_PROCESSING_REQUIRED = NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED.value
MAXIMUM_TRANSFER_LENGTH = 0x10000  # what usbstor reports in its adapter descriptor

# After each phase, the outcome picks the next phase.  Terminal phases:
# "done" (the command finished: good or CHECK CONDITION), "recover" (Reset
# Recovery, then fail), "gone" (device disconnected), "cancelled".
PHASE_TRANSITIONS: dict[tuple[str, str], str] = {
    ("cbw", "ok_data"): "data",
    ("cbw", "ok_no_data"): "csw",
    ("cbw", "stall"): "recover",  # §5.3.1: a CBW the device would not take
    ("cbw", "error"): "recover",
    ("data", "ok"): "csw",
    ("data", "stall"): "clear_data",  # §6.7.2: clear the halt, then read the CSW
    ("data", "error"): "recover",
    ("clear_data", "ok"): "csw",
    ("clear_data", "error"): "recover",
    ("clear_data", "stall"): "recover",
    ("csw", "good"): "done",
    ("csw", "failed"): "done",
    ("csw", "phase_error"): "recover",  # §6.6.2
    ("csw", "invalid"): "recover",  # §6.3: not valid or not meaningful
    ("csw", "stall"): "clear_csw",  # §5.3.3: clear, then try the CSW once more
    ("csw", "error"): "recover",
    ("clear_csw", "ok"): "csw_retry",
    ("clear_csw", "error"): "recover",
    ("clear_csw", "stall"): "recover",
    ("csw_retry", "good"): "done",
    ("csw_retry", "failed"): "done",
    ("csw_retry", "phase_error"): "recover",
    ("csw_retry", "invalid"): "recover",
    ("csw_retry", "stall"): "recover",
    ("csw_retry", "error"): "recover",
}
# "recover" is Reset Recovery (§5.3.4), run by USBSTOR_ResetDeviceWorkItem at PASSIVE_LEVEL
TERMINAL = frozenset({"done", "recover", "gone", "cancelled"})


@dataclass
class FdoExtension:
    fdo: DeviceObject
    lower: DeviceObject
    pdo: DeviceObject
    device_descriptor: Any = None
    configuration: bytes = b""
    serial: str = ""
    interface_number: int = 0
    pipe_in: U.PipeInformation | None = None
    pipe_out: U.PipeInformation | None = None
    max_lun: int = 0
    luns: list[DeviceObject] = field(default_factory=list)
    active: Request | None = None
    removed: bool = False
    recoveries: int = 0
    remove_lock: IoRemoveLock = field(default_factory=IoRemoveLock)
    device_state: list[int] = field(default_factory=list)  # DEVICE_CAPABILITIES.DeviceState
    system_wake: int = 0
    device_wake: int = 0
    wait_wake: Irp | None = None  # the armed IRP_MN_WAIT_WAKE, while there is one
    wake_signalled: bool = False
    idle_timeout_ns: int | None = None  # selective suspend after this long idle; None: off
    idle_irp: Irp | None = None  # IOCTL_INTERNAL_USB_SUBMIT_IDLE_NOTIFICATION, while held
    idle_generation: int = 0  # bumped by every command: a stale idle timer does nothing
    resume_event: KEvent | None = None
    idle_timers: int = 0  # idle timers still to fire; REMOVE waits for them (bug check 0xCE)
    timers_done: KEvent = field(default_factory=lambda: KEvent(True))
    # Reset Recovery and the hang timer's pipe aborts run from work items (PASSIVE_LEVEL)
    reset_item: IoWorkItem | None = None
    hang_item: IoWorkItem | None = None
    hang_timer: KTimer = field(default_factory=KTimer)
    hang_dpc: KDpc | None = None


@dataclass
class PdoExtension:
    fdo_ext: FdoExtension
    lun: int
    vendor: str
    product: str
    revision: str
    removed: bool = False
    remove_lock: IoRemoveLock = field(default_factory=IoRemoveLock)


class Request:
    """One SCSI command on the wire: the CBW, data and CSW phases on one IRP."""

    __slots__ = ("irp", "srb", "fdo_ext", "on_done", "phase", "tag", "urb", "csw",
                 "data_actual", "command_actual", "sensing", "status", "timed_out")

    def __init__(self, fdo_ext: FdoExtension, irp: Irp, srb: Srb,
                 on_done: Callable[[Request], None]) -> None:
        self.irp = irp
        self.srb = srb
        self.fdo_ext = fdo_ext
        self.on_done = on_done
        self.phase = "cbw"
        self.tag = 0
        self.urb: U.Urb | None = None
        self.csw = bytearray(bot.CSW_LENGTH)
        self.data_actual = 0
        self.command_actual = 0  # data moved by the command, kept while autosensing
        self.sensing: Srb | None = None  # the REQUEST SENSE SRB, while autosensing
        self.status: int = STATUS_SUCCESS
        self.timed_out = False  # the hang timer aborted it


# ---------------------------------------------------------------------------------
# DriverEntry, AddDevice, DriverUnload
# ---------------------------------------------------------------------------------


def DriverEntry(driver: DriverObject, registry_path: str) -> int:  # noqa: N802
    driver.major_function[IRP_MJ_CREATE] = USBSTOR_DispatchCreateClose
    driver.major_function[IRP_MJ_CLOSE] = USBSTOR_DispatchCreateClose
    driver.major_function[IRP_MJ_CLEANUP] = USBSTOR_DispatchCreateClose
    driver.major_function[IRP_MJ_DEVICE_CONTROL] = USBSTOR_DispatchDeviceControl
    driver.major_function[IRP_MJ_SCSI] = USBSTOR_DispatchScsi
    driver.major_function[IRP_MJ_PNP] = USBSTOR_DispatchPnp
    driver.major_function[IRP_MJ_POWER] = USBSTOR_DispatchPower
    driver.major_function[IRP_MJ_SYSTEM_CONTROL] = USBSTOR_DispatchSystemControl
    driver.driver_start_io = USBSTOR_StartIo
    driver.driver_extension.add_device = USBSTOR_AddDevice
    driver.driver_unload = USBSTOR_Unload
    parameters = driver.kernel.registry.get("usbstor", {})
    idle_ms = parameters.get("idle_timeout_ms")
    driver.driver_context = {"idle_timeout_ns": None if idle_ms is None else int(idle_ms * 1e6)}
    return STATUS_SUCCESS


def USBSTOR_AddDevice(driver: DriverObject, pdo: DeviceObject) -> int:  # noqa: N802
    fdo = IoCreateDevice(driver, None, None, FILE_DEVICE_MASS_STORAGE)
    lower = IoAttachDeviceToDeviceStack(fdo, pdo)
    ext = FdoExtension(fdo=fdo, lower=lower, pdo=pdo)
    context = driver.driver_context or {}
    ext.idle_timeout_ns = context.get("idle_timeout_ns")
    ext.reset_item = IoAllocateWorkItem(fdo)
    ext.hang_item = IoAllocateWorkItem(fdo)
    ext.hang_dpc = KDpc(USBSTOR_HangTimerDpc, ext)
    fdo.device_extension = ext
    IoInitializeRemoveLock(ext.remove_lock, driver.kernel.scheduler, "usbstor FDO")
    fdo.flags |= DO_DIRECT_IO | DO_POWER_PAGABLE
    fdo.flags &= ~DO_DEVICE_INITIALIZING
    return STATUS_SUCCESS


def USBSTOR_Unload(driver: DriverObject) -> None:  # noqa: N802
    driver.kernel.DbgPrint("usbstor: unloaded")


def _is_fdo(device: DeviceObject) -> bool:
    return isinstance(device.device_extension, FdoExtension)


def USBSTOR_DispatchCreateClose(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    return complete_irp(irp, STATUS_SUCCESS)


def USBSTOR_FdoPassDown(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """Skip and call the lower driver, holding the FDO's remove lock across the call."""
    ext: FdoExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    IoSkipCurrentIrpStackLocation(irp)
    status = IoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


def USBSTOR_DispatchSystemControl(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    if _is_fdo(device):
        return USBSTOR_FdoPassDown(device, irp)
    return complete_irp(irp, irp.io_status.status)


def USBSTOR_DispatchPower(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """The FDO owns the power policy of the USB device's stack; a LUN PDO, as the bus
    driver of its disk stack, completes its power IRPs (only a bus driver may)."""
    loc = irp.IoGetCurrentIrpStackLocation()
    if not _is_fdo(device):
        PoStartNextPowerIrp(irp)
        if loc.minor_function == IRP_MN_WAIT_WAKE:
            return complete_irp(irp, NTSTATUS.STATUS_NOT_SUPPORTED)
        if loc.minor_function == IRP_MN_SET_POWER and loc.parameters.type == "device":
            PoSetPowerState(device, "device", loc.parameters.state)
        return complete_irp(irp, STATUS_SUCCESS)
    ext: FdoExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        PoStartNextPowerIrp(irp)
        return complete_irp(irp, lock)
    params = loc.parameters
    if loc.minor_function == IRP_MN_SET_POWER and params.type == "system":
        IoMarkIrpPending(irp)
        IoCopyCurrentIrpStackLocationToNext(irp)
        IoSetCompletionRoutine(irp, USBSTOR_SystemPowerCompletion, None)
        PoCallDriver(ext.lower, irp)
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return STATUS_PENDING
    if loc.minor_function == IRP_MN_SET_POWER and params.type == "device":
        if params.state != PowerDeviceD0:
            PoSetPowerState(device, "device", params.state)
            PoStartNextPowerIrp(irp)
            IoSkipCurrentIrpStackLocation(irp)
        else:
            IoCopyCurrentIrpStackLocationToNext(irp)
            IoSetCompletionRoutine(irp, USBSTOR_PowerUpCompletion, None)
        status = PoCallDriver(ext.lower, irp)
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return status
    PoStartNextPowerIrp(irp)
    IoSkipCurrentIrpStackLocation(irp)
    status = PoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


def USBSTOR_PowerUpCompletion(device: DeviceObject | None, irp: Irp, context: Any) -> int:  # noqa: N802
    if irp.pending_returned:
        IoMarkIrpPending(irp)
    assert device is not None
    if NT_SUCCESS(irp.io_status.status):
        PoSetPowerState(device, "device", PowerDeviceD0)
    PoStartNextPowerIrp(irp)
    return STATUS_SUCCESS


def USBSTOR_SystemPowerCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                                  context: Any) -> int:
    """The system IRP came back up from the hub: request the device IRP for it.

    The FDO has children (the LUNs), so the system IRP waits for the device IRP in
    both directions.  Before the device sleeps in a state it can wake the system
    from, a WAIT_WAKE is armed; back in D0 it is cancelled.
    """
    assert device is not None
    ext: FdoExtension = device.device_extension
    system_state = irp.IoGetCurrentIrpStackLocation().parameters.state
    if system_state == PowerSystemWorking:
        target = PowerDeviceD0
    else:
        target = (ext.device_state[system_state] if system_state < len(ext.device_state)
                  else 0) or PowerDeviceD3
    if target == device.power_state or ext.removed:
        PoStartNextPowerIrp(irp)
        return STATUS_SUCCESS
    if (target != PowerDeviceD0 and ext.wait_wake is None and ext.device_wake
            and target <= ext.device_wake and system_state <= ext.system_wake):
        _, ext.wait_wake = PoRequestPowerIrp(ext.pdo, IRP_MN_WAIT_WAKE, ext.system_wake,
                                             USBSTOR_WaitWakeDone, ext)
    PoRequestPowerIrp(ext.pdo, IRP_MN_SET_POWER, target, USBSTOR_DevicePowerDone, (ext, irp))
    return STATUS_MORE_PROCESSING_REQUIRED


def USBSTOR_DevicePowerDone(pdo: DeviceObject, minor: int, state: int,  # noqa: N802
                            context: tuple[FdoExtension, Irp], io_status: Any) -> None:
    """The device IRP finished: disarm wake on the way back to D0, complete the S-IRP."""
    ext, system_irp = context
    wait_wake = ext.wait_wake
    if state == PowerDeviceD0 and wait_wake is not None and not wait_wake.completed:
        IoCancelIrp(wait_wake)
    PoStartNextPowerIrp(system_irp)
    IoCompleteRequest(system_irp)


def USBSTOR_WaitWakeDone(pdo: DeviceObject, minor: int, state: int,  # noqa: N802
                         ext: FdoExtension, io_status: Any) -> None:
    """The WAIT_WAKE came back: cancelled on resume, or the device signalled wake-up."""
    ext.wait_wake = None
    ext.wake_signalled = io_status.status == STATUS_SUCCESS


# ---------------------------------------------------------------------------------
# PnP: the FDO starts the device and reports LUN PDOs
# ---------------------------------------------------------------------------------


def USBSTOR_DispatchPnp(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    if _is_fdo(device):
        return USBSTOR_FdoHandlePnp(device, irp)
    return USBSTOR_PdoHandlePnp(device, irp)


def USBSTOR_FdoHandlePnp(fdo: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: FdoExtension = fdo.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    loc = irp.IoGetCurrentIrpStackLocation()
    minor = loc.minor_function
    if minor in (IRP_MN_START_DEVICE, IRP_MN_CANCEL_REMOVE_DEVICE):
        # handled on the way up: the bus driver's PDO first
        status = IoForwardIrpSynchronously(ext.lower, irp)
        if minor == IRP_MN_START_DEVICE and status == STATUS_SUCCESS:
            status = USBSTOR_StartDevice(ext)
            if status == STATUS_SUCCESS:
                PoSetPowerState(fdo, "device", PowerDeviceD0)  # started means in D0
        elif minor == IRP_MN_CANCEL_REMOVE_DEVICE:
            status = STATUS_SUCCESS
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, status)
    if minor == IRP_MN_QUERY_CAPABILITIES:
        # on the way up: keep the S-to-D map and the wake states the power policy needs
        status = IoForwardIrpSynchronously(ext.lower, irp)
        if NT_SUCCESS(status):
            caps: DeviceCapabilities = loc.parameters.capabilities
            ext.device_state = list(caps.device_state)
            ext.system_wake, ext.device_wake = caps.system_wake, caps.device_wake
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, status, irp.io_status.information)
    if minor == IRP_MN_QUERY_DEVICE_RELATIONS and loc.parameters.type == BusRelations:
        irp.io_status.status = STATUS_SUCCESS
        irp.io_status.information = [p for p in ext.luns if not p.deleted]
    elif minor == IRP_MN_QUERY_REMOVE_DEVICE:
        irp.io_status.status = STATUS_SUCCESS
    elif minor == IRP_MN_SURPRISE_REMOVAL:
        ext.removed = True
        _cancel_idle(ext)
        _fail_queue(ext, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
        irp.io_status.status = STATUS_SUCCESS
    elif minor == IRP_MN_REMOVE_DEVICE:
        ext.removed = True
        _cancel_idle(ext, wait=True)
        _fail_queue(ext, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
        IoReleaseRemoveLockAndWait(ext.remove_lock, irp)
        for pdo in ext.luns:  # the LUNs go with the FDO that reported them
            if not pdo.deleted:
                pdo.device_extension.removed = True
                IoDeleteDevice(pdo)
        ext.luns.clear()
        irp.io_status.status = STATUS_SUCCESS
        IoSkipCurrentIrpStackLocation(irp)
        status = IoCallDriver(ext.lower, irp)
        IoDetachDevice(ext.lower)
        IoDeleteDevice(fdo)
        return status
    IoSkipCurrentIrpStackLocation(irp)
    status = IoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


def _submit_urb_sync(ext: FdoExtension, urb: U.Urb) -> int:
    """Send one URB down and wait for it (PASSIVE_LEVEL, start-up only)."""
    event = KEvent()
    irp = IoBuildDeviceIoControlRequest(U.IOCTL_INTERNAL_USB_SUBMIT_URB, ext.lower, None, 0,
                                        True, event, None, argument1=urb)
    if IoCallDriver(ext.lower, irp) == STATUS_PENDING:
        ext.fdo.driver_object.kernel.scheduler.KeWaitForSingleObject(event, "URB")
    return int(irp.io_status.status)


def _submit_urb_on(ext: FdoExtension, irp: Irp, urb: U.Urb) -> int:
    """Send ``urb`` on the driver's own start-up IRP and wait; the IRP comes back to
    the driver (STATUS_MORE_PROCESSING_REQUIRED) to be reused with IoReuseIrp."""
    IoReuseIrp(irp, STATUS_SUCCESS)
    loc = irp.IoGetNextIrpStackLocation()
    loc.major_function = IRP_MJ_INTERNAL_DEVICE_CONTROL
    loc.parameters = DeviceIoControlParameters(U.IOCTL_INTERNAL_USB_SUBMIT_URB, 0, 0, urb)
    event = KEvent()

    def signal(device: DeviceObject | None, i: Irp, context: Any) -> int:
        event.KeSetEvent()
        return STATUS_MORE_PROCESSING_REQUIRED

    IoSetCompletionRoutine(irp, signal, None)
    if IoCallDriver(ext.lower, irp) == STATUS_PENDING:
        ext.fdo.driver_object.kernel.scheduler.KeWaitForSingleObject(event, "URB")
    return int(irp.io_status.status)


def _get_descriptor(ext: FdoExtension, irp: Irp | None, kind: int, index: int, length: int,
                    language: int = 0) -> bytes | None:
    urb = U.urb_get_descriptor(kind, index, language, length)
    status = _submit_urb_sync(ext, urb) if irp is None else _submit_urb_on(ext, irp, urb)
    if status != STATUS_SUCCESS:
        return None
    return bytes(urb.buffer[: urb.length])


def _get_string(ext: FdoExtension, irp: Irp, index: int, language: int) -> bytes | None:
    """A string descriptor in two steps, as Windows reads them: its first two bytes
    (bLength, bDescriptorType), then exactly bLength bytes (the shared Windows 10
    capture: wLength 2, then 4 for the language IDs and 0x32 for the serial)."""
    head = _get_descriptor(ext, irp, d.STRING, index, 2, language)
    if head is None or len(head) < 2 or head[0] < 2:
        return None
    return _get_descriptor(ext, irp, d.STRING, index, head[0], language)


def USBSTOR_StartDevice(ext: FdoExtension) -> int:  # noqa: N802
    """Descriptors, configuration and interface, GET_MAX_LUN, then the LUNs.

    The order and lengths are those of Windows 10 in the shared USBPcap capture:
    the device descriptor on an IRP of its own; then one IRP, reused with
    IoReuseIrp, for the configuration descriptor (9 bytes, then wTotalLength),
    the language IDs and the serial number (each in two steps), SELECT_CONFIGURATION
    and SELECT_INTERFACE; GET_MAX_LUN on another IRP.
    """
    device = _get_descriptor(ext, None, d.DEVICE, 0, 18)
    if device is None or len(device) < 18:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    ext.device_descriptor = d.DeviceDescriptor.parse(device)
    irp = IoAllocateIrp(ext.lower.stack_size)
    try:
        status = _configure(ext, irp)
    finally:
        IoFreeIrp(irp)
    if status != STATUS_SUCCESS:
        return status

    get_max_lun = U.urb_class_interface(std.GET_MAX_LUN, 0, ext.interface_number, 1, True)
    if _submit_urb_sync(ext, get_max_lun) == STATUS_SUCCESS and get_max_lun.length == 1:
        ext.max_lun = min(get_max_lun.buffer[0], 15)
    else:
        ext.max_lun = 0  # §3.2: a device with one LUN may STALL this request

    for lun in range(ext.max_lun + 1):
        data = bytearray(36)
        status = _execute_srb_sync(ext, _inquiry_srb(lun, data))
        if status != STATUS_SUCCESS:
            return status
        status = USBSTOR_CreatePDO(ext, lun)
        if status != STATUS_SUCCESS:
            return status
    return STATUS_SUCCESS


def _configure(ext: FdoExtension, irp: Irp) -> int:
    """The start-up requests that share one IRP: descriptors, strings, selections."""
    head = _get_descriptor(ext, irp, d.CONFIGURATION, 0, 9)
    if head is None or len(head) < 9:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    total = int.from_bytes(head[2:4], "little")
    configuration = _get_descriptor(ext, irp, d.CONFIGURATION, 0, total)
    if configuration is None:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    ext.configuration = configuration
    langids = _get_string(ext, irp, 0, 0)
    language = int.from_bytes(langids[2:4], "little") if langids and len(langids) >= 4 else 0x0409
    if ext.device_descriptor.iSerialNumber:
        text = _get_string(ext, irp, ext.device_descriptor.iSerialNumber, language)
        ext.serial = (d.decode_string(text) if text else None) or ""

    select = U.UrbSelectConfiguration(configuration)
    if _submit_urb_on(ext, irp, select) != STATUS_SUCCESS:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    storage = next((i for i in select.interfaces
                    if (i.interface_class, i.interface_subclass, i.interface_protocol)
                    == (0x08, 0x06, 0x50)), None)
    if storage is None:
        return NTSTATUS.STATUS_NOT_SUPPORTED  # not Bulk-Only (CBI is not modelled)
    # SELECT_INTERFACE with the setting just configured: the pipe handles usbstor
    # keeps are the ones this returns (SET_INTERFACE on the wire)
    choose = U.UrbSelectInterface(select.configuration_handle, storage)
    if _submit_urb_on(ext, irp, choose) != STATUS_SUCCESS:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    ext.interface_number = storage.interface_number
    for pipe in choose.interface.pipes:
        if pipe.pipe_type == U.UsbdPipeTypeBulk:
            if pipe.endpoint_address & 0x80:
                ext.pipe_in = pipe
            else:
                ext.pipe_out = pipe
    if ext.pipe_in is None or ext.pipe_out is None:
        return NTSTATUS.STATUS_NOT_SUPPORTED
    return STATUS_SUCCESS


def _inquiry_srb(lun: int, data: bytearray, page: int | None = None) -> Srb:
    """INQUIRY: standard data (36 bytes), or a VPD page (EVPD=1, 255 bytes)."""
    if page is None:
        cdb = bytes([scsi.INQUIRY, 0, 0, 0, len(data), 0])
    else:
        cdb = bytes([scsi.INQUIRY, 1, page, 0, len(data), 0])
    return Srb(cdb, len(data), SRB_FLAGS_DATA_IN, memoryview(data), lun=lun)


def USBSTOR_CreatePDO(ext: FdoExtension, lun: int) -> int:  # noqa: N802
    """One PDO per LUN, and what Windows asks the LUN as it creates it.

    As ReactOS's USBSTOR_CreatePDO (``pdo.c``): an INQUIRY, then for a
    direct-access device READ FORMAT CAPACITIES with 0xFC bytes, whose failure
    is not critical.  Windows 10 then asks the Unit Serial Number VPD page
    (INQUIRY EVPD page 0x80, 255 bytes): the shared capture has it next.
    """
    return create_lun_pdo(ext, lun, _start_or_queue, "usbstor")


StartSrb = Callable[[Any, Irp, Srb, Callable[[Any], None]], None]


def create_lun_pdo(ext: FdoExtension, lun: int, start: StartSrb, driver: str) -> int:
    """The LUN's PDO after its queries, each SRB started by ``start`` (the driver's own
    way: IoStartPacket here, a free tag in UASPStor, whose LUN PDOs are these)."""
    data = bytearray(36)
    status = _execute_srb_sync(ext, _inquiry_srb(lun, data), start)
    if status != STATUS_SUCCESS:
        return status
    vendor = data[8:16].decode("ascii", "replace").strip()
    product = data[16:32].decode("ascii", "replace").strip()
    revision = data[32:36].decode("ascii", "replace").strip()
    if data[0] & 0x1F == 0:  # direct-access block device
        capacities = bytearray(0xFC)
        _execute_srb_sync(ext, Srb(bytes([scsi.READ_FORMAT_CAPACITIES, 0, 0, 0, 0, 0, 0, 0,
                                          0xFC, 0]), 0xFC, SRB_FLAGS_DATA_IN,
                                   memoryview(capacities), lun=lun), start)
    serial_page = bytearray(0xFF)
    _execute_srb_sync(ext, _inquiry_srb(lun, serial_page, scsi.VPD_UNIT_SERIAL_NUMBER), start)
    pdo = IoCreateDevice(ext.fdo.driver_object, None, None, FILE_DEVICE_DISK)
    pdo_ext = PdoExtension(ext, lun, vendor, product, revision)
    IoInitializeRemoveLock(pdo_ext.remove_lock, ext.fdo.driver_object.kernel.scheduler,
                           f"{driver} LUN {lun}")
    pdo.device_extension = pdo_ext
    pdo.flags |= DO_DIRECT_IO | DO_POWER_PAGABLE
    pdo.stack_size = ext.fdo.stack_size  # room to send SRB IRPs down the USB stack
    pdo.flags &= ~DO_DEVICE_INITIALIZING
    ext.luns.append(pdo)
    return STATUS_SUCCESS


def _execute_srb_sync(ext: FdoExtension, srb: Srb, start: StartSrb | None = None) -> int:
    """Run one SRB on an IRP of the driver's own and wait (start-up commands).

    As ReactOS's USBSTOR_AllocateIrp (``pdo.c``): the data buffer is described by an
    MDL built for nonpaged pool, so the data URB carries a partial MDL of it."""
    irp = IoAllocateIrp(ext.lower.stack_size + 1)
    IoSetNextIrpStackLocation(irp, ext.fdo)
    if srb.data_buffer is not None and srb.data_transfer_length:
        irp.mdl_address = IoAllocateMdl(srb.data_buffer, srb.data_transfer_length)
        MmBuildMdlForNonPagedPool(irp.mdl_address)
    event = KEvent()
    result: list[int] = []

    def finished(request: Request) -> None:
        result.append(request.status)
        event.KeSetEvent()

    (start or _start_or_queue)(ext, irp, srb, finished)
    ext.fdo.driver_object.kernel.scheduler.KeWaitForSingleObject(event, "SRB")
    if irp.mdl_address is not None:
        IoFreeMdl(irp.mdl_address)
    IoFreeIrp(irp)
    return result[0]


def USBSTOR_PdoHandlePnp(pdo: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: PdoExtension = pdo.device_extension
    loc = irp.IoGetCurrentIrpStackLocation()
    minor = loc.minor_function
    ven = ext.vendor.replace(" ", "_")
    prod = ext.product.replace(" ", "_")
    rev = ext.revision.replace(" ", "_")
    device_id = f"USBSTOR\\Disk&Ven_{ven}&Prod_{prod}&Rev_{rev}"
    if minor == IRP_MN_QUERY_ID:
        id_type = loc.parameters.id_type
        if id_type == BusQueryDeviceID:
            return complete_irp(irp, STATUS_SUCCESS, device_id)
        if id_type == BusQueryHardwareIDs:
            return complete_irp(irp, STATUS_SUCCESS, [
                device_id, f"USBSTOR\\Disk{ven}{prod}", "USBSTOR\\Disk", "GenDisk"])
        if id_type == BusQueryCompatibleIDs:
            return complete_irp(irp, STATUS_SUCCESS, ["USBSTOR\\Disk", "USBSTOR\\RAW"])
        if id_type == BusQueryInstanceID:
            instance = f"{ext.fdo_ext.serial or 'NOSERIAL'}&{ext.lun}"
            return complete_irp(irp, STATUS_SUCCESS, instance)
        return complete_irp(irp, irp.io_status.status, irp.io_status.information)
    if minor == IRP_MN_QUERY_DEVICE_TEXT:
        if loc.parameters.device_text_type == DeviceTextDescription:
            return complete_irp(irp, STATUS_SUCCESS, f"{ext.vendor} {ext.product} USB Device")
        return complete_irp(irp, irp.io_status.status, irp.io_status.information)
    if minor == IRP_MN_QUERY_CAPABILITIES:
        caps: DeviceCapabilities = loc.parameters.capabilities
        caps.removable = True
        caps.surprise_removal_ok = True
        caps.unique_id = bool(ext.fdo_ext.serial)
        caps.address = ext.lun
        caps.device_state = [0, PowerDeviceD0] + [PowerDeviceD3] * 5
        return complete_irp(irp, STATUS_SUCCESS)
    if minor in (IRP_MN_START_DEVICE, IRP_MN_QUERY_REMOVE_DEVICE, IRP_MN_CANCEL_REMOVE_DEVICE,
                 IRP_MN_SURPRISE_REMOVAL, IRP_MN_QUERY_PNP_DEVICE_STATE,
                 IRP_MN_DEVICE_USAGE_NOTIFICATION):
        if minor == IRP_MN_START_DEVICE:
            PoSetPowerState(pdo, "device", PowerDeviceD0)
        return complete_irp(irp, STATUS_SUCCESS, irp.io_status.information)
    if minor == IRP_MN_REMOVE_DEVICE:
        status = complete_irp(irp, STATUS_SUCCESS)
        if ext.fdo_ext.removed and not pdo.deleted:
            # gone from the bus with its FDO: no IRP holds it any more, delete it
            ext.removed = True
            if IoAcquireRemoveLock(ext.remove_lock, irp) == STATUS_SUCCESS:
                IoReleaseRemoveLockAndWait(ext.remove_lock, irp)
            IoDeleteDevice(pdo)
            if pdo in ext.fdo_ext.luns:
                ext.fdo_ext.luns.remove(pdo)
        return status
    return complete_irp(irp, irp.io_status.status, irp.io_status.information)


# ---------------------------------------------------------------------------------
# Selective suspend: the idle notification the hub holds, D2 while idle, D0 on I/O
# ---------------------------------------------------------------------------------


def USBSTOR_StartIdleTimer(ext: FdoExtension) -> None:  # noqa: N802
    """After a command, if selective suspend is on: look again once the idle time passed."""
    if ext.idle_timeout_ns is None or ext.removed or ext.idle_irp is not None:
        return
    ext.idle_generation += 1
    ext.idle_timers += 1
    ext.timers_done.KeClearEvent()
    ext.fdo.driver_object.kernel.scheduler.schedule(ext.idle_timeout_ns, USBSTOR_IdleTimerDpc,
                                                    ext, ext.idle_generation)


def USBSTOR_IdleTimerDpc(ext: FdoExtension, generation: int) -> None:  # noqa: N802
    """Nothing happened for the idle time: ask the hub to suspend the device
    (IOCTL_INTERNAL_USB_SUBMIT_IDLE_NOTIFICATION with the idle callback)."""
    ext.idle_timers -= 1
    if ext.idle_timers == 0:
        ext.timers_done.KeSetEvent()
    queued = ext.fdo.device_queue is not None and ext.fdo.device_queue.entries
    if (generation != ext.idle_generation or ext.active is not None or queued
            or ext.removed or ext.idle_irp is not None):
        return
    info = U.UsbIdleCallbackInfo(USBSTOR_IdleNotificationCallback, ext)
    irp = IoBuildDeviceIoControlRequest(U.IOCTL_INTERNAL_USB_SUBMIT_IDLE_NOTIFICATION, ext.lower,
                                        None, 0, True, None, None, argument1=info)
    IoSetCompletionRoutine(irp, USBSTOR_IdleNotificationCompletion, ext)
    ext.idle_irp = irp
    IoCallDriver(ext.lower, irp)


def USBSTOR_IdleNotificationCallback(ext: FdoExtension) -> None:  # noqa: N802
    """The hub may suspend the port now: arm wake-up if the device has it, then D2,
    waited for before returning to the hub (PASSIVE_LEVEL)."""
    if ext.removed:
        return
    if ext.device_wake and ext.wait_wake is None:
        _, ext.wait_wake = PoRequestPowerIrp(ext.pdo, IRP_MN_WAIT_WAKE, PowerSystemWorking,
                                             USBSTOR_WaitWakeDone, ext)
    event = KEvent()
    PoRequestPowerIrp(ext.pdo, IRP_MN_SET_POWER, PowerDeviceD2,
                      lambda *args: event.KeSetEvent(), None)
    ext.fdo.driver_object.kernel.scheduler.KeWaitForSingleObject(event, "usbstor D2")


def USBSTOR_IdleNotificationCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                                       ext: FdoExtension) -> int:
    """The idle request ended (cancelled for I/O, or the device left): back to D0."""
    if ext.idle_irp is irp:
        ext.idle_irp = None
    if ext.fdo.power_state not in (PowerDeviceD0, 0) and not ext.removed:
        PoRequestPowerIrp(ext.pdo, IRP_MN_SET_POWER, PowerDeviceD0, USBSTOR_ResumeDone, ext)
    elif ext.resume_event is not None:
        ext.resume_event.KeSetEvent()
    return STATUS_SUCCESS


def USBSTOR_ResumeDone(pdo: DeviceObject, minor: int, state: int, ext: FdoExtension,  # noqa: N802
                       io_status: Any) -> None:
    """Back in D0 after selective suspend: disarm wake-up, let waiting I/O go on."""
    wait_wake = ext.wait_wake
    if wait_wake is not None and not wait_wake.completed:
        IoCancelIrp(wait_wake)
    if ext.resume_event is not None:
        ext.resume_event.KeSetEvent()


def USBSTOR_ResumeFromIdle(ext: FdoExtension) -> None:  # noqa: N802
    """I/O for a suspended device: cancel the idle request, wait for D0 (PASSIVE_LEVEL)."""
    event = ext.resume_event = KEvent()
    if ext.idle_irp is not None:
        IoCancelIrp(ext.idle_irp)
    elif ext.fdo.power_state not in (PowerDeviceD0, 0):
        PoRequestPowerIrp(ext.pdo, IRP_MN_SET_POWER, PowerDeviceD0, USBSTOR_ResumeDone, ext)
    else:
        event.KeSetEvent()
    scheduler = ext.fdo.driver_object.kernel.scheduler
    if scheduler.irql == 0:
        scheduler.KeWaitForSingleObject(event, "usbstor resume")


def _cancel_idle(ext: FdoExtension, wait: bool = False) -> None:
    """Surprise removal or removal: no idle request, WAIT_WAKE or idle timer may outlive
    the FDO; on removal, wait for a timer already set to fire (it does nothing now)."""
    ext.idle_generation += 1
    for irp in (ext.idle_irp, ext.wait_wake):
        if irp is not None and not irp.completed:
            IoCancelIrp(irp)
    if wait:
        ext.fdo.driver_object.kernel.scheduler.KeWaitForSingleObject(ext.timers_done,
                                                                     "usbstor idle timer")


# ---------------------------------------------------------------------------------
# Device control on a LUN PDO
# ---------------------------------------------------------------------------------


def USBSTOR_DispatchDeviceControl(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    if _is_fdo(device):
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
    ext: PdoExtension = device.device_extension
    params: DeviceIoControlParameters = irp.IoGetCurrentIrpStackLocation().parameters
    if params.io_control_code == io.IOCTL_STORAGE_QUERY_PROPERTY:
        query = irp.system_buffer
        if not isinstance(query, io.StoragePropertyQuery):
            return complete_irp(irp, NTSTATUS.STATUS_INVALID_PARAMETER)
        if query.PropertyId == io.StorageDeviceProperty:
            irp.system_buffer = io.StorageDeviceDescriptor(
                0x00, True, ext.vendor, ext.product, ext.revision, ext.fdo_ext.serial)
            return complete_irp(irp, STATUS_SUCCESS, 1)
        if query.PropertyId == io.StorageAdapterProperty:
            irp.system_buffer = io.StorageAdapterDescriptor(
                MAXIMUM_TRANSFER_LENGTH, MAXIMUM_TRANSFER_LENGTH // 4096 + 1)
            return complete_irp(irp, STATUS_SUCCESS, 1)
        return complete_irp(irp, NTSTATUS.STATUS_NOT_SUPPORTED)
    return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)


# ---------------------------------------------------------------------------------
# IRP_MJ_SCSI: queue, then CBW -> data -> CSW on the SRB's own IRP
# ---------------------------------------------------------------------------------


def USBSTOR_DispatchScsi(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    if _is_fdo(device):
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
    ext: PdoExtension = device.device_extension
    fdo_ext = ext.fdo_ext
    srb: Srb = irp.IoGetCurrentIrpStackLocation().parameters.srb
    if ext.removed or fdo_ext.removed or \
            IoAcquireRemoveLock(ext.remove_lock, irp) != STATUS_SUCCESS:
        srb.srb_status = SRB_STATUS_NO_DEVICE
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
    if srb.function != SRB_FUNCTION_EXECUTE_SCSI:
        srb.srb_status = SRB_STATUS_SUCCESS
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, STATUS_SUCCESS)
    srb.lun = ext.lun
    fdo_ext.idle_generation += 1
    if fdo_ext.idle_irp is not None or fdo_ext.fdo.power_state not in (PowerDeviceD0, 0):
        USBSTOR_ResumeFromIdle(fdo_ext)  # selectively suspended: back to D0 first
    IoMarkIrpPending(irp)
    _start_or_queue(fdo_ext, irp, srb, _complete_srb_irp)
    return STATUS_PENDING


def _complete_srb_irp(request: Request) -> None:
    lun = request.irp.IoGetCurrentIrpStackLocation().device_object
    if lun is not None and isinstance(lun.device_extension, PdoExtension):
        IoReleaseRemoveLock(lun.device_extension.remove_lock, request.irp)  # held since dispatch
    USBSTOR_StartIdleTimer(request.fdo_ext)
    complete_irp(request.irp, request.status, request.srb.data_transfer_length
              if request.status == STATUS_SUCCESS or request.srb.srb_status & 0x3F in
              (SRB_STATUS_SUCCESS, SRB_STATUS_DATA_OVERRUN) else 0)


# ---------------------------------------------------------------------------------
# StartIo: Bulk-Only runs one command at a time (ReactOS queue.c: IoStartPacket on
# the FDO, USBSTOR_StartIo, IoStartNextPacket when a command ends)
# ---------------------------------------------------------------------------------


def _start_or_queue(ext: FdoExtension, irp: Irp, srb: Srb,
                    on_done: Callable[[Request], None]) -> None:
    """IoStartPacket on the FDO: StartIo now, or the device queue while one runs.

    ``on_done`` travels in the IRP's DriverContext (Tail.Overlay.DriverContext[1];
    the bus driver uses [0] while it holds the IRP)."""
    irp.tail[1] = (srb, on_done)
    IoStartPacket(ext.fdo, irp, None, USBSTOR_CancelIo)


def USBSTOR_StartIo(device: DeviceObject, irp: Irp) -> None:  # noqa: N802
    """DriverStartIo (DISPATCH_LEVEL): the device's one command starts now.

    As ReactOS's USBSTOR_StartIo: under the cancel spin lock the cancel routine is
    cleared; an IRP cancelled meanwhile is completed STATUS_CANCELLED and the next
    packet started.
    """
    ext: FdoExtension = device.device_extension
    srb, on_done = irp.tail[1]
    irql = IoAcquireCancelSpinLock(device)
    IoSetCancelRoutine(irp, None)
    if irp.cancel:
        IoReleaseCancelSpinLock(device, irql)
        srb.srb_status = SRB_STATUS_ABORTED
        request = Request(ext, irp, srb, on_done)
        request.status = NTSTATUS.STATUS_CANCELLED
        on_done(request)
        IoStartNextPacket(device, True)
        return
    IoReleaseCancelSpinLock(device, irql)
    _start(ext, irp, srb, on_done)


def USBSTOR_CancelIo(device: DeviceObject, irp: Irp) -> None:  # noqa: N802
    """Cancel routine of an SRB IRP in the FDO's device queue (cancel spin lock held).

    IoCancelIrp passes the device of the IRP's current stack location: the LUN PDO
    for the class driver's SRBs, the FDO for usbstor's own start-up ones."""
    fdo = device if _is_fdo(device) else device.device_extension.fdo_ext.fdo
    queued = KeRemoveEntryDeviceQueue(fdo, irp)
    IoReleaseCancelSpinLock(device, irp.cancel_irql)
    if not queued:
        return  # already started: StartIo or the transfer sees irp.cancel
    srb, on_done = irp.tail[1]
    srb.srb_status = SRB_STATUS_ABORTED
    request = Request(fdo.device_extension, irp, srb, on_done)
    request.status = NTSTATUS.STATUS_CANCELLED
    on_done(request)


def _start_next(ext: FdoExtension) -> None:
    """The command ended: IoStartNextPacket, at DISPATCH_LEVEL as it requires."""
    ext.active = None
    sched = ext.fdo.driver_object.kernel.scheduler
    old = sched.KeRaiseIrql(DISPATCH_LEVEL)
    IoStartNextPacket(ext.fdo, True)
    sched.KeLowerIrql(old)


def _fail_queue(ext: FdoExtension, status: int) -> None:
    """The device is gone: every SRB still queued ends with ``status``."""
    fdo = ext.fdo
    while True:
        irql = IoAcquireCancelSpinLock(fdo)
        queue = fdo.device_queue
        irp = queue.entries.pop(0) if queue is not None and queue.entries else None
        if irp is None:
            IoReleaseCancelSpinLock(fdo, irql)
            return
        routine = IoSetCancelRoutine(irp, None)
        IoReleaseCancelSpinLock(fdo, irql)
        if routine is None:
            continue  # its cancel routine has it
        srb, on_done = irp.tail[1]
        srb.srb_status = SRB_STATUS_NO_DEVICE
        request = Request(ext, irp, srb, on_done)
        request.status = status
        on_done(request)


def _start(ext: FdoExtension, irp: Irp, srb: Srb, on_done: Callable[[Request], None]) -> None:
    request = Request(ext, irp, srb, on_done)
    ext.active = request
    if ext.removed:
        srb.srb_status = SRB_STATUS_NO_DEVICE
        _finish(request, "gone")
        return
    # the hang timer: a command still running after its SRB's TimeOutValue is aborted
    sched = ext.fdo.driver_object.kernel.scheduler
    sched.KeSetTimer(ext.hang_timer, max(srb.timeout_value, 1) * 1_000_000_000, ext.hang_dpc)
    _send_phase(request, "cbw")


def USBSTOR_HangTimerDpc(dpc: KDpc, ext: FdoExtension) -> None:  # noqa: N802
    """The hang timer expired (DISPATCH_LEVEL): the active command never finished.

    Aborting pipes means synchronous URBs, so the work is queued for PASSIVE_LEVEL,
    as ReactOS's USBSTOR_TimerRoutine queues USBSTOR_TimerWorkerRoutine (error.c).
    """
    request = ext.active
    if request is None or ext.removed:
        return
    request.timed_out = True
    assert ext.hang_item is not None  # allocated in AddDevice
    IoQueueWorkItem(ext.hang_item, USBSTOR_HangWorkItem, CriticalWorkQueue, request)


def USBSTOR_HangWorkItem(device: DeviceObject, request: Request) -> None:  # noqa: N802
    """PASSIVE_LEVEL: abort both bulk pipes; the hung URB completes USBD_STATUS_CANCELED
    and its completion routine ends the command, which then goes to Reset Recovery."""
    ext: FdoExtension = device.device_extension
    if ext.active is not request:
        return  # it finished after all
    for pipe in (ext.pipe_in, ext.pipe_out):
        if pipe is not None:
            _submit_urb_sync(ext, U.UrbPipeRequest(U.URB_FUNCTION_ABORT_PIPE, pipe))


def _send_phase(request: Request, phase: str) -> None:
    """Build the URB of ``phase`` and send it down on the request's IRP."""
    request.phase = phase
    ext = request.fdo_ext
    srb = request.sensing or request.srb
    pipe_in, pipe_out = ext.pipe_in, ext.pipe_out
    assert pipe_in is not None and pipe_out is not None  # set at start-up
    if phase == "cbw":
        request.tag = tag = request.irp.id & 0xFFFFFFFF  # the IRP's address, as Windows tags
        cbw = bot.build_cbw(tag, srb.data_transfer_length, srb.srb_flags & SRB_FLAGS_DATA_IN != 0,
                            srb.lun, srb.cdb)
        urb: U.Urb = U.UrbBulkOrInterruptTransfer(pipe_out, bytearray(cbw), bot.CBW_LENGTH,
                                                  U.USBD_TRANSFER_DIRECTION_OUT)
    elif phase == "data":
        data_in = srb.srb_flags & SRB_FLAGS_DATA_IN  # srb.data_in
        pipe = pipe_in if data_in else pipe_out
        flags = (U.USBD_TRANSFER_DIRECTION_IN | U.USBD_SHORT_TRANSFER_OK) if data_in else 0
        irp_mdl = request.irp.mdl_address
        if irp_mdl is not None and request.sensing is None:
            # ReactOS scsi.c, USBSTOR_SendRequest: a partial MDL of the IRP's MDL for the
            # SRB's DataBuffer and length; the URB's TransferBuffer stays NULL
            mdl = IoAllocateMdl(irp_mdl.view, 0)
            IoBuildPartialMdl(irp_mdl, mdl, srb.data_offset, srb.data_transfer_length)
            urb = U.UrbBulkOrInterruptTransfer(pipe, None, srb.data_transfer_length, flags,
                                               mdl)
        else:  # the sense buffer, or an SRB whose IRP has no MDL: TransferBuffer
            assert srb.data_buffer is not None
            urb = U.UrbBulkOrInterruptTransfer(pipe, srb.data_buffer, srb.data_transfer_length,
                                               flags)
    elif phase in ("csw", "csw_retry"):
        urb = U.UrbBulkOrInterruptTransfer(pipe_in, request.csw, bot.CSW_LENGTH,
                                           U.USBD_TRANSFER_DIRECTION_IN |
                                           U.USBD_SHORT_TRANSFER_OK)
    elif phase == "clear_data":
        pipe = pipe_in if srb.data_in else pipe_out
        urb = U.UrbPipeRequest(U.URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL, pipe)
    elif phase == "clear_csw":
        urb = U.UrbPipeRequest(U.URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL, pipe_in)
    else:
        raise AssertionError(phase)
    request.urb = urb
    irp = request.irp
    loc = irp.stack[irp.current_location - 1]  # IoGetNextIrpStackLocation
    loc.major_function = IRP_MJ_INTERNAL_DEVICE_CONTROL
    loc.minor_function = 0
    loc.parameters = DeviceIoControlParameters(U.IOCTL_INTERNAL_USB_SUBMIT_URB, 0, 0, urb)
    # IoSetCompletionRoutine(irp, USBSTOR_UrbCompletion, request, TRUE, TRUE, TRUE), the
    # wdm.h inline, on the location just filled
    loc.completion_routine = USBSTOR_UrbCompletion
    loc.context = request
    loc.control = SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL
    IoCallDriver(ext.lower, irp)


def _outcome(request: Request, irp: Irp) -> str:
    urb = request.urb
    assert urb is not None
    status = urb.status
    if status == USBD_STATUS_SUCCESS and not irp.cancel and \
            irp.io_status.status != STATUS_DEVICE_NOT_CONNECTED and \
            type(urb) is U.UrbBulkOrInterruptTransfer:
        # the common case first: a bulk phase that went through (the checks below, in
        # the same order, would come to the same)
        phase = request.phase
        if phase == "data":
            request.data_actual = urb.length  # urb.transfer_buffer_length
            return "ok"
        if phase == "cbw":
            srb = request.sensing or request.srb
            return "ok_data" if srb.data_transfer_length else "ok_no_data"
        if phase == "csw" or phase == "csw_retry":
            return _check_csw(request, urb.length)
    if status == U.USBD_STATUS_DEVICE_GONE or irp.io_status.status == \
            STATUS_DEVICE_NOT_CONNECTED:
        return "gone"
    if irp.cancel or status == U.USBD_STATUS_CANCELED:
        return "cancelled"
    if status == U.USBD_STATUS_STALL_PID:
        if request.phase == "data":  # the device ended the data phase: keep what moved
            request.data_actual = urb.transfer_buffer_length
        return "stall"
    if not U.USBD_SUCCESS(status):
        return "error"
    phase = request.phase
    if phase == "cbw":
        srb = request.sensing or request.srb
        return "ok_data" if srb.data_transfer_length else "ok_no_data"
    if phase == "data":
        request.data_actual = urb.transfer_buffer_length
        return "ok"
    if phase in ("csw", "csw_retry"):
        return _check_csw(request, urb.transfer_buffer_length)
    return "ok"


def _check_csw(request: Request, length: int) -> str:
    """§6.3: valid (13 bytes, signature, our tag) and meaningful (status, residue)."""
    csw = bot.parse_csw(request.csw) if length == bot.CSW_LENGTH else None
    if csw is None or csw.tag != request.tag:
        return "invalid"
    srb = request.sensing or request.srb
    if csw.status == bot.CSW_STATUS_PHASE_ERROR:
        return "phase_error"
    if csw.status > bot.CSW_STATUS_PHASE_ERROR or csw.residue > srb.data_transfer_length:
        return "invalid"
    return "good" if csw.status == bot.CSW_STATUS_PASSED else "failed"


def USBSTOR_UrbCompletion(device: DeviceObject | None, irp: Irp, request: Request) -> int:  # noqa: N802
    """Completion routine for every phase: pick the next phase from the table."""
    urb = request.urb
    if isinstance(urb, U.UrbBulkOrInterruptTransfer) and urb.transfer_buffer_mdl is not None:
        IoFreeMdl(urb.transfer_buffer_mdl)  # the data phase's partial MDL
    outcome = _outcome(request, irp)
    if outcome in ("gone", "cancelled"):
        nxt = outcome
    else:
        nxt = PHASE_TRANSITIONS.get((request.phase, outcome), "recover")
    if nxt in TERMINAL:
        _finish(request, nxt, outcome)
    else:
        _send_phase(request, nxt)
    return STATUS_MORE_PROCESSING_REQUIRED


def _finish(request: Request, terminal: str, outcome: str = "") -> None:
    ext = request.fdo_ext
    srb = request.srb
    if terminal == "done":
        if request.sensing is None and outcome == "failed":
            # CHECK CONDITION: keep the IRP and fetch the sense data (autosense)
            request.command_actual = request.data_actual
            request.data_actual = 0
            request.sensing = Srb(bytes([scsi.REQUEST_SENSE, 0, 0, 0, 18, 0]), 18,
                                  SRB_FLAGS_DATA_IN, memoryview(srb.sense_info_buffer),
                                  lun=srb.lun)
            _send_phase(request, "cbw")
            return
        if request.sensing is not None:
            sense = None
            if outcome == "good":
                sense = scsi.parse_sense(srb.sense_info_buffer[: request.data_actual])
            srb.srb_status = SRB_STATUS_ERROR | (SRB_STATUS_AUTOSENSE_VALID if sense else 0)
            srb.scsi_status = SCSISTAT_CHECK_CONDITION
            srb.data_transfer_length = request.command_actual
            request.status, _ = sense_to_ntstatus(sense)
        else:
            # a short data phase is an underrun, which SCSI port drivers report as
            # SRB_STATUS_DATA_OVERRUN with DataTransferLength cut to what moved; the IRP
            # still succeeds and the class driver takes the bytes it got
            short = request.data_actual < srb.data_transfer_length
            srb.srb_status = SRB_STATUS_DATA_OVERRUN if short else SRB_STATUS_SUCCESS
            srb.data_transfer_length = request.data_actual
            request.status = STATUS_SUCCESS
    elif terminal == "gone":
        srb.srb_status = SRB_STATUS_NO_DEVICE
        request.status = NTSTATUS.STATUS_DEVICE_NOT_CONNECTED
        ext.removed = True
    elif terminal in ("recover", "cancelled"):
        if request.timed_out:  # the hang timer aborted it
            srb.srb_status = SRB_STATUS_TIMEOUT
            request.status = NTSTATUS.STATUS_IO_TIMEOUT
        elif terminal == "cancelled":
            srb.srb_status = SRB_STATUS_ABORTED
            request.status = NTSTATUS.STATUS_CANCELLED
        else:
            srb.srb_status = SRB_STATUS_BUS_RESET
            request.status = NTSTATUS.STATUS_IO_DEVICE_ERROR
        srb.data_transfer_length = 0
        _reset_recovery(request)
        return
    ext.fdo.driver_object.kernel.scheduler.KeCancelTimer(ext.hang_timer)
    request.on_done(request)
    _start_next(ext)


def _reset_recovery(failed: Request) -> None:
    """§5.3.4 Reset Recovery needs synchronous requests, so it cannot run here in a
    completion routine at DISPATCH_LEVEL: a work item runs it at PASSIVE_LEVEL, as
    ReactOS's USBSTOR_QueueResetDevice queues USBSTOR_ResetDeviceWorkItem (error.c).
    The device queue stays busy meanwhile: no other command starts."""
    ext = failed.fdo_ext
    ext.fdo.driver_object.kernel.scheduler.KeCancelTimer(ext.hang_timer)
    assert ext.reset_item is not None  # allocated in AddDevice
    IoQueueWorkItem(ext.reset_item, USBSTOR_ResetDeviceWorkItem, CriticalWorkQueue, failed)


def USBSTOR_ResetDeviceWorkItem(device: DeviceObject, failed: Request) -> None:  # noqa: N802
    """PASSIVE_LEVEL: Bulk-Only Mass Storage Reset, then clear the halt of bulk-IN and
    bulk-OUT, each a synchronous URB whatever the one before it returned; then the
    failed command ends (the class driver decides whether to send it again) and the
    next one starts."""
    ext: FdoExtension = device.device_extension
    ext.recoveries += 1
    device.driver_object.kernel.scheduler.require_irql(PASSIVE_LEVEL, "Reset Recovery")
    if not ext.removed:
        _submit_urb_sync(ext, U.urb_class_interface(std.BULK_ONLY_MASS_STORAGE_RESET, 0,
                                                    ext.interface_number, 0, False))
        for pipe in (ext.pipe_in, ext.pipe_out):
            assert pipe is not None
            _submit_urb_sync(ext, U.UrbPipeRequest(
                U.URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL, pipe))
    failed.on_done(failed)
    _start_next(ext)
