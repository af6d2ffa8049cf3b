"""UASPStor, the USB Attached SCSI client driver: SRBs -> UAS information units.

Windows loads UASPStor.sys instead of usbstor when a device offers a UAS
alternate setting (Microsoft, "USB Attached SCSI (UAS) Best Practices for
Windows"): the hub reports ``USB\\Class_08&SubClass_06&Prot_62``.  It sits where
usbstor sits: an **FDO** on the USB device's PDO, one **PDO** per LUN, the disk
class driver above.  What differs is the wire:

* at IRP_MN_START_DEVICE it reads the descriptors, selects the configuration,
  then SELECT_INTERFACE for the UAS alternate setting (SET_INTERFACE on the
  wire), and takes its four pipes from the Pipe Usage descriptors (UAS r04
  §5.3.3).  On SuperSpeed, when the companions offer streams, it opens them
  with URB_FUNCTION_OPEN_STATIC_STREAMS on the status, data-in and data-out
  pipes: a command's tag is its stream id;
* there is no StartIo: up to ``QUEUE_DEPTH`` commands are in flight at once,
  each under a tag of its own (1 up: stream 0 is reserved).  An SRB that finds
  every tag taken waits in a FIFO;
* for each SRB the driver queues the URBs that take the answer *before* the
  Command IU, as Windows and Linux do (Linux ``uas.c``, uas_submit_urbs):
  with streams, the status URB and the data URB on the tag's stream, then the
  Command IU; without streams, a status URB, then the Command IU, and the data
  URB only when a Read Ready / Write Ready IU names the tag (a plain data pipe
  is a FIFO, so it must not carry two commands' transfers at once).  Without
  streams every status URB takes whichever IU comes next, and the tag inside
  says whose it is;
* the Command IU goes down on the SRB's own IRP, as usbstor's CBW does, so the
  lower filter's record of it carries the SRB's IRP id; the status and data
  URBs go on IRPs the driver allocates (IoAllocateIrp), each freed in its
  completion routine;
* a Sense IU ends the command: GOOD, or CHECK CONDITION with its sense data
  copied to the SRB's sense buffer (autosense: UAS needs no REQUEST SENSE).  A
  data URB still pending then (a read that failed before any data) is
  cancelled.  A Response IU that refuses a command (INVALID IU, OVERLAPPED
  TAG, INCORRECT LUN) fails the SRB; a URB that fails fails its command with
  SRB_STATUS_BUS_RESET, which the class driver retries.

A command still unanswered after its SRB's TimeOutValue is ended with ABORT TASK
and SRB_STATUS_TIMEOUT (``UASP_CommandTimeoutDpc``), as usbstor's hang timer ends
a Bulk-Only command with Reset Recovery.

Task management: SRB_FUNCTION_RESET_LOGICAL_UNIT becomes a Task Management
IU with LOGICAL UNIT RESET, SRB_FUNCTION_RESET_DEVICE one with I_T NEXUS
RESET; ``UASP_SendTaskManagement`` sends any function (ABORT TASK, QUERY
TASK, ...).  The commands a function that completed ended get
SRB_STATUS_ABORTED, and their pending URBs are cancelled.

The LUN PDOs, the power policy and the removal handling are usbstor's (this
module reuses its dispatch routines for them: the extension types are
usbstor's); the start-up, the SRB path and the completions are UASPStor's own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from usbtrace.decode.uas import (
    ABORT_TASK,
    ABORT_TASK_SET,
    CLEAR_TASK_SET,
    I_T_NEXUS_RESET,
    IU_READ_READY,
    IU_RESPONSE,
    IU_SENSE,
    IU_WRITE_READY,
    LOGICAL_UNIT_RESET,
    PIPE_COMMAND,
    PIPE_DATA_IN,
    PIPE_DATA_OUT,
    PIPE_STATUS,
    SENSE_IU_HEADER,
    UAS_PROTOCOL,
    build_command_iu,
    build_task_management_iu,
    max_streams,
    pipe_usage,
)
from usbtrace.drivers import usbstor
from usbtrace.drivers.usbstor import FdoExtension, PdoExtension
from usbtrace.storage import scsi
from usbtrace.storage.ntstatus import sense_to_ntstatus
from usbtrace.storage.srb import (
    SCSISTAT_CHECK_CONDITION,
    SRB_FUNCTION_EXECUTE_SCSI,
    SRB_FUNCTION_RESET_DEVICE,
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
from usbtrace.usb import urb as U
from usbtrace.wdm.device import (
    DO_DEVICE_INITIALIZING,
    DO_DIRECT_IO,
    DO_POWER_PAGABLE,
    FILE_DEVICE_MASS_STORAGE,
    DeviceObject,
    DriverObject,
    IoAttachDeviceToDeviceStack,
    IoCreateDevice,
)
from usbtrace.wdm.iomgr import (
    IoCallDriver,
    IoCancelIrp,
    IoForwardIrpSynchronously,
    IoMarkIrpPending,
    IoSetCompletionRoutine,
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
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_START_DEVICE,
    IRP_MN_SURPRISE_REMOVAL,
    DeviceIoControlParameters,
    IoAllocateIrp,
    IoFreeIrp,
    Irp,
)
from usbtrace.wdm.mdl import IoAllocateMdl, IoBuildPartialMdl, IoFreeMdl
from usbtrace.wdm.power import PoSetPowerState, PowerDeviceD0
from usbtrace.wdm.removelock import (
    IoAcquireRemoveLock,
    IoInitializeRemoveLock,
    IoReleaseRemoveLock,
)
from usbtrace.wdm.sched import KDpc, KTimer
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS
from usbtrace.wdm.workitem import IoAllocateWorkItem

STATUS_SUCCESS = NTSTATUS.STATUS_SUCCESS
STATUS_MORE_PROCESSING_REQUIRED = NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED.value
QUEUE_DEPTH = 32  # tags (and streams) in use at once
STATUS_BUFFER = SENSE_IU_HEADER + 96  # a Sense IU with the most sense data SPC-4 allows
SRB_FUNCTION_RESET_LOGICAL_UNIT = 0x20  # srb.h
SAM_STATUS_GOOD = 0x00
SAM_STATUS_CHECK_CONDITION = 0x02
RESPONSE_COMPLETE, RESPONSE_SUCCEEDED = 0x00, 0x08


@dataclass
class UaspFdoExtension(FdoExtension):
    """usbstor's FDO extension, and the UAS pipes, streams and tags."""

    pipe_command: U.PipeInformation | None = None
    pipe_status: U.PipeInformation | None = None
    pipe_data_in: U.PipeInformation | None = None
    pipe_data_out: U.PipeInformation | None = None
    streams: dict[int, list[U.StreamInformation]] = field(default_factory=dict)  # by endpoint
    use_streams: bool = False
    tags: dict[int, UaspRequest] = field(default_factory=dict)  # in flight
    waiting: deque[tuple[Irp, Srb, Callable[[UaspRequest], None]]] = \
        field(default_factory=deque)  # SRBs without a tag yet
    status_posted: int = 0  # status URBs outstanding (no streams: they take any IU)


