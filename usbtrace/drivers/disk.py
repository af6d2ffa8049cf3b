"""Disk class driver (disk.sys with classpnp): READ/WRITE become SRBs.

The FDO sits on a LUN PDO of usbstor.  At start it asks the adapter for its
maximum transfer length (IOCTL_STORAGE_QUERY_PROPERTY), checks the unit is
ready, reads the capacity (READ CAPACITY(10), or (16) past 2 TiB) and the
write-protect bit (MODE SENSE(6)).  A READ or WRITE is checked (sector
aligned, inside the disk), split at the maximum transfer length, and each
piece is an associated IRP of the caller's IRP carrying one SRB with a
READ(10)/WRITE(10) CDB (READ(16)/WRITE(16) beyond 32-bit LBAs), sent as
IRP_MJ_SCSI.  A failed SRB is judged as classpnp's ClassInterpretSenseInfo
judges it: by its sense data when autosense is valid (UNIT ATTENTION,
becoming ready, ABORTED COMMAND are retried), else by its SRB status
(SRB_STATUS_BUS_RESET, which usbstor reports after a Reset Recovery, is
retried); up to MAXIMUM_RETRIES times, then the first final error becomes the
caller's status.

Lifetime as classpnp keeps it: every dispatch routine holds the FDO's remove
lock while it works on an IRP, each piece of a split transfer holds it until
its completion routine has run, and IRP_MN_REMOVE_DEVICE waits for all of
them (IoReleaseRemoveLockAndWait) before it passes the IRP down, detaches
and deletes the FDO.  On IRP_MN_SURPRISE_REMOVAL the PhysicalDriveN link
goes (no new opens) while handles already open keep working, failing I/O,
until they are closed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from usbtrace.storage import ioctl as io
from usbtrace.storage import scsi
from usbtrace.storage.ntstatus import sense_to_ntstatus
from usbtrace.storage.srb import (
    SRB_FLAGS_DATA_IN,
    SRB_FLAGS_DATA_OUT,
    SRB_STATUS_ABORTED,
    SRB_STATUS_AUTOSENSE_VALID,
    SRB_STATUS_BUS_RESET,
    SRB_STATUS_DATA_OVERRUN,
    SRB_STATUS_ERROR,
    SRB_STATUS_INVALID_REQUEST,
    SRB_STATUS_NO_DEVICE,
    SRB_STATUS_TIMEOUT,
    Srb,
)
from usbtrace.wdm.device import (
    DO_DEVICE_INITIALIZING,
    DO_DIRECT_IO,
    DO_POWER_PAGABLE,
    FILE_DEVICE_DISK,
    DeviceObject,
    DriverObject,
    IoAttachDeviceToDeviceStack,
    IoCreateDevice,
    IoDeleteDevice,
    IoDetachDevice,
)
from usbtrace.wdm.iomgr import (
    IoCallDriver,
    IoCompleteRequest,
    IoCopyCurrentIrpStackLocationToNext,
    IoForwardIrpSynchronously,
    IoMarkIrpPending,
    IoSetCompletionRoutine,
    IoSetNextIrpStackLocation,
    IoSkipCurrentIrpStackLocation,
    complete_irp,
)
from usbtrace.wdm.irp import (
    IRP_MJ_CLEANUP,
    IRP_MJ_CLOSE,
    IRP_MJ_CREATE,
    IRP_MJ_DEVICE_CONTROL,
    IRP_MJ_FLUSH_BUFFERS,
    IRP_MJ_PNP,
    IRP_MJ_POWER,
    IRP_MJ_READ,
    IRP_MJ_SCSI,
    IRP_MJ_SHUTDOWN,
    IRP_MJ_SYSTEM_CONTROL,
    IRP_MJ_WRITE,
    IRP_MN_CANCEL_REMOVE_DEVICE,
    IRP_MN_DEVICE_USAGE_NOTIFICATION,
    IRP_MN_QUERY_CAPABILITIES,
    IRP_MN_QUERY_PNP_DEVICE_STATE,
    IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_SET_POWER,
    IRP_MN_START_DEVICE,
    IRP_MN_SURPRISE_REMOVAL,
    SL_INVOKE_ON_CANCEL,
    SL_INVOKE_ON_ERROR,
    SL_INVOKE_ON_SUCCESS,
    DeviceIoControlParameters,
    DeviceUsageTypePaging,
    IoAllocateIrp,
    IoBuildDeviceIoControlRequest,
    IoFreeIrp,
    IoMakeAssociatedIrp,
    Irp,
    ScsiParameters,
)
from usbtrace.wdm.mdl import MmGetSystemAddressForMdlSafe
from usbtrace.wdm.power import (
    PoCallDriver,
    PoRequestPowerIrp,
    PoSetPowerState,
    PoStartNextPowerIrp,
    PowerDeviceD0,
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
from usbtrace.wdm.sched import KDpc, KEvent, KTimer
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS

STATUS_SUCCESS = NTSTATUS.STATUS_SUCCESS
STATUS_PENDING = NTSTATUS.STATUS_PENDING
STATUS_MORE_PROCESSING_REQUIRED = NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED.value
# classpnp.h: MAXIMUM_RETRIES; a transfer packet starts with NumRetries =
# NUM_IO_RETRIES = MAXIMUM_RETRIES (classp.h, Windows 8.1 on), so a command is
# tried at most five times.
MAXIMUM_RETRIES = 4
NOT_READY_RETRY_INTERVAL = 10  # seconds (classp.h)
SRB_STATUS_PHASE_SEQUENCE_FAILURE = 0x14
PNP_DEVICE_NOT_DISABLEABLE = 0x00000020
RW10 = struct.Struct(">BBIBHB")
RW16 = struct.Struct(">BBQIBB")


@dataclass
class DiskExtension:
    fdo: DeviceObject
    lower: DeviceObject
    number: int
    block_size: int = 512
    block_count: int = 0
    max_transfer: int = 0x10000
    write_protected: bool = False
    removable: bool = True  # FILE_REMOVABLE_MEDIA, from the device descriptor at start
    removed: bool = False
    open_handles: int = 0
    descriptor: Any = None
    stats: dict[str, int] = field(default_factory=lambda: {"retries": 0})
    remove_lock: IoRemoveLock = field(default_factory=IoRemoveLock)
    link: str = ""
    pdo: Any = None  # the LUN PDO: the bottom of this stack, where D-IRPs are requested for
    device_state: list[int] = field(default_factory=list)  # DEVICE_CAPABILITIES.DeviceState
    paging_files: int = 0  # DEVICE_USAGE_NOTIFICATION(DeviceUsageTypePaging) count

    @property
    def size(self) -> int:
        return self.block_size * self.block_count


def DriverEntry(driver: DriverObject, registry_path: str) -> int:  # noqa: N802
    driver.major_function[IRP_MJ_CREATE] = DiskCreateClose
    driver.major_function[IRP_MJ_CLOSE] = DiskCreateClose
    driver.major_function[IRP_MJ_CLEANUP] = DiskCreateClose
    driver.major_function[IRP_MJ_READ] = DiskReadWrite
    driver.major_function[IRP_MJ_WRITE] = DiskReadWrite
    driver.major_function[IRP_MJ_DEVICE_CONTROL] = DiskDeviceControl
    driver.major_function[IRP_MJ_FLUSH_BUFFERS] = DiskFlushBuffers
    driver.major_function[IRP_MJ_SHUTDOWN] = DiskFlushBuffers
    driver.major_function[IRP_MJ_PNP] = DiskDispatchPnp
    driver.major_function[IRP_MJ_POWER] = DiskDispatchPower
    driver.major_function[IRP_MJ_SYSTEM_CONTROL] = DiskDispatchPassThrough
    driver.driver_extension.add_device = DiskAddDevice
    driver.driver_unload = DiskUnload
    driver.driver_context = {"next_number": 0}
    return STATUS_SUCCESS


def DiskAddDevice(driver: DriverObject, pdo: DeviceObject) -> int:  # noqa: N802
    number = driver.driver_context["next_number"]
    driver.driver_context["next_number"] += 1
    name = f"\\Device\\Harddisk{number}\\DR{number}"
    fdo = IoCreateDevice(driver, None, name, FILE_DEVICE_DISK)
    lower = IoAttachDeviceToDeviceStack(fdo, pdo)
    ext = DiskExtension(fdo, lower, number)
    ext.pdo = pdo
    fdo.device_extension = ext
    IoInitializeRemoveLock(ext.remove_lock, driver.kernel.scheduler, name)
    fdo.flags |= DO_DIRECT_IO | DO_POWER_PAGABLE
    ext.link = f"\\DosDevices\\PhysicalDrive{number}"
    driver.kernel.IoCreateSymbolicLink(ext.link, name)
    fdo.flags &= ~DO_DEVICE_INITIALIZING
    return STATUS_SUCCESS


def DiskUnload(driver: DriverObject) -> None:  # noqa: N802
    driver.kernel.DbgPrint("disk: unloaded")


def DiskCreateClose(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: DiskExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    major = irp.IoGetCurrentIrpStackLocation().major_function
    status = STATUS_SUCCESS
    if major == IRP_MJ_CREATE:
        if ext.removed:
            status = NTSTATUS.STATUS_DELETE_PENDING
        else:
            ext.open_handles += 1
    elif major == IRP_MJ_CLOSE:
        ext.open_handles = max(0, ext.open_handles - 1)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return complete_irp(irp, status)


def DiskDispatchPassThrough(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: DiskExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    IoSkipCurrentIrpStackLocation(irp)
    status = IoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


def DiskDispatchPower(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """The disk class driver owns the power policy of the disk stack.

    A system set-power IRP goes down with DiskSystemPowerCompletion, which asks
    for the matching device IRP; a device set-power IRP is reported with
    PoSetPowerState before the device leaves D0 and after it is back in D0.
    Anything else goes down as it is.
    """
    ext: DiskExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        PoStartNextPowerIrp(irp)
        return complete_irp(irp, lock)
    loc = irp.IoGetCurrentIrpStackLocation()
    params = loc.parameters
    if loc.minor_function == IRP_MN_SET_POWER and params.type == "system":
        IoMarkIrpPending(irp)
        IoCopyCurrentIrpStackLocationToNext(irp)
        IoSetCompletionRoutine(irp, DiskSystemPowerCompletion, None)
        PoCallDriver(ext.lower, irp)
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return STATUS_PENDING
    if loc.minor_function == IRP_MN_SET_POWER and params.type == "device":
        if params.state != PowerDeviceD0:
            PoSetPowerState(device, "device", params.state)  # before it leaves D0
            PoStartNextPowerIrp(irp)
            IoSkipCurrentIrpStackLocation(irp)
        else:
            IoCopyCurrentIrpStackLocationToNext(irp)
            IoSetCompletionRoutine(irp, DiskPowerUpCompletion, None)
        status = PoCallDriver(ext.lower, irp)
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return status
    PoStartNextPowerIrp(irp)
    IoSkipCurrentIrpStackLocation(irp)
    status = PoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


def DiskPowerUpCompletion(device: DeviceObject | None, irp: Irp, context: Any) -> int:  # noqa: N802
    """D0 reached below: report it (PoSetPowerState after the device is back in D0)."""
    if irp.pending_returned:
        IoMarkIrpPending(irp)
    assert device is not None
    if NT_SUCCESS(irp.io_status.status):
        PoSetPowerState(device, "device", PowerDeviceD0)
    PoStartNextPowerIrp(irp)
    return STATUS_SUCCESS


def DiskSystemPowerCompletion(device: DeviceObject | None, irp: Irp, context: Any) -> int:  # noqa: N802
    """The system IRP came back up: request the device IRP its capabilities map it to.

    Going to sleep the system IRP waits for the device IRP; back to S0 it is
    completed at once, the disk having no children ("Handling a System
    Set-Power IRP in a Device Power Policy Owner").
    """
    assert device is not None
    ext: DiskExtension = device.device_extension
    system_state = irp.IoGetCurrentIrpStackLocation().parameters.state
    target = ext.device_state[system_state] if system_state < len(ext.device_state) else 0
    if system_state == PowerSystemWorking:
        target = PowerDeviceD0
    target = target or PowerDeviceD3
    if target == device.power_state or ext.removed:
        PoStartNextPowerIrp(irp)
        return STATUS_SUCCESS
    if system_state == PowerSystemWorking:
        PoRequestPowerIrp(ext.pdo, IRP_MN_SET_POWER, target, None, None)
        PoStartNextPowerIrp(irp)
        return STATUS_SUCCESS
    PoRequestPowerIrp(ext.pdo, IRP_MN_SET_POWER, target, DiskDevicePowerDone, irp)
    return STATUS_MORE_PROCESSING_REQUIRED


def DiskDevicePowerDone(pdo: DeviceObject, minor: int, state: int, system_irp: Irp,  # noqa: N802
                        io_status: Any) -> None:
    """The device IRP finished: the system IRP it was asked for can complete now."""
    PoStartNextPowerIrp(system_irp)
    IoCompleteRequest(system_irp)


# ---------------------------------------------------------------------------------
# Synchronous SRBs (start-up, flush, pass-through): ClassSendSrbSynchronous
# ---------------------------------------------------------------------------------


def _send_srb_and_wait(ext: DiskExtension, srb: Srb, what: str) -> int:
    """One SRB on an IRP of the driver's own, waited for (PASSIVE_LEVEL)."""
    irp = IoAllocateIrp(ext.lower.stack_size + 1)
    IoSetNextIrpStackLocation(irp, ext.fdo)
    loc = irp.IoGetNextIrpStackLocation()
    loc.major_function = IRP_MJ_SCSI
    loc.parameters = ScsiParameters(srb)
    event = KEvent()

    def done(device: DeviceObject | None, i: Irp, ctx: Any) -> int:
        event.KeSetEvent()
        return STATUS_MORE_PROCESSING_REQUIRED

    IoSetCompletionRoutine(irp, done, None)
    if IoCallDriver(ext.lower, irp) == STATUS_PENDING:
        ext.fdo.driver_object.kernel.scheduler.KeWaitForSingleObject(event, what)
    status = int(irp.io_status.status)
    IoFreeIrp(irp)  # ours: allocated here, kept by the completion routine
    return status


def ClassInterpretSenseInfo(srb: Srb, status: int, retried: int) -> tuple[int, bool]:  # noqa: N802
    """The caller's status for a failed SRB, and whether to retry it.

    As classpnp's ClassInterpretSenseInfo (class.c): valid sense data decides
    first; without it the SRB status does, and most SRB statuses are retried —
    SRB_STATUS_BUS_RESET (a Reset Recovery ended the command) among them, as
    STATUS_IO_DEVICE_ERROR.  A cancelled request is never retried.  Where
    classpnp says STATUS_NO_SUCH_DEVICE for a vanished device the port's
    STATUS_DEVICE_NOT_CONNECTED is kept, as the application sees it.
    """
    if status == NTSTATUS.STATUS_CANCELLED:
        return status, False
    if srb.srb_status & SRB_STATUS_AUTOSENSE_VALID:
        sense = scsi.parse_sense(srb.sense_info_buffer)
        if sense is not None:
            nt, retry = sense_to_ntstatus(sense)
            return (nt if not NT_SUCCESS(nt) else status), retry
    code = srb.srb_status & 0x3F  # SRB_STATUS()
    if code == SRB_STATUS_ABORTED:
        return NTSTATUS.STATUS_IO_TIMEOUT, True
    if code == SRB_STATUS_TIMEOUT:
        return NTSTATUS.STATUS_IO_TIMEOUT, True
    if code == SRB_STATUS_INVALID_REQUEST:
        return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, False
    if code == SRB_STATUS_NO_DEVICE:
        return status, False
    if code == SRB_STATUS_DATA_OVERRUN:
        return status, False
    if code == SRB_STATUS_PHASE_SEQUENCE_FAILURE:
        return NTSTATUS.STATUS_IO_DEVICE_ERROR, retried <= 1
    if code in (SRB_STATUS_BUS_RESET, SRB_STATUS_ERROR):
        return NTSTATUS.STATUS_IO_DEVICE_ERROR, True
    return NTSTATUS.STATUS_IO_DEVICE_ERROR, True


def ClassSendSrbSynchronous(ext: DiskExtension, srb: Srb) -> int:  # noqa: N802
    """Send one SRB and wait; retry what ClassInterpretSenseInfo says to retry."""
    length = srb.data_transfer_length
    for attempt in range(MAXIMUM_RETRIES + 1):
        srb.data_transfer_length = length
        status = _send_srb_and_wait(ext, srb, "SRB")
        if NT_SUCCESS(status):
            return status
        status, retry = ClassInterpretSenseInfo(srb, status, attempt)
        if not retry or attempt == MAXIMUM_RETRIES:
            return status
        ext.stats["retries"] += 1
        srb.srb_status = 0
    return status


def DiskStartDevice(ext: DiskExtension) -> int:  # noqa: N802
    from usbtrace.wdm.pnp import send_irp_synchronously

    kernel = ext.fdo.driver_object.kernel
    # ClassPnpStartDevice: the adapter's limits and the device's descriptor, from
    # the port driver below (answered from what usbstor already knows: no traffic)
    for property_id in (io.StorageAdapterProperty, io.StorageDeviceProperty):
        # a threaded IRP (IoBuildDeviceIoControlRequest): the I/O manager finishes it
        irp = IoBuildDeviceIoControlRequest(io.IOCTL_STORAGE_QUERY_PROPERTY, ext.lower,
                                            io.StoragePropertyQuery(property_id), 0, False,
                                            None, None)
        if send_irp_synchronously(kernel, ext.lower, irp) != STATUS_SUCCESS:
            continue
        answer = irp.system_buffer
        if isinstance(answer, io.StorageAdapterDescriptor):
            ext.max_transfer = answer.MaximumTransferLength
        elif isinstance(answer, io.StorageDeviceDescriptor):
            ext.removable = bool(answer.RemovableMedia)

    # No TEST UNIT READY at start: Windows 10 sends none (the shared capture).
    # DiskInitFdo reads the capacity, then DiskDetectFailurePrediction asks the
    # Informational Exceptions Control page; DiskStartFdo's DiskGetCacheInformation
    # asks the Caching page.  Each MODE SENSE(6) asks 192 bytes, as classpnp's
    # MODE_DATA_SIZE; the write-protect bit is in every answer's header.
    DiskReadDriveCapacity(ext)
    mode = bytearray(192)
    _mode_sense(ext, scsi.MODE_PAGE_INFORMATIONAL_EXCEPTIONS, mode)
    if _mode_sense(ext, scsi.MODE_PAGE_CACHING, mode) >= 4:
        ext.write_protected = bool(mode[2] & 0x80)
    return STATUS_SUCCESS


def _mode_sense(ext: DiskExtension, page: int, mode: bytearray) -> int:
    """ClassModeSense: MODE SENSE(6) for ``page``; the bytes returned, 0 on failure."""
    ms = Srb(bytes([scsi.MODE_SENSE_6, 0, page, 0, len(mode), 0]), len(mode),
             SRB_FLAGS_DATA_IN, memoryview(mode))
    if NT_SUCCESS(ClassSendSrbSynchronous(ext, ms)):
        return ms.data_transfer_length
    return 0


def DiskReadDriveCapacity(ext: DiskExtension) -> int:  # noqa: N802
    """ClassReadDriveCapacity: READ CAPACITY(10), or (16) past 2 TiB."""
    data = bytearray(8)
    rc = Srb(bytes([scsi.READ_CAPACITY_10]) + bytes(9), 8, SRB_FLAGS_DATA_IN, memoryview(data))
    status = ClassSendSrbSynchronous(ext, rc)
    if NT_SUCCESS(status):
        last, ext.block_size = struct.unpack(">II", data)
        if last == 0xFFFFFFFF:
            data16 = bytearray(32)
            cdb = struct.pack(">BBQIBB", scsi.SERVICE_ACTION_IN_16, scsi.SA_READ_CAPACITY_16,
                              0, 32, 0, 0)
            rc16 = Srb(cdb, 32, SRB_FLAGS_DATA_IN, memoryview(data16))
            if NT_SUCCESS(ClassSendSrbSynchronous(ext, rc16)):
                last, ext.block_size = struct.unpack_from(">QI", data16)
        ext.block_size = _sane_block_size(ext.block_size)
        ext.block_count = last + 1
    return status


def _sane_block_size(reported: int) -> int:
    """As ClassReadDriveCapacity takes a device's word for its block size: zero means
    512, and a size that is no power of two is rounded down to one."""
    if reported == 0:
        return 512
    return 1 << (reported.bit_length() - 1)


# ---------------------------------------------------------------------------------
# PnP
# ---------------------------------------------------------------------------------


def DiskDispatchPnp(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: DiskExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    minor = irp.IoGetCurrentIrpStackLocation().minor_function
    kernel = device.driver_object.kernel
    if minor == IRP_MN_START_DEVICE:
        # handled on the way up: the LUN PDO starts first
        status = IoForwardIrpSynchronously(ext.lower, irp)
        if NT_SUCCESS(status):
            status = DiskStartDevice(ext)
        if NT_SUCCESS(status):
            PoSetPowerState(device, "device", PowerDeviceD0)  # started means in D0
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, status)
    if minor == IRP_MN_QUERY_CAPABILITIES:
        # on the way up: keep the S-to-D map the power policy needs
        status = IoForwardIrpSynchronously(ext.lower, irp)
        if NT_SUCCESS(status):
            ext.device_state = list(irp.IoGetCurrentIrpStackLocation().parameters
                                    .capabilities.device_state)
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, status, irp.io_status.information)
    if minor == IRP_MN_CANCEL_REMOVE_DEVICE:
        # handled on the way up too: the bus driver first
        status = IoForwardIrpSynchronously(ext.lower, irp)
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, STATUS_SUCCESS if NT_SUCCESS(status) else status)
    if minor in (IRP_MN_DEVICE_USAGE_NOTIFICATION, IRP_MN_QUERY_PNP_DEVICE_STATE):
        # both handled on the way up, as classpnp does
        status = IoForwardIrpSynchronously(ext.lower, irp)
        info = irp.io_status.information
        if minor == IRP_MN_DEVICE_USAGE_NOTIFICATION and NT_SUCCESS(status):
            params = irp.IoGetCurrentIrpStackLocation().parameters
            if params.type == DeviceUsageTypePaging:
                ext.paging_files += 1 if params.in_path else -1
        elif minor == IRP_MN_QUERY_PNP_DEVICE_STATE and ext.paging_files:
            status = STATUS_SUCCESS
            info = (info if isinstance(info, int) else 0) | PNP_DEVICE_NOT_DISABLEABLE
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, status, info)
    if minor == IRP_MN_QUERY_REMOVE_DEVICE:
        if ext.paging_files:  # classpnp: a disk with a paging file cannot go
            IoReleaseRemoveLock(ext.remove_lock, irp)
            return complete_irp(irp, NTSTATUS.STATUS_DEVICE_BUSY)
        irp.io_status.status = STATUS_SUCCESS
    elif minor == IRP_MN_SURPRISE_REMOVAL:
        ext.removed = True
        kernel.IoDeleteSymbolicLink(ext.link)  # no new opens; open handles stay
        irp.io_status.status = STATUS_SUCCESS
    elif minor == IRP_MN_REMOVE_DEVICE:
        ext.removed = True
        IoReleaseRemoveLockAndWait(ext.remove_lock, irp)  # every IRP in flight is back
        kernel.IoDeleteSymbolicLink(ext.link)
        irp.io_status.status = STATUS_SUCCESS
        IoSkipCurrentIrpStackLocation(irp)
        status = IoCallDriver(ext.lower, irp)
        IoDetachDevice(ext.lower)
        IoDeleteDevice(device)
        return status
    IoSkipCurrentIrpStackLocation(irp)
    status = IoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


