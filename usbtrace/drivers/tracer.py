"""usbtrace, the logging filter driver.

Built like the WDK's toaster filter: every MajorFunction slot points at one
pass-through dispatch routine, and the few that need more have their own (the
toaster's are PnP and power; here, when there is a sink, the data path's:
INTERNAL_DEVICE_CONTROL for bulk URBs, READ and WRITE, each with its own
completion routine; without a sink the data path passes as the toaster's
FilterPass passes everything, with no completion routine); AddDevice creates a
filter device object and attaches it to the stack.  PnP installs the same
driver as a LowerFilter of the mass-storage client driver (where it sees URBs,
PnP and power IRPs) and as an UpperFilter of the disk class driver (where it
sees READ/WRITE with byte offsets and the requesting handle).  Which one a
device object is follows from where it attached: directly on a PDO is the
lower position.

For each IRP the filter records a submission when it passes down and a
completion when its completion routine runs on the way back up; OUT payload
is copied at submission, IN payload at completion.  Records go to the sink
given in the driver's parameters (``kernel.registry["usbtrace"]``), which is
a bounded queue drained by a writer thread: the filter never touches storage.

Like the toaster filter and USBPcap, the filter holds its device's remove
lock from dispatch until its completion routine has run, and on
IRP_MN_REMOVE_DEVICE waits (IoReleaseRemoveLockAndWait) for every IRP still
passing through before it detaches and deletes its device object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from usbtrace.records import COMPLETE, SUBMIT, Record
from usbtrace.usb import urb as U
from usbtrace.wdm.device import (
    DO_BUFFERED_IO,
    DO_DEVICE_INITIALIZING,
    DO_DIRECT_IO,
    DO_POWER_PAGABLE,
    DeviceObject,
    DriverObject,
    IoAttachDeviceToDeviceStack,
    IoCreateDevice,
    IoDeleteDevice,
    IoDetachDevice,
    IoGetAttachedDevice,
)
from usbtrace.wdm.iomgr import (
    IoCallDriver,
    IoCompleteRequest,
    IoCopyCurrentIrpStackLocationToNext,
    IoSetCompletionRoutine,
    IoSkipCurrentIrpStackLocation,
)
from usbtrace.wdm.irp import (
    IRP_MJ_INTERNAL_DEVICE_CONTROL,
    IRP_MJ_MAXIMUM_FUNCTION,
    IRP_MJ_PNP,
    IRP_MJ_POWER,
    IRP_MJ_READ,
    IRP_MJ_WRITE,
    IRP_MN_QUERY_INTERFACE,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_SET_POWER,
    IRP_MN_START_DEVICE,
    SL_INVOKE_ON_CANCEL,
    SL_INVOKE_ON_ERROR,
    SL_INVOKE_ON_SUCCESS,
    SL_PENDING_RETURNED,
    DeviceCapabilities,
    DeviceIoControlParameters,
    IoBuildDeviceIoControlRequest,
    Irp,
    QueryCapabilitiesParameters,
    QueryInterfaceParameters,
    describe_parameters,
    minor_name,
)
from usbtrace.wdm.mdl import MDL_MAPPED_TO_SYSTEM_VA, MmGetSystemAddressForMdlSafe
from usbtrace.wdm.power import PoSetPowerState, PowerDeviceD0
from usbtrace.wdm.removelock import (
    IoAcquireRemoveLock,
    IoInitializeRemoveLock,
    IoReleaseRemoveLock,
    IoReleaseRemoveLockAndWait,
    IoRemoveLock,
)
from usbtrace.wdm.sched import Scheduler
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS

STATUS_SUCCESS = NTSTATUS.STATUS_SUCCESS.value
SUBMIT_URB = U.IOCTL_INTERNAL_USB_SUBMIT_URB
USBD_STATUS_PENDING = U.USBD_STATUS_PENDING
UrbBulkOrInterruptTransfer = U.UrbBulkOrInterruptTransfer

BUS_INFO_INTERFACE = U.BUS_INFO_INTERFACE
INVOKE_ALWAYS = SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL



@dataclass(slots=True)  # read at every pass: attributes by slot
class TracerExtension:
    lower: DeviceObject
    position: str  # "lower" (on the PDO: URB level) or "upper" (above the disk driver)
    sink: Callable[[Record], None] | None  # None: no one takes the records, so none are made
    # the counter records carry, in ns (KeQueryPerformanceCounter, converted by the
    # reader): on the virtual clock the scheduler's own count, read as an attribute
    # (a call per record cost 450 instructions, a tenth of making the record); on
    # the wall clock, ``wall_clock()``
    scheduler: Scheduler
    wall_clock: Callable[[], int] | None
    bus: int | None = None
    address: int | None = None
    upper_payload: bool = False
    remove_lock: IoRemoveLock = field(default_factory=IoRemoveLock)
    # PipeHandle -> (endpoint address, transfer type, stream or None), learnt from the
    # pipe information SELECT_CONFIGURATION and SELECT_INTERFACE return, as USBPcap
    # learns it (USBPcapURB.c, USBPcapParseInterfaceInformation): a bulk URB names only
    # its pipe; and from the stream handles OPEN_STATIC_STREAMS returns
    pipes: dict[U.PipeInformation, tuple[int, int, int | None]] = field(default_factory=dict)
    unknown_pipes: int = 0


# ---------------------------------------------------------------------------------


def DriverEntry(driver: DriverObject, registry_path: str) -> int:  # noqa: N802
    parameters = driver.kernel.registry.get("usbtrace", {})
    sink = parameters.get("sink")
    upper_payload = bool(parameters.get("upper_payload", False))
    for major in range(IRP_MJ_MAXIMUM_FUNCTION + 1):
        driver.major_function[major] = TracerDispatchAny
    if sink is not None:  # the data path's requests, each with a routine of its own
        driver.major_function[IRP_MJ_INTERNAL_DEVICE_CONTROL] = \
            TracerDispatchInternalDeviceControl
        if not upper_payload:
            driver.major_function[IRP_MJ_READ] = TracerDispatchReadWrite
            driver.major_function[IRP_MJ_WRITE] = TracerDispatchReadWrite
    else:  # nothing to record: the data path passes as the toaster filter's FilterPass
        driver.major_function[IRP_MJ_INTERNAL_DEVICE_CONTROL] = TracerDispatchUrbPass
        driver.major_function[IRP_MJ_READ] = TracerDispatchPass
        driver.major_function[IRP_MJ_WRITE] = TracerDispatchPass
    driver.driver_extension.add_device = TracerAddDevice
    driver.driver_unload = TracerUnload
    driver.driver_context = {
        "sink": sink,
        "positions": set(parameters.get("positions", ("lower", "upper"))),
        "upper_payload": upper_payload,
    }
    return STATUS_SUCCESS


def TracerAddDevice(driver: DriverObject, pdo: DeviceObject) -> int:  # noqa: N802
    config = driver.driver_context
    position = "lower" if pdo.attached_device is None else "upper"
    if position not in config["positions"]:
        return STATUS_SUCCESS  # switched off here: stay out of the stack
    filter_do = IoCreateDevice(driver, None, None, pdo.device_type)
    lower = IoAttachDeviceToDeviceStack(filter_do, pdo)
    scheduler = driver.kernel.scheduler
    ext = TracerExtension(lower, position, config["sink"], scheduler,
                          None if scheduler.clock == "virtual" else scheduler.now_ns,
                          upper_payload=config["upper_payload"])
    filter_do.device_extension = ext
    IoInitializeRemoveLock(ext.remove_lock, driver.kernel.scheduler, f"usbtrace {position}")
    filter_do.flags |= lower.flags & (DO_BUFFERED_IO | DO_DIRECT_IO | DO_POWER_PAGABLE)
    filter_do.device_type = lower.device_type
    filter_do.characteristics = lower.characteristics
    if position == "lower":
        _query_bus_info(ext, filter_do)
        _query_device_address(ext, filter_do)
    filter_do.flags &= ~DO_DEVICE_INITIALIZING
    return STATUS_SUCCESS


def TracerUnload(driver: DriverObject) -> None:  # noqa: N802
    driver.kernel.DbgPrint("usbtrace: unloaded")


def _query_bus_info(ext: TracerExtension, device: DeviceObject) -> None:
    from usbtrace.wdm.pnp import send_irp_synchronously

    irp = Irp(ext.lower.stack_size)
    loc = irp.IoGetNextIrpStackLocation()
    loc.major_function = IRP_MJ_PNP
    loc.minor_function = IRP_MN_QUERY_INTERFACE
    loc.parameters = QueryInterfaceParameters(BUS_INFO_INTERFACE)
    irp.io_status.status = NTSTATUS.STATUS_NOT_SUPPORTED
    status = send_irp_synchronously(device.driver_object.kernel, ext.lower, irp)
    info = irp.io_status.information
    if status == STATUS_SUCCESS and isinstance(info, dict):
        ext.bus = info.get("bus")  # the address comes from the hub: _query_device_address


def _query_device_address(ext: TracerExtension, device: DeviceObject) -> None:
    """The device address as USBPcap gets it: the parent hub and port from the device
    (IOCTL_INTERNAL_USB_GET_PARENT_HUB_INFO), then the hub's
    IOCTL_USB_GET_NODE_CONNECTION_INFORMATION for that port (USBPcapHelperFunctions.c,
    USBPcapGetNodeInformation).  A filter cannot see SET_ADDRESS: it happens before
    the device's PDO exists."""
    from usbtrace.wdm.pnp import send_irp_synchronously

    kernel = device.driver_object.kernel
    parent = U.ParentHubInfo()
    irp = IoBuildDeviceIoControlRequest(U.IOCTL_INTERNAL_USB_GET_PARENT_HUB_INFO, ext.lower,
                                        None, 0, True, None, None, argument1=parent)
    if send_irp_synchronously(kernel, ext.lower, irp) != STATUS_SUCCESS or \
            parent.parent_hub_pdo is None:
        return
    hub = IoGetAttachedDevice(parent.parent_hub_pdo)
    node = U.UsbNodeConnectionInformation(parent.port_number)
    irp = IoBuildDeviceIoControlRequest(U.IOCTL_USB_GET_NODE_CONNECTION_INFORMATION, hub,
                                        node, node.SIZE, False, None, None)
    if send_irp_synchronously(kernel, hub, irp) == STATUS_SUCCESS and node.ConnectionStatus:
        ext.address = node.DeviceAddress