class UaspRequest:
    """One command (or task management function) in flight under its tag."""

    __slots__ = ("irp", "srb", "fdo_ext", "on_done", "tag", "outstanding", "data_irp",
                 "status_irp", "data_actual", "status", "answered", "scsi_status", "sense",
                 "response", "failure", "tmf", "finished", "timer", "timed_out")

    def __init__(self, fdo_ext: UaspFdoExtension, irp: Irp | None, srb: Srb | None, tag: int,
                 on_done: Callable[[UaspRequest], None]) -> None:
        self.irp = irp  # the SRB's IRP (None for a task management function)
        self.srb = srb
        self.fdo_ext = fdo_ext
        self.on_done = on_done
        self.tag = tag
        self.outstanding = 0  # URBs of its own still down the stack
        self.data_irp: Irp | None = None
        self.status_irp: Irp | None = None  # with streams: the URB on its stream
        self.data_actual = 0
        self.status: int = STATUS_SUCCESS  # the NTSTATUS the SRB's IRP ends with
        self.answered = False  # its Sense IU or Response IU came
        self.scsi_status = SAM_STATUS_GOOD
        self.sense = b""
        self.response: int | None = None  # RESPONSE CODE of a Response IU
        self.failure: str | None = None  # "gone", "error", "cancelled", "aborted"
        self.tmf: tuple[int, int, int] | None = None  # (function, managed tag, LUN)
        self.finished = False
        self.timer: KTimer | None = None  # the command's timeout, while it runs
        self.timed_out = False


# ---------------------------------------------------------------------------------
# DriverEntry, AddDevice
# ---------------------------------------------------------------------------------


def DriverEntry(driver: DriverObject, registry_path: str) -> int:  # noqa: N802
    driver.major_function[IRP_MJ_CREATE] = usbstor.USBSTOR_DispatchCreateClose
    driver.major_function[IRP_MJ_CLOSE] = usbstor.USBSTOR_DispatchCreateClose
    driver.major_function[IRP_MJ_CLEANUP] = usbstor.USBSTOR_DispatchCreateClose
    driver.major_function[IRP_MJ_DEVICE_CONTROL] = usbstor.USBSTOR_DispatchDeviceControl
    driver.major_function[IRP_MJ_SCSI] = UASP_DispatchScsi
    driver.major_function[IRP_MJ_PNP] = UASP_DispatchPnp
    driver.major_function[IRP_MJ_POWER] = usbstor.USBSTOR_DispatchPower
    driver.major_function[IRP_MJ_SYSTEM_CONTROL] = usbstor.USBSTOR_DispatchSystemControl
    driver.driver_extension.add_device = UASP_AddDevice
    driver.driver_unload = UASP_Unload
    driver.driver_context = {}
    return STATUS_SUCCESS