# ---------------------------------------------------------------------------------
# READ / WRITE
# ---------------------------------------------------------------------------------


def DiskReadWrite(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: DiskExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    try:
        return _read_write(device, ext, irp)
    finally:
        IoReleaseRemoveLock(ext.remove_lock, irp)  # each piece holds the lock on its own


def _read_write(device: DeviceObject, ext: DiskExtension, irp: Irp) -> int:
    loc = irp.stack[irp.current_location]
    length, offset = loc.parameters.length, loc.parameters.byte_offset
    bs = ext.block_size
    if ext.removed:
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
    if offset % bs or length % bs or offset < 0:
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_PARAMETER)
    if offset + length > ext.size:
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_PARAMETER)
    if length == 0:
        return complete_irp(irp, STATUS_SUCCESS)
    write = loc.major_function == IRP_MJ_WRITE
    if write and ext.write_protected:
        return complete_irp(irp, NTSTATUS.STATUS_MEDIA_WRITE_PROTECTED)
    mdl = irp.mdl_address
    assert mdl is not None
    view = MmGetSystemAddressForMdlSafe(mdl)
    # pieces of whole blocks within the adapter's limit; at least one block, even for a
    # device whose block is larger than the limit (the fuzzer found one)
    chunk = max(bs, ext.max_transfer - ext.max_transfer % bs)
    pieces = range(0, length, chunk)
    irp.io_status.status = STATUS_SUCCESS
    irp.io_status.information = 0
    irp.irp_count = len(pieces)
    IoMarkIrpPending(irp)
    lower = ext.lower
    stack_size = lower.stack_size + 1
    flags = SRB_FLAGS_DATA_OUT if write else SRB_FLAGS_DATA_IN
    for start in pieces:
        n = min(chunk, length - start)
        lba = (offset + start) // bs
        blocks = n // bs
        if lba + blocks > 0xFFFFFFFF:
            cdb = RW16.pack(scsi.WRITE_16 if write else scsi.READ_16, 0, lba, blocks, 0, 0)
        else:
            cdb = RW10.pack(scsi.WRITE_10 if write else scsi.READ_10, 0, lba, 0, blocks, 0)
        srb = Srb(cdb, n, flags, view[start : start + n], data_offset=start)
        assoc = IoMakeAssociatedIrp(irp, stack_size)
        assoc.mdl_address = mdl  # classpnp: the packet's IRP carries the original's MDL
        IoSetNextIrpStackLocation(assoc, device)
        IoAcquireRemoveLock(ext.remove_lock, assoc)  # released by DiskTransferCompletion
        _send_transfer(lower, assoc, srb, 0, n)
    return STATUS_PENDING