# ---------------------------------------------------------------------------------
# Dispatch and completion: record, pass down, record again on the way up
# ---------------------------------------------------------------------------------


# Records are flat tuples in Event's field order, the payload apart
# (usbtrace.records.Record): one tuple a pass, as a kernel filter writes one record
# into its buffer, and no object.  Fields, in order: kind, ts (the clock's counter, in
# ns), irp_id, position, major, minor, ioctl, parent_irp_id, status, information,
# detail, urb_function, bus, device, endpoint, transfer_type, urb_status, length, setup,
# data_length, offset, file_object, record_number, raw_status, stream_id.


def TracerDispatchInternalDeviceControl(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """IRP_MJ_INTERNAL_DEVICE_CONTROL, when there is a sink: a bulk URB at the lower
    position (a CBW, data phase or CSW) is the data path, recorded here in one
    expression; any other request goes through TracerDispatchAny."""
    ext: TracerExtension = device.device_extension
    sink = ext.sink
    location = irp.current_location
    src = irp.stack[location]
    params = src.parameters
    if sink is None or type(params) is not DeviceIoControlParameters or \
            params.io_control_code != SUBMIT_URB or \
            type(urb := params.type3_input_buffer) is not UrbBulkOrInterruptTransfer:
        return TracerDispatchAny(device, irp)
    status = IoAcquireRemoveLock(ext.remove_lock, irp)
    if status:  # not STATUS_SUCCESS: REMOVE_DEVICE went through, nothing may pass any more
        return _refuse(irp, status)
    master = irp.master_irp
    parent = None if master is None else master.id
    known = ext.pipes.get(urb.pipe_handle)
    if known is None:
        known = _unknown_pipe(ext, urb.pipe_handle)
    endpoint, transfer_type, stream = known
    size = urb.length
    data = b""
    # a bulk URB's ``size`` bytes, copied once: the buffer is the caller's, which it
    # reuses (the next ReadFile into it) while the record may still wait in the queue
    if size and not endpoint & 0x80:  # OUT: there when sent
        buffer = urb.buffer
        if buffer is None:
            buffer = MmGetSystemAddressForMdlSafe(urb.transfer_buffer_mdl)
        data = bytes(buffer) if len(buffer) == size else bytes(buffer[:size])
    sink(((SUBMIT, ext.scheduler.virtual_ns if ext.wall_clock is None else ext.wall_clock(),
           irp.id, ext.position, IRP_MJ_INTERNAL_DEVICE_CONTROL, None, SUBMIT_URB, parent, None,
           None, None, urb.function, ext.bus, ext.address, endpoint, transfer_type,
           USBD_STATUS_PENDING, size, None, len(data), None, None, None, None, stream), data))
    # IoCopyCurrentIrpStackLocationToNext, then IoSetCompletionRoutine: the two wdm.h
    # inlines, inline and at once (the copy clears Control, the routine sets it); what
    # the completion needs, resolved once, as a filter keeps it in the context it
    # allocates for its completion routine (USBPcap's does)
    dst = irp.stack[location - 1]
    dst.major_function = src.major_function
    dst.minor_function = src.minor_function
    dst.flags = src.flags
    dst.parameters = params
    dst.file_object = src.file_object
    dst.completion_routine = TracerUrbCompletion
    dst.context = (parent, urb, endpoint, transfer_type, stream)
    dst.control = INVOKE_ALWAYS
    return IoCallDriver(ext.lower, irp)


def TracerDispatchReadWrite(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """IRP_MJ_READ and IRP_MJ_WRITE, when there is a sink and no payload is logged at
    the upper position: the data path's record, in one expression."""
    ext: TracerExtension = device.device_extension
    sink = ext.sink
    if sink is None or ext.upper_payload:
        return TracerDispatchAny(device, irp)
    status = IoAcquireRemoveLock(ext.remove_lock, irp)
    if status:  # not STATUS_SUCCESS: REMOVE_DEVICE went through, nothing may pass any more
        return _refuse(irp, status)
    location = irp.current_location
    loc = irp.stack[location]
    params = loc.parameters
    master = irp.master_irp
    parent = None if master is None else master.id
    file_object = loc.file_object
    sink(((SUBMIT, ext.scheduler.virtual_ns if ext.wall_clock is None else ext.wall_clock(),
           irp.id, ext.position, loc.major_function, None, None, parent, None, None, None,
           None, None, None, None, None, None, params.length, None, None, params.byte_offset,
           None if file_object is None else file_object.id, None, None, None), b""))
    # IoCopyCurrentIrpStackLocationToNext, then IoSetCompletionRoutine: the two wdm.h
    # inlines, inline on the data path as in TracerDispatchInternalDeviceControl
    dst = irp.stack[location - 1]
    dst.major_function = loc.major_function
    dst.minor_function = loc.minor_function
    dst.flags = loc.flags
    dst.parameters = params
    dst.file_object = file_object
    dst.completion_routine = TracerReadWriteCompletion
    dst.context = parent
    dst.control = INVOKE_ALWAYS
    return IoCallDriver(ext.lower, irp)


def TracerDispatchPass(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """IRP_MJ_READ and IRP_MJ_WRITE when there is no sink, and a bulk URB (through
    TracerDispatchUrbPass): nothing to record on the way down or up, so the filter
    passes the IRP as the WDK toaster filter's FilterPass does (filter.c):
    IoSkipCurrentIrpStackLocation, IoCallDriver, and the remove lock released once
    IoCallDriver returns, the filter being done with the IRP.  No completion routine
    of the filter's runs for it, and the lower driver takes the filter's stack
    location.  (Device replay's machine has no sink.)"""
    ext: TracerExtension = device.device_extension
    status = IoAcquireRemoveLock(ext.remove_lock, irp)
    if status:  # not STATUS_SUCCESS: REMOVE_DEVICE went through, nothing may pass any more
        return _refuse(irp, status)
    IoSkipCurrentIrpStackLocation(irp)
    status = IoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


def TracerDispatchUrbPass(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """IRP_MJ_INTERNAL_DEVICE_CONTROL when there is no sink: a bulk URB (a CBW, data
    phase or CSW) passes as TracerDispatchPass does; any other request goes through
    TracerDispatchAny, whose completion learns the pipes a selection returns."""
    params = irp.stack[irp.current_location].parameters
    if type(params) is not DeviceIoControlParameters or \
            params.io_control_code != SUBMIT_URB or \
            type(params.type3_input_buffer) is not UrbBulkOrInterruptTransfer:
        return TracerDispatchAny(device, irp)
    return TracerDispatchPass(device, irp)


def TracerDispatchAny(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """Every other IRP (and every IRP when no one takes records): pass it down."""
    ext: TracerExtension = device.device_extension
    status = IoAcquireRemoveLock(ext.remove_lock, irp)
    if status:  # not STATUS_SUCCESS: REMOVE_DEVICE went through, nothing may pass any more
        return _refuse(irp, status)
    loc = irp.stack[irp.current_location]
    major = loc.major_function
    sink = ext.sink
    parent: int | None = None  # the submission's parent IRP, which its completion repeats
    if sink is not None:  # else no one takes the records (device replay): make none
        master = irp.master_irp
        if master is not None:
            parent = master.id
        sink(_describe(ext, irp, loc, major, SUBMIT, parent))
    IoCopyCurrentIrpStackLocationToNext(irp)
    IoSetCompletionRoutine(irp, TracerCompletion, parent)  # on success, error and cancel
    if major == IRP_MJ_PNP and loc.minor_function == IRP_MN_REMOVE_DEVICE:
        lower = ext.lower
        status = IoCallDriver(lower, irp)
        IoReleaseRemoveLockAndWait(ext.remove_lock, irp)
        IoDetachDevice(lower)
        IoDeleteDevice(device)
        return status
    return IoCallDriver(ext.lower, irp)


def _refuse(irp: Irp, status: int) -> int:
    """Complete an IRP the remove lock turned away (REMOVE_DEVICE went through)."""
    irp.io_status.status = status
    irp.io_status.information = 0
    IoCompleteRequest(irp)
    return status


def TracerUrbCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                        context: tuple[int | None, U.UrbBulkOrInterruptTransfer, int, int,
                                       int | None]) -> int:
    """A bulk URB's completion, when there is a sink: the record from what the dispatch
    routine resolved (``context``: the parent IRP, the URB, its endpoint, transfer type
    and stream) and from the URB's outcome."""
    if irp.pending_returned:  # IoMarkIrpPending (wdm.h inlines it so)
        irp.stack[irp.current_location].control |= SL_PENDING_RETURNED
    assert device is not None
    ext: TracerExtension = device.device_extension
    parent, urb, endpoint, transfer_type, stream = context
    size = urb.length
    data = b""
    if size and endpoint & 0x80:  # IN: there once done, copied once (see the dispatch)
        buffer = urb.buffer
        if buffer is None:
            # MmGetSystemAddressForMdlSafe, the wdm.h macro: the bus driver mapped the
            # data URB's MDL, and an MDL already mapped gives its MappedSystemVa again
            mdl = urb.transfer_buffer_mdl
            buffer = mdl.mapped_system_va
            if buffer is None or mdl.freed or not mdl.mdl_flags & MDL_MAPPED_TO_SYSTEM_VA:
                buffer = MmGetSystemAddressForMdlSafe(mdl)
        data = bytes(buffer) if len(buffer) == size else bytes(buffer[:size])
    io_status = irp.io_status
    information = io_status.information
    sink = ext.sink
    if sink is not None:
        sink(((COMPLETE,
               ext.scheduler.virtual_ns if ext.wall_clock is None else ext.wall_clock(),
               irp.id, ext.position, IRP_MJ_INTERNAL_DEVICE_CONTROL, None, SUBMIT_URB, parent,
               io_status.status, information if isinstance(information, int) else None, None,
               urb.function, ext.bus, ext.address, endpoint, transfer_type, urb.status, size,
               None, len(data), None, None, None, None, stream), data))
    IoReleaseRemoveLock(ext.remove_lock, irp)  # the data path: nothing else to do
    return STATUS_SUCCESS


def TracerReadWriteCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                              parent: int | None) -> int:
    """A READ's or WRITE's completion at the upper position, when there is a sink and
    the payload is not logged there."""
    loc = irp.stack[irp.current_location]
    if irp.pending_returned:
        loc.control |= SL_PENDING_RETURNED  # IoMarkIrpPending (wdm.h inlines it so)
    assert device is not None
    ext: TracerExtension = device.device_extension
    sink = ext.sink
    if sink is not None:
        params = loc.parameters
        io_status = irp.io_status
        information = io_status.information
        file_object = loc.file_object
        sink(((COMPLETE,
               ext.scheduler.virtual_ns if ext.wall_clock is None else ext.wall_clock(),
               irp.id, ext.position, loc.major_function, None, None, parent, io_status.status,
               information if isinstance(information, int) else None, None, None, None, None,
               None, None, None, params.length, None, None, params.byte_offset,
               None if file_object is None else file_object.id, None, None, None), b""))
    IoReleaseRemoveLock(ext.remove_lock, irp)  # the data path: nothing else to do
    return STATUS_SUCCESS


def TracerCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                     parent: int | None) -> int:
    """Every other IRP's completion (and every IRP's when no one takes records)."""
    loc = irp.stack[irp.current_location]
    if irp.pending_returned:
        loc.control |= SL_PENDING_RETURNED  # IoMarkIrpPending (wdm.h inlines it so)
    assert device is not None
    ext: TracerExtension = device.device_extension
    major = loc.major_function
    sink = ext.sink
    if major == IRP_MJ_INTERNAL_DEVICE_CONTROL:
        if sink is not None:
            sink(_describe(ext, irp, loc, major, COMPLETE, parent))
        # a bulk URB selects nothing: only the rest may teach pipes
        elif type(params := loc.parameters) is not DeviceIoControlParameters or \
                type(params.type3_input_buffer) is not UrbBulkOrInterruptTransfer:
            _learn_selection(ext, params)
        IoReleaseRemoveLock(ext.remove_lock, irp)  # the data path: nothing else to do
        return STATUS_SUCCESS
    if major == IRP_MJ_READ or major == IRP_MJ_WRITE:
        if sink is not None:
            sink(_describe(ext, irp, loc, major, COMPLETE, parent))
        IoReleaseRemoveLock(ext.remove_lock, irp)  # the data path: nothing else to do
        return STATUS_SUCCESS
    if sink is not None:
        sink(_describe(ext, irp, loc, major, COMPLETE, parent))
    if irp.io_status.status < 0x80000000:  # NT_SUCCESS: every driver reports its state
        if major == IRP_MJ_PNP and loc.minor_function == IRP_MN_START_DEVICE:
            PoSetPowerState(device, "device", PowerDeviceD0)
        elif (major == IRP_MJ_POWER and loc.minor_function == IRP_MN_SET_POWER
              and loc.parameters.type == "device"):
            PoSetPowerState(device, "device", loc.parameters.state)
    if not (major == IRP_MJ_PNP and loc.minor_function == IRP_MN_REMOVE_DEVICE):
        IoReleaseRemoveLock(ext.remove_lock, irp)  # REMOVE's is released by the dispatch
    return STATUS_SUCCESS  # STATUS_CONTINUE_COMPLETION


def _unknown_pipe(ext: TracerExtension, pipe: U.PipeInformation) -> tuple[int, int, int | None]:
    """A pipe selected before the filter was there: counted, and described from itself."""
    ext.unknown_pipes += 1
    return _pipe_entry(pipe)


def _learn_selection(ext: TracerExtension, params: Any) -> None:
    """Without a sink, still learn the pipes a selection returns (the table outlives
    whatever sink comes later)."""
    if getattr(params, "io_control_code", None) != SUBMIT_URB:
        return
    urb = params.type3_input_buffer
    if isinstance(urb, U.Urb) and U.USBD_SUCCESS(urb.status):
        _learn_from(ext, urb)


def _learn_from(ext: TracerExtension, urb: U.Urb) -> None:
    """The pipe handles a successful selection or OPEN_STATIC_STREAMS returned."""
    if isinstance(urb, U.UrbSelectConfiguration):
        _learn_pipes(ext, urb.interfaces)
    elif isinstance(urb, U.UrbSelectInterface):
        _learn_pipes(ext, [urb.interface])
    elif isinstance(urb, U.UrbOpenStaticStreams):  # each stream has a handle of its own
        for stream in urb.streams:
            ext.pipes[stream] = _pipe_entry(stream)


def _stamp(ext: TracerExtension) -> int:
    """The record's time stamp, for the records built away from the data path (which
    reads it inline)."""
    return ext.scheduler.virtual_ns if ext.wall_clock is None else ext.wall_clock()


def _describe(ext: TracerExtension, irp: Irp, loc: Any, major: int, kind: str,
              parent: int | None) -> Record:
    """The record of one pass of ``irp`` through the filter (the data path's records,
    a bulk URB's and a READ's or WRITE's, are built in the dispatch and completion
    routines themselves: this is the rest)."""
    params = loc.parameters
    if major == IRP_MJ_INTERNAL_DEVICE_CONTROL:
        ioctl = getattr(params, "io_control_code", None)
    else:
        ioctl = None
    done = kind == COMPLETE
    status = information = None
    if done:
        io_status = irp.io_status
        status = io_status.status
        if isinstance(io_status.information, int):
            information = io_status.information
    minor = detail = length = offset = file_object = None
    data = b""
    if major == IRP_MJ_INTERNAL_DEVICE_CONTROL:
        if ioctl == SUBMIT_URB:
            return _describe_urb(ext, irp, params.type3_input_buffer, kind, done, parent,
                                 status, information)
        if params is not None and hasattr(params, "srb"):
            detail = "srb"
    elif major == IRP_MJ_READ or major == IRP_MJ_WRITE:
        length = params.length
        offset = params.byte_offset
        if loc.file_object is not None:
            file_object = loc.file_object.id
        if ext.upper_payload and irp.mdl_address is not None:
            view = MmGetSystemAddressForMdlSafe(irp.mdl_address)
            if major == IRP_MJ_WRITE and not done:
                data = bytes(view[:length])
            elif major == IRP_MJ_READ and done and information is not None:
                data = bytes(view[:information])
    elif major == IRP_MJ_PNP or major == IRP_MJ_POWER:  # only PnP and power have minors
        minor = loc.minor_function
        detail = _pnp_detail(irp, major, loc, params, done)
    elif params is not None and hasattr(params, "io_control_code"):
        ioctl = params.io_control_code
    return ((kind, _stamp(ext), irp.id, ext.position, major, minor, ioctl, parent, status,
             information, detail, None, None, None, None, None, None, length, None, None,
             offset, file_object, None, None, None), data)


def _pnp_detail(irp: Irp, major: int, loc: Any, params: Any, done: bool) -> str | None:
    name = minor_name(major, loc.minor_function)
    text = describe_parameters(params)
    detail = f"{name} {text}" if text else name
    if done and irp.io_status.information and not isinstance(irp.io_status.information, int):
        detail = f"{detail} -> {_short(irp.io_status.information)}"
    elif done and isinstance(params, QueryCapabilitiesParameters) and \
            NT_SUCCESS(irp.io_status.status):
        detail = f"{detail} -> {_capabilities(params.capabilities)}"
    return detail


def _describe_urb(ext: TracerExtension, irp: Irp, urb: U.Urb, kind: str, done: bool,
                  parent: int | None, status: int | None, information: int | None) -> Record:
    """Any other URB: control transfers, selections, pipe requests, streams."""
    stream_id = None
    if isinstance(urb, U.UrbBulkOrInterruptTransfer):
        known = ext.pipes.get(urb.pipe_handle)
        if known is None:
            known = _unknown_pipe(ext, urb.pipe_handle)
        endpoint, transfer_type, _ = known
        stream_id = urb.stream_id or None
    else:
        endpoint, transfer_type = urb.endpoint, urb.transfer_type
    if done and U.USBD_SUCCESS(urb.status):
        _learn_from(ext, urb)
    length = urb.transfer_buffer_length
    data = b""
    if length and (urb.direction_in if done else not urb.direction_in):
        buffer = urb.transfer_buffer
        if buffer is not None:
            data = bytes(buffer[:length])
    return ((kind, _stamp(ext), irp.id, ext.position, IRP_MJ_INTERNAL_DEVICE_CONTROL, None,
             SUBMIT_URB, parent, status, information, None, urb.function, ext.bus,
             ext.address, endpoint, transfer_type,
             urb.status if done else U.USBD_STATUS_PENDING, length, urb.setup_packet(),
             len(data), None, None, None, None, stream_id), data)


_D_STATES = {0: "-", 1: "D0", 2: "D1", 3: "D2", 4: "D3"}


def _capabilities(caps: DeviceCapabilities) -> str:
    """DEVICE_CAPABILITIES as a debugger extension would list them: the flags set, the
    device state for S0..S5, and the wake states."""
    flags = [name for name in ("removable", "surprise_removal_ok", "unique_id", "device_d1",
                               "device_d2", "wake_from_d2", "wake_from_d3")
             if getattr(caps, name)]
    states = " ".join(f"S{s - 1}={_D_STATES.get(d, d)}"
                      for s, d in enumerate(caps.device_state) if s)
    wake = (f", wake S{caps.system_wake - 1} from {_D_STATES.get(caps.device_wake)}"
            if caps.device_wake else "")
    return f"{' '.join(flags) or 'none'}; {states}{wake}"


def _learn_pipes(ext: TracerExtension, interfaces: list[U.InterfaceInformation]) -> None:
    """A new selection replaces the handles of the endpoints it covers (an endpoint
    address is unique in the active configuration)."""
    for interface in interfaces:
        addresses = {pipe.endpoint_address for pipe in interface.pipes}
        for old in [p for p, (ep, _, _) in ext.pipes.items() if ep in addresses]:
            del ext.pipes[old]
        for pipe in interface.pipes:
            ext.pipes[pipe] = _pipe_entry(pipe)


def _pipe_entry(pipe: U.PipeInformation) -> tuple[int, int, int | None]:
    stream = pipe.stream_id if isinstance(pipe, U.StreamInformation) else 0
    return pipe.endpoint_address, pipe.pipe_type, stream or None


def _short(value: Any) -> str:
    if isinstance(value, list):
        if value and isinstance(value[0], DeviceObject):
            return f"{len(value)} device(s)"
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