def UASP_AddDevice(driver: DriverObject, pdo: DeviceObject) -> int:  # noqa: N802
    fdo = IoCreateDevice(driver, None, None, FILE_DEVICE_MASS_STORAGE)
    lower = IoAttachDeviceToDeviceStack(fdo, pdo)
    ext = UaspFdoExtension(fdo=fdo, lower=lower, pdo=pdo)
    ext.reset_item = IoAllocateWorkItem(fdo)
    ext.hang_item = IoAllocateWorkItem(fdo)
    fdo.device_extension = ext
    IoInitializeRemoveLock(ext.remove_lock, driver.kernel.scheduler, "uaspstor FDO")
    fdo.flags |= DO_DIRECT_IO | DO_POWER_PAGABLE
    fdo.flags &= ~DO_DEVICE_INITIALIZING
    return STATUS_SUCCESS


def UASP_Unload(driver: DriverObject) -> None:  # noqa: N802
    driver.kernel.DbgPrint("uaspstor: unloaded")


# ---------------------------------------------------------------------------------
# PnP: the start-up is UASPStor's, the rest usbstor's
# ---------------------------------------------------------------------------------


def UASP_DispatchPnp(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext = device.device_extension
    if not isinstance(ext, UaspFdoExtension):
        return usbstor.USBSTOR_PdoHandlePnp(device, irp)
    minor = irp.IoGetCurrentIrpStackLocation().minor_function
    if minor == IRP_MN_START_DEVICE:
        lock = IoAcquireRemoveLock(ext.remove_lock, irp)
        if not NT_SUCCESS(lock):
            return complete_irp(irp, lock)
        status = IoForwardIrpSynchronously(ext.lower, irp)  # the bus driver's PDO first
        if status == STATUS_SUCCESS:
            status = UASP_StartDevice(ext)
            if status == STATUS_SUCCESS:
                PoSetPowerState(device, "device", PowerDeviceD0)  # started means in D0
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, status)
    if minor in (IRP_MN_SURPRISE_REMOVAL, IRP_MN_REMOVE_DEVICE):
        ext.removed = True
        _fail_waiting(ext)
    return usbstor.USBSTOR_FdoHandlePnp(device, irp)


def _submit_urb_sync(ext: UaspFdoExtension, urb: U.Urb) -> int:
    return usbstor._submit_urb_sync(ext, urb)


def UASP_StartDevice(ext: UaspFdoExtension) -> int:  # noqa: N802
    """Descriptors, configuration, the UAS setting and its pipes, streams, then the LUN.

    The descriptor reads are usbstor's (Windows 10's order and lengths); the
    selection is the UAS one.  UAS has no GET_MAX_LUN: the model's UAS stick has
    one logical unit, and REPORT LUNS is not sent.
    """
    device = usbstor._get_descriptor(ext, None, d.DEVICE, 0, 18)
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
    if ext.use_streams:
        status = _open_streams(ext)
        if status != STATUS_SUCCESS:
            return status
    data = bytearray(36)
    status = _execute_srb_sync(ext, usbstor._inquiry_srb(0, data))
    if status != STATUS_SUCCESS:
        return status
    return UASP_CreatePDO(ext, 0)