def _send_transfer(lower: DeviceObject, assoc: Irp, srb: Srb, retries: int, length: int) -> None:
    srb.data_transfer_length = length  # a retry starts from the full length again
    nxt = assoc.stack[assoc.current_location - 1]
    nxt.major_function = IRP_MJ_SCSI
    nxt.parameters = ScsiParameters(srb)
    # IoSetCompletionRoutine(assoc, DiskTransferCompletion, ..., TRUE, TRUE, TRUE), the
    # wdm.h inline, on the location just filled
    nxt.completion_routine = DiskTransferCompletion
    nxt.context = (srb, retries, length)
    nxt.control = SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL
    IoCallDriver(lower, assoc)


def DiskTransferCompletion(device: DeviceObject | None, assoc: Irp, context: Any) -> int:  # noqa: N802
    """One piece of a READ/WRITE finished: retry, or account it to the master IRP."""
    srb, retries, length = context
    master = assoc.master_irp
    assert device is not None and master is not None
    status = assoc.io_status.status
    if not NT_SUCCESS(status):
        status, retry = ClassInterpretSenseInfo(srb, status, retries)
        if retry and retries < MAXIMUM_RETRIES:
            ext: DiskExtension = device.device_extension
            ext.stats["retries"] += 1
            TransferPacketQueueRetryDpc(ext, assoc, srb, retries + 1, length,
                                        _retry_interval_ns(srb))
            return STATUS_MORE_PROCESSING_REQUIRED
    if NT_SUCCESS(status):
        master.io_status.information += srb.data_transfer_length
    elif NT_SUCCESS(master.io_status.status):
        master.io_status.status = status
    IoReleaseRemoveLock(device.device_extension.remove_lock, assoc)
    return STATUS_SUCCESS  # let the I/O manager count down the master