def _configure(ext: UaspFdoExtension, irp: Irp) -> int:
    """Configuration descriptor and strings (usbstor's reads, on one reused IRP), then
    SELECT_CONFIGURATION and SELECT_INTERFACE for the UAS alternate setting."""
    head = usbstor._get_descriptor(ext, irp, d.CONFIGURATION, 0, 9)
    if head is None or len(head) < 9:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    total = int.from_bytes(head[2:4], "little")
    configuration = usbstor._get_descriptor(ext, irp, d.CONFIGURATION, 0, total)
    if configuration is None:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    ext.configuration = configuration
    langids = usbstor._get_string(ext, irp, 0, 0)
    language = int.from_bytes(langids[2:4], "little") if langids and len(langids) >= 4 else 0x0409
    if ext.device_descriptor.iSerialNumber:
        text = usbstor._get_string(ext, irp, ext.device_descriptor.iSerialNumber, language)
        ext.serial = (d.decode_string(text) if text else None) or ""
    usage = {setting: pipes for setting, (protocol, pipes) in pipe_usage(configuration).items()
             if protocol == UAS_PROTOCOL}
    if not usage:
        return NTSTATUS.STATUS_NOT_SUPPORTED  # no UAS setting: usbstor's device
    (number, alternate), by_id = next(iter(usage.items()))
    select = U.UrbSelectConfiguration(configuration)
    if usbstor._submit_urb_on(ext, irp, select) != STATUS_SUCCESS:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    choose = U.UrbSelectInterface(select.configuration_handle,
                                  U.InterfaceInformation(number, alternate))
    if usbstor._submit_urb_on(ext, irp, choose) != STATUS_SUCCESS:
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR
    ext.interface_number = number
    pipes = {pipe.endpoint_address: pipe for pipe in choose.interface.pipes}
    try:
        ext.pipe_command = pipes[by_id[PIPE_COMMAND]]
        ext.pipe_status = pipes[by_id[PIPE_STATUS]]
        ext.pipe_data_in = pipes[by_id[PIPE_DATA_IN]]
        ext.pipe_data_out = pipes[by_id[PIPE_DATA_OUT]]
    except KeyError:
        return NTSTATUS.STATUS_NOT_SUPPORTED  # a pipe without its Pipe Usage descriptor
    ext.pipe_in, ext.pipe_out = ext.pipe_data_in, ext.pipe_data_out
    ext.use_streams = max_streams(configuration, number, alternate,
                                  by_id[PIPE_STATUS]) > 0
    return STATUS_SUCCESS


def _open_streams(ext: UaspFdoExtension) -> int:
    """URB_FUNCTION_OPEN_STATIC_STREAMS on the status, data-in and data-out pipes."""
    for pipe in (ext.pipe_status, ext.pipe_data_in, ext.pipe_data_out):
        assert pipe is not None
        urb = U.UrbOpenStaticStreams(pipe, QUEUE_DEPTH)
        if _submit_urb_sync(ext, urb) != STATUS_SUCCESS or len(urb.streams) != QUEUE_DEPTH:
            return NTSTATUS.STATUS_DEVICE_DATA_ERROR
        ext.streams[pipe.endpoint_address] = urb.streams
    return STATUS_SUCCESS


def UASP_CreatePDO(ext: UaspFdoExtension, lun: int) -> int:  # noqa: N802
    """The LUN's PDO, with the queries usbstor sends as it creates one (INQUIRY, READ
    FORMAT CAPACITIES, the Unit Serial Number page): the disk stack above is the same."""
    return usbstor.create_lun_pdo(ext, lun, _start_or_wait, "uaspstor")


def _execute_srb_sync(ext: UaspFdoExtension, srb: Srb) -> int:
    """Run one SRB on an IRP of the driver's own and wait (start-up commands)."""
    return usbstor._execute_srb_sync(ext, srb, _start_or_wait)


# ---------------------------------------------------------------------------------
# IRP_MJ_SCSI: a tag, the URBs that take the answer, then the Command IU
# ---------------------------------------------------------------------------------


def UASP_DispatchScsi(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext = device.device_extension
    if not isinstance(ext, PdoExtension):
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
    fdo_ext = ext.fdo_ext
    assert isinstance(fdo_ext, UaspFdoExtension)
    srb: Srb = irp.IoGetCurrentIrpStackLocation().parameters.srb
    if ext.removed or fdo_ext.removed or \
            IoAcquireRemoveLock(ext.remove_lock, irp) != STATUS_SUCCESS:
        srb.srb_status = SRB_STATUS_NO_DEVICE
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
    srb.lun = ext.lun
    if srb.function in (SRB_FUNCTION_RESET_LOGICAL_UNIT, SRB_FUNCTION_RESET_DEVICE):
        function = LOGICAL_UNIT_RESET if srb.function == SRB_FUNCTION_RESET_LOGICAL_UNIT \
            else I_T_NEXUS_RESET
        IoMarkIrpPending(irp)

        def reset_done(tmf: UaspRequest) -> None:
            ok = tmf.response in (RESPONSE_COMPLETE, RESPONSE_SUCCEEDED)
            srb.srb_status = SRB_STATUS_SUCCESS if ok else SRB_STATUS_ERROR
            IoReleaseRemoveLock(ext.remove_lock, irp)
            complete_irp(irp, STATUS_SUCCESS if ok else NTSTATUS.STATUS_IO_DEVICE_ERROR)

        if not UASP_SendTaskManagement(fdo_ext, function, 0, ext.lun, reset_done):
            srb.srb_status = SRB_STATUS_ERROR
            IoReleaseRemoveLock(ext.remove_lock, irp)
            complete_irp(irp, NTSTATUS.STATUS_DEVICE_BUSY)
        return NTSTATUS.STATUS_PENDING
    if srb.function != SRB_FUNCTION_EXECUTE_SCSI:
        srb.srb_status = SRB_STATUS_SUCCESS
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, STATUS_SUCCESS)
    IoMarkIrpPending(irp)
    _start_or_wait(fdo_ext, irp, srb, _complete_srb_irp)
    return NTSTATUS.STATUS_PENDING


def _complete_srb_irp(request: UaspRequest) -> None:
    irp, srb = request.irp, request.srb
    assert irp is not None and srb is not None
    lun = irp.IoGetCurrentIrpStackLocation().device_object
    if lun is not None and isinstance(lun.device_extension, PdoExtension):
        IoReleaseRemoveLock(lun.device_extension.remove_lock, irp)  # held since dispatch
    ok = request.status == STATUS_SUCCESS or srb.srb_status & 0x3F in (
        SRB_STATUS_SUCCESS, SRB_STATUS_DATA_OVERRUN)
    complete_irp(irp, request.status, srb.data_transfer_length if ok else 0)


def _free_tag(ext: UaspFdoExtension) -> int | None:
    return next((tag for tag in range(1, QUEUE_DEPTH + 1) if tag not in ext.tags), None)


def _start_or_wait(ext: UaspFdoExtension, irp: Irp, srb: Srb,
                   on_done: Callable[[UaspRequest], None]) -> None:
    """The command starts now under a free tag, or waits for one (FIFO)."""
    tag = _free_tag(ext)
    if tag is None or ext.waiting:
        ext.waiting.append((irp, srb, on_done))
        return
    _start(ext, irp, srb, tag, on_done)


def _fail_waiting(ext: UaspFdoExtension) -> None:
    """The device is gone: the SRBs waiting for a tag end NO_DEVICE."""
    while ext.waiting:
        irp, srb, on_done = ext.waiting.popleft()
        request = UaspRequest(ext, irp, srb, 0, on_done)
        srb.srb_status = SRB_STATUS_NO_DEVICE
        request.status = NTSTATUS.STATUS_DEVICE_NOT_CONNECTED
        on_done(request)


def _start(ext: UaspFdoExtension, irp: Irp, srb: Srb, tag: int,
           on_done: Callable[[UaspRequest], None]) -> None:
    request = UaspRequest(ext, irp, srb, tag, on_done)
    if ext.removed:
        srb.srb_status = SRB_STATUS_NO_DEVICE
        request.status = NTSTATUS.STATUS_DEVICE_NOT_CONNECTED
        on_done(request)
        return
    ext.tags[tag] = request
    # the command's timeout (the SRB's TimeOutValue), as storport times each request
    sched = ext.fdo.driver_object.kernel.scheduler
    request.timer = KTimer()
    sched.KeSetTimer(request.timer, max(srb.timeout_value, 1) * 1_000_000_000,
                     KDpc(UASP_CommandTimeoutDpc, request))
    _post_status(ext, request if ext.use_streams else None)
    if ext.use_streams and srb.data_transfer_length:
        _post_data(request)
    cdb = srb.cdb
    iu = build_command_iu(tag, cdb, srb.lun)
    _send_iu(request, iu, irp)


def _stream_pipe(ext: UaspFdoExtension, pipe: U.PipeInformation | None,
                 tag: int) -> U.PipeInformation:
    assert pipe is not None
    if ext.use_streams:
        return ext.streams[pipe.endpoint_address][tag - 1]  # stream id == tag
    return pipe


def _send(ext: UaspFdoExtension, irp: Irp, urb: U.Urb,
          routine: Callable[[DeviceObject | None, Irp, Any], int], context: Any) -> None:
    """IOCTL_INTERNAL_USB_SUBMIT_URB with ``urb`` on ``irp`` down the USB stack."""
    loc = irp.IoGetNextIrpStackLocation()
    loc.major_function = IRP_MJ_INTERNAL_DEVICE_CONTROL
    loc.minor_function = 0
    loc.parameters = DeviceIoControlParameters(U.IOCTL_INTERNAL_USB_SUBMIT_URB, 0, 0, urb)
    IoSetCompletionRoutine(irp, routine, context, True, True, True)
    IoCallDriver(ext.lower, irp)


def _send_iu(request: UaspRequest, iu: bytes, irp: Irp | None) -> None:
    """A Command or Task Management IU on the command pipe: on the SRB's IRP when there
    is one, else on an IRP of the driver's own."""
    ext = request.fdo_ext
    assert ext.pipe_command is not None
    urb = U.UrbBulkOrInterruptTransfer(ext.pipe_command, bytearray(iu), len(iu),
                                       U.USBD_TRANSFER_DIRECTION_OUT)
    request.outstanding += 1
    own = irp is None
    _send(ext, irp if irp is not None else IoAllocateIrp(ext.lower.stack_size), urb,
          UASP_CommandCompletion, (request, urb, own))