def _retry_interval_ns(srb: Srb) -> int:
    """When to send a failed piece again: a unit becoming ready gets
    NOT_READY_RETRY_INTERVAL (10 s, classp.h) to get there; anything else at once."""
    if srb.srb_status & SRB_STATUS_AUTOSENSE_VALID:
        sense = scsi.parse_sense(srb.sense_info_buffer)
        if sense is not None and (sense.key, sense.asc, sense.ascq) == (0x02, 0x04, 0x01):
            return NOT_READY_RETRY_INTERVAL * 1_000_000_000
    return 0


def TransferPacketQueueRetryDpc(ext: DiskExtension, assoc: Irp, srb: Srb,  # noqa: N802
                                retries: int, length: int, interval_ns: int) -> None:
    """classpnp's TransferPacketQueueRetryDpc (retry.c): the retry is sent from a DPC,
    queued at once or, with a retry interval, by a timer -- never from inside the
    completion routine that saw the failure."""
    sched = ext.fdo.driver_object.kernel.scheduler
    dpc = KDpc(TransferPacketRetryTimerDpc, (ext, assoc, srb, retries, length))
    if interval_ns == 0:
        sched.KeInsertQueueDpc(dpc)
    else:
        sched.KeSetTimer(KTimer(), interval_ns, dpc)