def _post_status(ext: UaspFdoExtension, request: UaspRequest | None) -> None:
    """A status URB: on the request's stream, or (no streams) for whichever IU is next."""
    irp = IoAllocateIrp(ext.lower.stack_size)
    if request is not None:
        pipe = _stream_pipe(ext, ext.pipe_status, request.tag)
        request.outstanding += 1
    else:
        assert ext.pipe_status is not None
        pipe = ext.pipe_status
        ext.status_posted += 1
    urb = U.UrbBulkOrInterruptTransfer(pipe, bytearray(STATUS_BUFFER), STATUS_BUFFER,
                                       U.USBD_TRANSFER_DIRECTION_IN | U.USBD_SHORT_TRANSFER_OK)
    if request is not None:
        request.status_irp = irp
    _send(ext, irp, urb, UASP_StatusCompletion, (ext, request, urb))


def _post_data(request: UaspRequest) -> None:
    """The data URB of a command, on its stream (streams) or after its Ready IU."""
    ext = request.fdo_ext
    srb = request.srb
    assert srb is not None and request.irp is not None
    pipe = _stream_pipe(ext, ext.pipe_data_in if srb.data_in else ext.pipe_data_out,
                        request.tag)
    flags = (U.USBD_TRANSFER_DIRECTION_IN | U.USBD_SHORT_TRANSFER_OK) if srb.data_in else 0
    irp_mdl = request.irp.mdl_address
    if irp_mdl is not None:
        # as usbstor: a partial MDL of the SRB's IRP's MDL; TransferBuffer stays NULL
        mdl = IoAllocateMdl(irp_mdl.view, 0)
        IoBuildPartialMdl(irp_mdl, mdl, srb.data_offset, srb.data_transfer_length)
        urb = U.UrbBulkOrInterruptTransfer(pipe, None, srb.data_transfer_length, flags, mdl)
    else:
        assert srb.data_buffer is not None
        urb = U.UrbBulkOrInterruptTransfer(pipe, srb.data_buffer, srb.data_transfer_length,
                                           flags)
    irp = request.data_irp = IoAllocateIrp(ext.lower.stack_size)
    request.outstanding += 1
    _send(ext, irp, urb, UASP_DataCompletion, (request, urb))


def _urb_failure(urb: U.Urb, irp: Irp) -> str | None:
    if urb.status == U.USBD_STATUS_DEVICE_GONE or \
            irp.io_status.status == NTSTATUS.STATUS_DEVICE_NOT_CONNECTED:
        return "gone"
    if urb.status == U.USBD_STATUS_CANCELED or irp.cancel:
        return "cancelled"
    if not U.USBD_SUCCESS(urb.status):
        return "error"
    return None


# ---------------------------------------------------------------------------------
# Completion routines (DISPATCH_LEVEL); each keeps its IRP
# ---------------------------------------------------------------------------------


def UASP_CommandCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                           context: tuple[UaspRequest, U.UrbBulkOrInterruptTransfer, bool]
                           ) -> int:
    """The Command (or Task Management) IU went out; the answer comes on the status
    pipe.  A command pipe that failed fails the command."""
    request, urb, own = context
    if own:
        IoFreeIrp(irp)
    request.outstanding -= 1
    failure = _urb_failure(urb, irp)
    if failure is not None:
        _fail(request, failure)
    _maybe_finish(request)
    return STATUS_MORE_PROCESSING_REQUIRED


def UASP_StatusCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                          context: tuple[UaspFdoExtension, UaspRequest | None,
                                         U.UrbBulkOrInterruptTransfer]) -> int:
    """An IU came on the status pipe: Read/Write Ready starts a data phase (no streams),
    a Sense IU or Response IU answers its tag."""
    ext, owner, urb = context
    IoFreeIrp(irp)
    failure = _urb_failure(urb, irp)
    if owner is not None:
        owner.outstanding -= 1
        owner.status_irp = None
    else:
        ext.status_posted -= 1
    if failure is not None:
        if owner is not None:
            _fail(owner, failure)
            _maybe_finish(owner)
        return STATUS_MORE_PROCESSING_REQUIRED
    iu = bytes(urb.transfer_buffer[: urb.length])
    tag = int.from_bytes(iu[2:4], "big") if len(iu) >= 4 else -1
    request = ext.tags.get(tag)
    if request is None or (owner is not None and request is not owner):
        if owner is not None:
            _fail(owner, "error")  # an IU for another tag on this stream: a device error
            _maybe_finish(owner)
        return STATUS_MORE_PROCESSING_REQUIRED  # an IU for no command we have: ignored
    iu_id = iu[0] if iu else -1
    if iu_id in (IU_READ_READY, IU_WRITE_READY) and not ext.use_streams:
        srb = request.srb
        if srb is None or not srb.data_transfer_length or srb.data_in != (iu_id ==
                                                                         IU_READ_READY):
            _abort_unexpected(request)  # a data phase the SRB has no buffer for
        elif request.data_irp is None and not request.finished:
            _post_data(request)
        _post_status(ext, None)  # for the Sense IU that follows the data
    elif iu_id == IU_SENSE and len(iu) >= SENSE_IU_HEADER and request.tmf is None:
        request.answered = True
        request.scsi_status = iu[6]
        length = int.from_bytes(iu[14:16], "big")
        request.sense = iu[SENSE_IU_HEADER: SENSE_IU_HEADER + length]
        _cancel_data(request)  # a command that ended before its data (CHECK CONDITION)
    elif iu_id == IU_RESPONSE and len(iu) >= 8:
        request.answered = True
        request.response = iu[7]
        _cancel_data(request)
    else:
        _fail(request, "error")  # not an IU this tag can get
    _maybe_finish(request)
    return STATUS_MORE_PROCESSING_REQUIRED


def UASP_DataCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                        context: tuple[UaspRequest, U.UrbBulkOrInterruptTransfer]) -> int:
    request, urb = context
    if urb.transfer_buffer_mdl is not None:
        IoFreeMdl(urb.transfer_buffer_mdl)
    IoFreeIrp(irp)
    request.data_irp = None
    request.outstanding -= 1
    failure = _urb_failure(urb, irp)
    if failure is None:
        request.data_actual = urb.transfer_buffer_length
    elif not (failure == "cancelled" and request.answered):  # cancelled by us: no failure
        _fail(request, failure)
    _maybe_finish(request)
    return STATUS_MORE_PROCESSING_REQUIRED


def UASP_CommandTimeoutDpc(dpc: KDpc, request: UaspRequest) -> None:  # noqa: N802
    """A command still unanswered after its SRB's TimeOutValue (DISPATCH_LEVEL): ABORT
    TASK for its tag.  Once the device answers the function, the command ends
    SRB_STATUS_TIMEOUT (its pending URBs cancelled) and the class driver retries it."""
    if request.finished or request.answered or request.failure is not None:
        return
    request.timed_out = True
    request.outstanding += 1  # the tag stays taken until the function is answered

    def answered(tmf: UaspRequest) -> None:
        request.outstanding -= 1
        if not request.answered and request.failure is None:
            _abort(request)  # the function failed, or was refused: end the command anyway
        _maybe_finish(request)

    lun = request.srb.lun if request.srb is not None else 0
    if not UASP_SendTaskManagement(request.fdo_ext, ABORT_TASK, request.tag, lun, answered):
        request.outstanding -= 1
        _abort(request)


def _abort_unexpected(request: UaspRequest) -> None:
    """The device wants a data phase the command has no buffer for (or the other way
    round): without streams it holds the data pipe for it, so the host ends the task
    with ABORT TASK.  The tag stays taken until the function is answered, so that no
    new command takes it meanwhile."""
    ext = request.fdo_ext
    request.outstanding += 1

    def answered(tmf: UaspRequest) -> None:
        request.outstanding -= 1
        _maybe_finish(request)

    lun = request.srb.lun if request.srb is not None else 0
    if not UASP_SendTaskManagement(ext, ABORT_TASK, request.tag, lun, answered):
        request.outstanding -= 1
    _fail(request, "error")


def _cancel_data(request: UaspRequest) -> None:
    if request.data_irp is not None and not request.data_irp.cancel:
        IoCancelIrp(request.data_irp)


def _fail(request: UaspRequest, failure: str) -> None:
    """A URB of the command failed: its other URBs are cancelled, and it ends."""
    if request.failure is None:
        request.failure = failure
    _cancel_data(request)


def _maybe_finish(request: UaspRequest) -> None:
    """The command ends once it is answered (or failed) and none of its URBs is down."""
    if request.finished or request.outstanding or not (request.answered or request.failure):
        return
    request.finished = True
    ext = request.fdo_ext
    if request.timer is not None:
        ext.fdo.driver_object.kernel.scheduler.KeCancelTimer(request.timer)
    if ext.tags.get(request.tag) is request:
        del ext.tags[request.tag]
    if request.tmf is not None:
        _finish_tmf(request)
    else:
        _finish_command(request)
    _start_waiting(ext)