def TransferPacketRetryTimerDpc(dpc: KDpc, context: Any) -> None:  # noqa: N802
    """DISPATCH_LEVEL: send the piece again, with its SRB reset (retry.c)."""
    ext, assoc, srb, retries, length = context
    srb.srb_status = 0
    assoc.io_status.status = STATUS_SUCCESS
    _send_transfer(ext.lower, assoc, srb, retries, length)


# ---------------------------------------------------------------------------------
# Device control
# ---------------------------------------------------------------------------------


def DiskFlushBuffers(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: DiskExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    try:
        return _flush_buffers(ext, irp)
    finally:
        IoReleaseRemoveLock(ext.remove_lock, irp)


def _flush_buffers(ext: DiskExtension, irp: Irp) -> int:
    if ext.removed:
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
    srb = Srb(bytes([scsi.SYNCHRONIZE_CACHE_10]) + bytes(9), 0, 0)
    return complete_irp(irp, ClassSendSrbSynchronous(ext, srb))


def DiskDeviceControl(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: DiskExtension = device.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    try:
        return _device_control(ext, irp)
    finally:
        IoReleaseRemoveLock(ext.remove_lock, irp)


def _device_control(ext: DiskExtension, irp: Irp) -> int:
    params: DeviceIoControlParameters = irp.IoGetCurrentIrpStackLocation().parameters
    code = params.io_control_code
    if ext.removed:
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
    if code in (io.IOCTL_DISK_GET_DRIVE_GEOMETRY, io.IOCTL_DISK_GET_DRIVE_GEOMETRY_EX,
                io.IOCTL_DISK_GET_LENGTH_INFO):
        needed = {io.IOCTL_DISK_GET_DRIVE_GEOMETRY: 24, io.IOCTL_DISK_GET_DRIVE_GEOMETRY_EX: 32,
                  io.IOCTL_DISK_GET_LENGTH_INFO: 8}[code]
        if params.output_buffer_length < needed:
            return complete_irp(irp, NTSTATUS.STATUS_BUFFER_TOO_SMALL)
        if ext.removable:
            # disk.c's DiskIoctlGetDriveGeometry (and the _EX and length variants):
            # on removable media, "Issue ReadCapacity to update device extension
            # with information for current media" -- one READ CAPACITY each time
            status = DiskReadDriveCapacity(ext)
            if not NT_SUCCESS(status):
                return complete_irp(irp, status)
        if code == io.IOCTL_DISK_GET_LENGTH_INFO:
            irp.system_buffer = ext.size
            return complete_irp(irp, STATUS_SUCCESS, 8)
        heads, sectors = 255, 63
        cylinders = ext.block_count // (heads * sectors)
        geometry = io.DiskGeometry(cylinders, io.RemovableMedia if ext.removable
                                   else io.FixedMedia, heads, sectors, ext.block_size)
        if code == io.IOCTL_DISK_GET_DRIVE_GEOMETRY_EX:
            irp.system_buffer = io.DiskGeometryEx(geometry, ext.size)
            return complete_irp(irp, STATUS_SUCCESS, 32)
        irp.system_buffer = geometry
        return complete_irp(irp, STATUS_SUCCESS, 24)
    if code == io.IOCTL_STORAGE_QUERY_PROPERTY:
        IoSkipCurrentIrpStackLocation(irp)
        return IoCallDriver(ext.lower, irp)
    if code == io.IOCTL_SCSI_PASS_THROUGH_DIRECT:
        return _pass_through(ext, irp)
    return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)


def _pass_through(ext: DiskExtension, irp: Irp) -> int:
    sptd = irp.system_buffer
    if not isinstance(sptd, io.ScsiPassThroughDirect) or not 1 <= len(sptd.Cdb) <= 16:
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_PARAMETER)
    length = sptd.DataTransferLength
    if length and (sptd.DataBuffer is None or len(sptd.DataBuffer) < length):
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_PARAMETER)
    flags = 0
    if length:
        flags = SRB_FLAGS_DATA_IN if sptd.DataIn == io.SCSI_IOCTL_DATA_IN else SRB_FLAGS_DATA_OUT
    buffer = memoryview(sptd.DataBuffer)[:length] if length and sptd.DataBuffer is not None \
        else None
    srb = Srb(bytes(sptd.Cdb), length, flags, buffer, lun=sptd.Lun)
    srb.timeout_value = sptd.TimeOutValue
    status = _send_srb_and_wait(ext, srb, "pass-through")
    # Pass-through reports SCSI status and sense to the caller instead of failing.
    sptd.ScsiStatus = srb.scsi_status
    sptd.DataTransferLength = srb.data_transfer_length
    sptd.SenseInfo[:] = srb.sense_info_buffer
    if status in (NTSTATUS.STATUS_DEVICE_NOT_CONNECTED, NTSTATUS.STATUS_IO_DEVICE_ERROR,
                  NTSTATUS.STATUS_CANCELLED):
        return complete_irp(irp, status)
    return complete_irp(irp, STATUS_SUCCESS, srb.data_transfer_length)