def _finish_command(request: UaspRequest) -> None:
    srb = request.srb
    assert srb is not None
    failure = request.failure
    if failure == "gone":
        srb.srb_status = SRB_STATUS_NO_DEVICE
        srb.data_transfer_length = 0
        request.status = NTSTATUS.STATUS_DEVICE_NOT_CONNECTED
        request.fdo_ext.removed = True
    elif failure == "aborted" and request.timed_out:  # ended by ABORT TASK after its timeout
        srb.srb_status = SRB_STATUS_TIMEOUT
        srb.data_transfer_length = 0
        request.status = NTSTATUS.STATUS_IO_TIMEOUT
    elif failure == "aborted":  # the device dropped it: the class driver may send it again
        srb.srb_status = SRB_STATUS_ABORTED
        srb.data_transfer_length = 0
        request.status = NTSTATUS.STATUS_IO_DEVICE_ERROR
    elif failure == "cancelled" and not request.answered:  # its owner cancelled the IRP
        srb.srb_status = SRB_STATUS_ABORTED
        srb.data_transfer_length = 0
        request.status = NTSTATUS.STATUS_CANCELLED
    elif failure is not None or request.response is not None:
        # a URB that failed, or a refusal (INVALID IU, OVERLAPPED TAG, INCORRECT LUN)
        srb.srb_status = SRB_STATUS_BUS_RESET if failure is not None else SRB_STATUS_ERROR
        srb.data_transfer_length = 0
        request.status = NTSTATUS.STATUS_IO_DEVICE_ERROR
    elif request.scsi_status == SAM_STATUS_GOOD:
        short = request.data_actual < srb.data_transfer_length
        srb.srb_status = SRB_STATUS_DATA_OVERRUN if short else SRB_STATUS_SUCCESS
        srb.data_transfer_length = request.data_actual
        request.status = STATUS_SUCCESS
    else:
        sense = scsi.parse_sense(request.sense) if request.sense else None
        if sense is not None:
            n = min(len(request.sense), len(srb.sense_info_buffer))
            srb.sense_info_buffer[:n] = request.sense[:n]
        srb.srb_status = SRB_STATUS_ERROR | (SRB_STATUS_AUTOSENSE_VALID if sense else 0)
        srb.scsi_status = request.scsi_status if request.scsi_status else \
            SCSISTAT_CHECK_CONDITION
        srb.data_transfer_length = request.data_actual
        request.status, _ = sense_to_ntstatus(sense)
    request.on_done(request)


def _start_waiting(ext: UaspFdoExtension) -> None:
    while ext.waiting:
        tag = _free_tag(ext)
        if tag is None:
            return
        irp, srb, on_done = ext.waiting.popleft()
        _start(ext, irp, srb, tag, on_done)


# ---------------------------------------------------------------------------------
# Task management
# ---------------------------------------------------------------------------------


def UASP_SendTaskManagement(ext: UaspFdoExtension, function: int, managed_tag: int,  # noqa: N802
                            lun: int, on_done: Callable[[UaspRequest], None]) -> bool:
    """A Task Management IU under a tag of its own; ``on_done`` gets its Response IU
    (``request.response``).  False when every tag is in use or the device is gone."""
    tag = _free_tag(ext)
    if tag is None or ext.removed:
        return False
    request = UaspRequest(ext, None, None, tag, on_done)
    request.tmf = (function, managed_tag, lun)
    ext.tags[tag] = request
    _post_status(ext, request if ext.use_streams else None)
    _send_iu(request, build_task_management_iu(tag, function, managed_tag, lun), None)
    return True


def _finish_tmf(request: UaspRequest) -> None:
    """The function completed: the commands it ended are aborted, their URBs cancelled."""
    ext = request.fdo_ext
    assert request.tmf is not None
    function, managed, lun = request.tmf
    if request.response in (RESPONSE_COMPLETE, RESPONSE_SUCCEEDED) and request.failure is None:
        if function == ABORT_TASK:
            ended = [r for r in ext.tags.values() if r.tag == managed and r.tmf is None]
        elif function in (ABORT_TASK_SET, CLEAR_TASK_SET, LOGICAL_UNIT_RESET):
            ended = [r for r in ext.tags.values()
                     if r.tmf is None and r.srb is not None and r.srb.lun == lun]
        elif function == I_T_NEXUS_RESET:
            ended = [r for r in ext.tags.values() if r.tmf is None]
        else:
            ended = []
        for victim in ended:
            _abort(victim)
    request.on_done(request)


def _abort(request: UaspRequest) -> None:
    """A command the device dropped: cancel what of it is still down, end it ABORTED."""
    request.failure = "aborted"
    request.answered = True
    _cancel_data(request)
    if request.status_irp is not None:  # its status URB waits on its stream: cancel it
        IoCancelIrp(request.status_irp)
    _maybe_finish(request)
