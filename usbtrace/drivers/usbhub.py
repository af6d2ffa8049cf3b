"""USB bus driver: host controller, root hub, and a PDO per attached device.

This plays the parts of usbport/usbxhci and usbhub together.  The hub FDO sits
on a root-enumerated PDO and reports one child PDO per connected port.  A
device's PDO takes URBs (IOCTL_INTERNAL_USB_SUBMIT_URB) and hands them to the
host controller, which runs them on the device backend at the time the bus is
free and raises its interrupt when each one is done; the ISR queues the DPC,
and the DPC completes the IRPs at DISPATCH_LEVEL.  Pending URB IRPs carry a
cancel routine.

The hub's own enumeration (port reset, SET_ADDRESS, the first descriptor
reads) happens before the PDO exists, below every filter, as in Windows.

Lifetime: the hub FDO and each device PDO have a remove lock; a URB IRP
holds its PDO's lock until the IRP is completed.  A PDO is deleted on
IRP_MN_REMOVE_DEVICE only once the hub has reported it missing (a device
whose start failed keeps its PDO, and its port); the FDO's REMOVE deletes
the PDOs it still has.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from usbtrace.devices.base import DeviceBackend, TransferResult, read_configuration
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb import urb as U
from usbtrace.wdm.device import (
    DO_DEVICE_INITIALIZING,
    DO_POWER_PAGABLE,
    FILE_DEVICE_BUS_EXTENDER,
    FILE_DEVICE_USB,
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
    IoReleaseCancelSpinLock,
    IoSetCancelRoutine,
    IoSetCompletionRoutine,
    IoSkipCurrentIrpStackLocation,
    complete_irp,
)
from usbtrace.wdm.irp import (
    IRP_MJ_DEVICE_CONTROL,
    IRP_MJ_INTERNAL_DEVICE_CONTROL,
    IRP_MJ_PNP,
    IRP_MJ_POWER,
    IRP_MJ_SYSTEM_CONTROL,
    IRP_MN_CANCEL_REMOVE_DEVICE,
    IRP_MN_DEVICE_USAGE_NOTIFICATION,
    IRP_MN_POWER_SEQUENCE,
    IRP_MN_QUERY_BUS_INFORMATION,
    IRP_MN_QUERY_CAPABILITIES,
    IRP_MN_QUERY_DEVICE_RELATIONS,
    IRP_MN_QUERY_DEVICE_TEXT,
    IRP_MN_QUERY_ID,
    IRP_MN_QUERY_INTERFACE,
    IRP_MN_QUERY_PNP_DEVICE_STATE,
    IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_SET_POWER,
    IRP_MN_START_DEVICE,
    IRP_MN_SURPRISE_REMOVAL,
    IRP_MN_WAIT_WAKE,
    SL_PENDING_RETURNED,
    BusQueryCompatibleIDs,
    BusQueryDeviceID,
    BusQueryHardwareIDs,
    BusQueryInstanceID,
    BusRelations,
    DeviceCapabilities,
    DeviceTextDescription,
    DeviceTextLocationInformation,
    Irp,
    PnpBusInformation,
)
from usbtrace.wdm.mdl import MmGetSystemAddressForMdlSafe
from usbtrace.wdm.pnp import DeviceNode
from usbtrace.wdm.power import (
    PoCallDriver,
    PoRequestPowerIrp,
    PoSetPowerState,
    PoStartNextPowerIrp,
    PowerDeviceD0,
    PowerDeviceD2,
    PowerDeviceD3,
    PowerSystemSleeping3,
    PowerSystemWorking,
)
from usbtrace.wdm.removelock import (
    IoAcquireRemoveLock,
    IoInitializeRemoveLock,
    IoReleaseRemoveLock,
    IoReleaseRemoveLockAndWait,
    IoRemoveLock,
)
from usbtrace.wdm.sched import KDpc, KEvent, KInterrupt, Scheduler
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS

STATUS_SUCCESS = NTSTATUS.STATUS_SUCCESS
STATUS_PENDING = NTSTATUS.STATUS_PENDING
STATUS_UNSUCCESSFUL = NTSTATUS.STATUS_UNSUCCESSFUL
PNPBus = 15  # INTERFACE_TYPE
STATUS_MORE_PROCESSING_REQUIRED = NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED.value

# USBD status -> the IRP's NTSTATUS, as usbport completes URB IRPs
USBD_TO_NTSTATUS = {
    U.USBD_STATUS_SUCCESS: NTSTATUS.STATUS_SUCCESS,
    U.USBD_STATUS_CANCELED: NTSTATUS.STATUS_CANCELLED,
    U.USBD_STATUS_DEVICE_GONE: NTSTATUS.STATUS_DEVICE_NOT_CONNECTED,
    U.USBD_STATUS_TIMEOUT: NTSTATUS.STATUS_IO_TIMEOUT,
    U.USBD_STATUS_INVALID_PARAMETER: NTSTATUS.STATUS_INVALID_PARAMETER,
    U.USBD_STATUS_INVALID_URB_FUNCTION: NTSTATUS.STATUS_INVALID_PARAMETER,
}


@dataclass(eq=False, slots=True)
class Transfer:
    """One URB in the host controller: queued, then run, then done."""

    irp: Irp
    urb: U.Urb
    pdo: DeviceObject
    run: Callable[[], TransferResult]
    result: TransferResult | None = None
    cancelled: bool = False


@dataclass
class HubFdoExtension:
    lower: DeviceObject
    fdo: DeviceObject
    ports: list[DeviceBackend | None] = field(default_factory=list)
    children: dict[int, DeviceObject] = field(default_factory=dict)  # port -> PDO
    bus_number: int = 1
    next_address: int = 1
    busy_until_ns: int = 0
    done: deque[Transfer] = field(default_factory=deque)
    dpc_list: deque[Transfer] = field(default_factory=deque)
    interrupt: KInterrupt | None = None
    dpc: KDpc | None = None
    parked: list[Transfer] = field(default_factory=list)  # IN transfers the device NAKed
    started: bool = False
    remove_lock: IoRemoveLock = field(default_factory=IoRemoveLock)
    scheduled: int = 0  # controller events still to fire; REMOVE waits for none
    device_state: list[int] = field(default_factory=list)  # DEVICE_CAPABILITIES.DeviceState
    idle: KEvent = field(default_factory=lambda: KEvent(True))
    # the machine's scheduler, bound at AddDevice: the controller's three events a URB
    # (run, done, interrupt) reach it without the fdo -> driver -> kernel chain
    scheduler: Scheduler | None = None


@dataclass
class UsbDevicePdoExtension:
    hub: HubFdoExtension
    port: int
    backend: DeviceBackend
    address: int
    device_descriptor: Any
    configuration: bytes
    serial: str
    product: str
    present: bool = True
    removed: bool = False
    in_flight: list[Transfer] = field(default_factory=list)
    pipes: dict[int, U.PipeInformation] = field(default_factory=dict)
    remove_lock: IoRemoveLock = field(default_factory=IoRemoveLock)
    wait_wake: Irp | None = None  # the pending IRP_MN_WAIT_WAKE, while armed
    idle_irp: Irp | None = None  # the client's idle notification, while held
    max_streams: dict[int, int] = field(default_factory=dict)  # endpoint -> streams offered
    streams: dict[int, list[U.StreamInformation]] = field(default_factory=dict)  # open ones


# ---------------------------------------------------------------------------------
# DriverEntry / AddDevice / DriverUnload
# ---------------------------------------------------------------------------------


def DriverEntry(driver: DriverObject, registry_path: str) -> int:  # noqa: N802
    driver.major_function[IRP_MJ_PNP] = UsbhubDispatchPnp
    driver.major_function[IRP_MJ_POWER] = UsbhubDispatchPower
    driver.major_function[IRP_MJ_INTERNAL_DEVICE_CONTROL] = UsbhubDispatchInternalDeviceControl
    driver.major_function[IRP_MJ_DEVICE_CONTROL] = UsbhubDispatchDeviceControl
    driver.major_function[IRP_MJ_SYSTEM_CONTROL] = UsbhubDispatchSystemControl
    driver.driver_extension.add_device = UsbhubAddDevice
    driver.driver_unload = UsbhubUnload
    parameters = driver.kernel.registry.get("usbhub", {})
    driver.driver_context = {"ports": list(parameters.get("ports", []))}
    return STATUS_SUCCESS


def UsbhubAddDevice(driver: DriverObject, pdo: DeviceObject) -> int:  # noqa: N802
    fdo = IoCreateDevice(driver, None, None, FILE_DEVICE_USB)
    lower = IoAttachDeviceToDeviceStack(fdo, pdo)
    ext = HubFdoExtension(lower=lower, fdo=fdo, ports=driver.driver_context["ports"],
                          scheduler=driver.kernel.scheduler)
    fdo.device_extension = ext
    IoInitializeRemoveLock(ext.remove_lock, driver.kernel.scheduler, "usbhub FDO")
    fdo.flags |= DO_POWER_PAGABLE
    fdo.flags &= ~DO_DEVICE_INITIALIZING
    return STATUS_SUCCESS


def UsbhubUnload(driver: DriverObject) -> None:  # noqa: N802
    driver.kernel.DbgPrint("usbhub: unloaded")


def _is_fdo(device: DeviceObject) -> bool:
    return isinstance(device.device_extension, HubFdoExtension)


# ---------------------------------------------------------------------------------
# Port changes: what the hub's status-change interrupt would report
# ---------------------------------------------------------------------------------


def plug(hub_node: DeviceNode, backend: DeviceBackend) -> None:
    """Connect ``backend`` to a free port and let PnP enumerate it."""
    fdo = hub_node.pdo.attached_device
    assert fdo is not None and _is_fdo(fdo)
    ext: HubFdoExtension = fdo.device_extension
    ext.ports.append(backend)
    pnp = fdo.driver_object.kernel.pnp
    assert pnp is not None
    pnp.enumerate(hub_node)


# ---------------------------------------------------------------------------------
# PnP
# ---------------------------------------------------------------------------------


def UsbhubDispatchPnp(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    if _is_fdo(device):
        return UsbhubFdoPnp(device, irp)
    return UsbhubPdoPnp(device, irp)


def UsbhubFdoPnp(fdo: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: HubFdoExtension = fdo.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    loc = irp.IoGetCurrentIrpStackLocation()
    minor = loc.minor_function
    if minor in (IRP_MN_START_DEVICE, IRP_MN_CANCEL_REMOVE_DEVICE):
        # handled on the way up: the root enumerator's PDO first
        status = IoForwardIrpSynchronously(ext.lower, irp)
        if minor == IRP_MN_START_DEVICE and status == STATUS_SUCCESS:
            ext.interrupt = KInterrupt(UsbhubInterruptService, ext)
            ext.dpc = KDpc(UsbhubDpcForIsr, ext)
            ext.started = True
            PoSetPowerState(fdo, "device", PowerDeviceD0)  # started means in D0
        elif minor == IRP_MN_CANCEL_REMOVE_DEVICE:
            status = STATUS_SUCCESS
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, status)
    if minor == IRP_MN_QUERY_CAPABILITIES:
        # on the way up: the S-to-D map the hub's power policy needs
        status = IoForwardIrpSynchronously(ext.lower, irp)
        if NT_SUCCESS(status):
            ext.device_state = list(loc.parameters.capabilities.device_state)
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return complete_irp(irp, status, irp.io_status.information)
    if minor == IRP_MN_QUERY_DEVICE_RELATIONS and loc.parameters.type == BusRelations:
        relations = []
        for port, backend in enumerate(ext.ports):
            if backend is None or not backend.connected:
                pdo = ext.children.pop(port, None)
                if pdo is not None:
                    pdo.device_extension.present = False  # reported missing from now on
                continue
            pdo = ext.children.get(port)
            if pdo is None:
                pdo = _enumerate_port(fdo, ext, port, backend)
                if pdo is None:
                    continue
                ext.children[port] = pdo
            relations.append(pdo)
        irp.io_status.status = STATUS_SUCCESS
        irp.io_status.information = relations
    elif minor == IRP_MN_REMOVE_DEVICE:
        IoReleaseRemoveLockAndWait(ext.remove_lock, irp)
        # the controller quiesces: no event of ours may outlive the driver (bug check 0xCE)
        fdo.driver_object.kernel.scheduler.KeWaitForSingleObject(ext.idle, "usbhub idle")
        for pdo in list(ext.children.values()):  # the children go with their bus
            pdo.device_extension.present = False
            pdo.device_extension.removed = True
            if not pdo.deleted:
                IoDeleteDevice(pdo)
        ext.children.clear()
        ext.started = False
        irp.io_status.status = STATUS_SUCCESS
        IoSkipCurrentIrpStackLocation(irp)
        status = IoCallDriver(ext.lower, irp)
        IoDetachDevice(ext.lower)
        IoDeleteDevice(fdo)
        return status
    elif minor in (IRP_MN_QUERY_REMOVE_DEVICE, IRP_MN_SURPRISE_REMOVAL):
        irp.io_status.status = STATUS_SUCCESS
    IoSkipCurrentIrpStackLocation(irp)
    status = IoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


def _enumerate_port(fdo: DeviceObject, ext: HubFdoExtension, port: int,
                    backend: DeviceBackend) -> DeviceObject | None:
    """Reset the port, address the device and read what the IDs need."""
    backend.reset_port()
    buf = bytearray(64)
    backend.control(std.build_setup(0x80, std.GET_DESCRIPTOR, d.DEVICE << 8, 0, 64), buf)
    address = ext.next_address
    ext.next_address += 1
    backend.control(std.build_setup(0x00, std.SET_ADDRESS, address, 0, 0), bytearray())
    buf = bytearray(18)
    r = backend.control(std.build_setup(0x80, std.GET_DESCRIPTOR, d.DEVICE << 8, 0, 18), buf)
    device_descriptor = d.parse_device_descriptor(bytes(buf[: r.actual])) \
        if r.status == U.USBD_STATUS_SUCCESS else None
    if device_descriptor is None:  # failed, short, or not a device descriptor at all
        fdo.driver_object.kernel.DbgPrint("usbhub: port %d: device descriptor failed", port)
        return None
    config = read_configuration(backend)

    def string(index: int) -> str:
        if not index:
            return ""
        sbuf = bytearray(255)
        res = backend.control(
            std.build_setup(0x80, std.GET_DESCRIPTOR, (d.STRING << 8) | index, 0x0409, 255), sbuf)
        return d.decode_string(bytes(sbuf[: res.actual])) or ""

    serial = string(device_descriptor.iSerialNumber)
    product = string(device_descriptor.iProduct)
    pdo = IoCreateDevice(fdo.driver_object, None, None, FILE_DEVICE_BUS_EXTENDER)
    pdo_ext = UsbDevicePdoExtension(
        hub=ext, port=port, backend=backend, address=address,
        device_descriptor=device_descriptor, configuration=bytes(config), serial=serial,
        product=product,
    )
    IoInitializeRemoveLock(pdo_ext.remove_lock, fdo.driver_object.kernel.scheduler,
                           f"usbhub port {port}")
    pdo.device_extension = pdo_ext
    pdo.flags |= DO_POWER_PAGABLE
    pdo.flags &= ~DO_DEVICE_INITIALIZING
    return pdo


def _fill_capabilities(ext: UsbDevicePdoExtension, caps: DeviceCapabilities) -> None:
    """What a USB hub reports for a device on one of its ports: removable, surprise
    removal is fine, D3 in every sleep state, and remote wake-up from D2 (S3) when the
    configuration descriptor says the device supports it (bmAttributes bit 5)."""
    caps.removable = True
    caps.surprise_removal_ok = True
    caps.unique_id = bool(ext.serial)
    caps.address = ext.port + 1
    caps.ui_number = ext.port + 1
    caps.device_state = [0, PowerDeviceD0] + [PowerDeviceD3] * 5
    if _remote_wakeup(ext):
        caps.device_d2 = True
        caps.wake_from_d2 = True
        caps.device_state[PowerSystemSleeping3] = PowerDeviceD2
        caps.device_wake = PowerDeviceD2
        caps.system_wake = PowerSystemSleeping3


def _first_interface(pdo_ext: UsbDevicePdoExtension) -> tuple[int, int, int]:
    """Class, subclass and protocol of the first interface, for the compatible IDs.  An
    alternate setting that speaks UAS (8/6/0x62) wins over setting 0, so that a UAS
    stick gets USB\\Class_08&SubClass_06&Prot_62 and UASPStor ("USB Attached SCSI
    (UAS) Best Practices for Windows": Windows loads UASPStor when the device offers
    a UAS alternate setting)."""
    tree = d.configuration_tree(pdo_ext.configuration)
    if not tree["interfaces"]:
        return (0, 0, 0)
    first = tree["interfaces"][0]["interface"]
    for entry in tree["interfaces"]:
        i = entry["interface"]
        if i.bInterfaceNumber == first.bInterfaceNumber and \
                (i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol) == (8, 6, 0x62):
            return (8, 6, 0x62)
    return (first.bInterfaceClass, first.bInterfaceSubClass, first.bInterfaceProtocol)


def UsbhubPdoPnp(pdo: DeviceObject, irp: Irp) -> int:  # noqa: N802
    ext: UsbDevicePdoExtension = pdo.device_extension
    loc = irp.IoGetCurrentIrpStackLocation()
    minor = loc.minor_function
    dd = ext.device_descriptor
    vid_pid = f"USB\\VID_{dd.idVendor:04X}&PID_{dd.idProduct:04X}"
    if minor == IRP_MN_QUERY_ID:
        id_type = loc.parameters.id_type
        cls, sub, prot = _first_interface(ext)
        if id_type == BusQueryDeviceID:
            return complete_irp(irp, STATUS_SUCCESS, vid_pid)
        if id_type == BusQueryHardwareIDs:
            return complete_irp(irp, STATUS_SUCCESS,
                             [f"{vid_pid}&REV_{dd.bcdDevice:04X}", vid_pid])
        if id_type == BusQueryCompatibleIDs:
            return complete_irp(irp, STATUS_SUCCESS, [
                f"USB\\Class_{cls:02X}&SubClass_{sub:02X}&Prot_{prot:02X}",
                f"USB\\Class_{cls:02X}&SubClass_{sub:02X}",
                f"USB\\Class_{cls:02X}",
            ])
        if id_type == BusQueryInstanceID:
            instance = ext.serial or f"{ext.hub.bus_number}&{ext.port}"
            return complete_irp(irp, STATUS_SUCCESS, instance)
        return complete_irp(irp, irp.io_status.status, irp.io_status.information)
    if minor == IRP_MN_QUERY_DEVICE_TEXT:
        if loc.parameters.device_text_type == DeviceTextDescription:
            return complete_irp(irp, STATUS_SUCCESS, ext.product)
        if loc.parameters.device_text_type == DeviceTextLocationInformation:
            return complete_irp(irp, STATUS_SUCCESS,
                                f"Port_#{ext.port + 1:04d}.Hub_#{ext.hub.bus_number:04d}")
        return complete_irp(irp, irp.io_status.status, irp.io_status.information)
    if minor == IRP_MN_QUERY_CAPABILITIES:
        _fill_capabilities(ext, loc.parameters.capabilities)
        return complete_irp(irp, STATUS_SUCCESS)
    if minor == IRP_MN_QUERY_BUS_INFORMATION:
        return complete_irp(irp, STATUS_SUCCESS,
                            PnpBusInformation("GUID_BUS_TYPE_USB", PNPBus, ext.hub.bus_number))
    if minor in (IRP_MN_QUERY_PNP_DEVICE_STATE, IRP_MN_DEVICE_USAGE_NOTIFICATION):
        return complete_irp(irp, STATUS_SUCCESS, irp.io_status.information)
    if minor == IRP_MN_QUERY_INTERFACE:
        if loc.parameters.interface_type == U.BUS_INFO_INTERFACE:
            return complete_irp(irp, STATUS_SUCCESS, {
                "bus": ext.hub.bus_number,
                "speed": ext.backend.speed.name})
        return complete_irp(irp, irp.io_status.status, irp.io_status.information)
    if minor in (IRP_MN_START_DEVICE, IRP_MN_QUERY_REMOVE_DEVICE, IRP_MN_CANCEL_REMOVE_DEVICE):
        if minor == IRP_MN_START_DEVICE:
            ext.removed = False
            PoSetPowerState(pdo, "device", PowerDeviceD0)  # the port is powered with it
        return complete_irp(irp, STATUS_SUCCESS)
    if minor == IRP_MN_SURPRISE_REMOVAL:
        ext.removed = True
        _fail_in_flight(ext, U.USBD_STATUS_DEVICE_GONE)
        _fail_wait_wake(ext)
        return complete_irp(irp, STATUS_SUCCESS)
    if minor == IRP_MN_REMOVE_DEVICE:
        ext.removed = True
        _fail_in_flight(ext, U.USBD_STATUS_DEVICE_GONE)
        _fail_wait_wake(ext)
        status = complete_irp(irp, STATUS_SUCCESS)
        if not ext.present and not pdo.deleted:
            # reported missing: the last REMOVE it gets; nothing holds it any more
            if IoAcquireRemoveLock(ext.remove_lock, irp) == STATUS_SUCCESS:
                IoReleaseRemoveLockAndWait(ext.remove_lock, irp)
            IoDeleteDevice(pdo)
        return status
    # anything else (QUERY_DEVICE_RELATIONS included: a PDO has no children) keeps its status
    return complete_irp(irp, irp.io_status.status, irp.io_status.information)


def UsbhubFdoPassDown(fdo: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """Skip and call the root enumerator's PDO, holding the FDO's remove lock."""
    ext: HubFdoExtension = fdo.device_extension
    lock = IoAcquireRemoveLock(ext.remove_lock, irp)
    if not NT_SUCCESS(lock):
        return complete_irp(irp, lock)
    IoSkipCurrentIrpStackLocation(irp)
    status = IoCallDriver(ext.lower, irp)
    IoReleaseRemoveLock(ext.remove_lock, irp)
    return status


USB_RESUME_NS = 30_000_000  # USB 2.0 §7.1.7.7: 20 ms of resume signalling, 10 ms recovery


def UsbhubDispatchPower(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    if _is_fdo(device):
        return UsbhubFdoPower(device, irp)
    return UsbhubPdoPower(device, irp)


def UsbhubFdoPower(fdo: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """The hub FDO owns the power policy of its own stack (the root enumerator's PDO
    below it): a system IRP is followed by the device IRP its capabilities map it to."""
    ext: HubFdoExtension = fdo.device_extension
    loc = irp.IoGetCurrentIrpStackLocation()
    params = loc.parameters
    if loc.minor_function == IRP_MN_SET_POWER and params.type == "system":
        lock = IoAcquireRemoveLock(ext.remove_lock, irp)
        if not NT_SUCCESS(lock):
            PoStartNextPowerIrp(irp)
            return complete_irp(irp, lock)
        IoMarkIrpPending(irp)
        IoCopyCurrentIrpStackLocationToNext(irp)
        IoSetCompletionRoutine(irp, UsbhubSystemPowerCompletion, None)
        PoCallDriver(ext.lower, irp)
        IoReleaseRemoveLock(ext.remove_lock, irp)
        return STATUS_PENDING
    if loc.minor_function == IRP_MN_SET_POWER and params.type == "device":
        PoSetPowerState(fdo, "device", params.state)
    PoStartNextPowerIrp(irp)
    return UsbhubFdoPassDown(fdo, irp)


def UsbhubSystemPowerCompletion(device: DeviceObject | None, irp: Irp,  # noqa: N802
                                context: Any) -> int:
    """The system IRP is back from the root enumerator: request the hub's device IRP;
    the hub has children, so the system IRP waits for it."""
    assert device is not None
    ext: HubFdoExtension = device.device_extension
    system_state = irp.IoGetCurrentIrpStackLocation().parameters.state
    if system_state == PowerSystemWorking:
        target = PowerDeviceD0
    else:
        target = (ext.device_state[system_state] if system_state < len(ext.device_state)
                  else 0) or PowerDeviceD3
    if target == device.power_state:
        PoStartNextPowerIrp(irp)
        return STATUS_SUCCESS
    PoRequestPowerIrp(ext.lower, IRP_MN_SET_POWER, target, UsbhubDevicePowerDone, irp)
    return STATUS_MORE_PROCESSING_REQUIRED


def UsbhubDevicePowerDone(pdo: DeviceObject, minor: int, state: int,  # noqa: N802
                          system_irp: Irp, io_status: Any) -> None:
    PoStartNextPowerIrp(system_irp)
    IoCompleteRequest(system_irp)


def UsbhubPdoPower(pdo: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """The bus driver's part: suspend and resume the port, hold a WAIT_WAKE."""
    ext: UsbDevicePdoExtension = pdo.device_extension
    loc = irp.IoGetCurrentIrpStackLocation()
    minor = loc.minor_function
    PoStartNextPowerIrp(irp)
    if minor == IRP_MN_WAIT_WAKE:
        return _arm_wait_wake(pdo, ext, irp)
    if minor == IRP_MN_POWER_SEQUENCE:
        return complete_irp(irp, NTSTATUS.STATUS_NOT_IMPLEMENTED)
    if minor == IRP_MN_SET_POWER and loc.parameters.type == "device":
        state = loc.parameters.state
        if state == PowerDeviceD0 and pdo.power_state not in (PowerDeviceD0, 0) \
                and not ext.removed:
            # resume the port: the IRP completes once the device is back (USB 2.0 §7.1.7.7)
            IoMarkIrpPending(irp)
            hub = ext.hub
            hub.scheduled += 1
            hub.idle.KeClearEvent()
            pdo.driver_object.kernel.scheduler.schedule(USB_RESUME_NS, UsbhubResumeDone,
                                                        pdo, irp)
            return STATUS_PENDING
        PoSetPowerState(pdo, "device", state)  # suspended (D2/D3) from here on
        return complete_irp(irp, STATUS_SUCCESS)
    return complete_irp(irp, STATUS_SUCCESS)  # system IRPs: only the bus driver completes


def UsbhubResumeDone(pdo: DeviceObject, irp: Irp) -> None:  # noqa: N802
    """Resume recovery is over: the device is in D0 again."""
    _host_controller_event_done(pdo.device_extension.hub)
    PoSetPowerState(pdo, "device", PowerDeviceD0)
    irp.io_status.status = STATUS_SUCCESS
    IoCompleteRequest(irp)


def _arm_wait_wake(pdo: DeviceObject, ext: UsbDevicePdoExtension, irp: Irp) -> int:
    """Hold the WAIT_WAKE until the device signals resume or the IRP is cancelled; a
    device without remote wake-up in its configuration cannot arm one."""
    if not _remote_wakeup(ext) or ext.removed:
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_STATE)
    if ext.wait_wake is not None:
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_BUSY)
    IoMarkIrpPending(irp)
    IoSetCancelRoutine(irp, UsbhubCancelWaitWake)
    ext.wait_wake = irp
    return STATUS_PENDING


def UsbhubCancelWaitWake(device: DeviceObject, irp: Irp) -> None:  # noqa: N802
    """Cancel routine of the armed WAIT_WAKE (cancel spin lock held: released first)."""
    IoReleaseCancelSpinLock(device, irp.cancel_irql)
    ext: UsbDevicePdoExtension = device.device_extension
    if ext.wait_wake is irp:
        ext.wait_wake = None
    complete_irp(irp, NTSTATUS.STATUS_CANCELLED)


def UsbhubRemoteWakeup(pdo: DeviceObject) -> bool:  # noqa: N802
    """The device signalled resume on its port: complete the armed WAIT_WAKE."""
    ext: UsbDevicePdoExtension = pdo.device_extension
    irp = ext.wait_wake
    if irp is None or IoSetCancelRoutine(irp, None) is None:
        return False
    ext.wait_wake = None
    complete_irp(irp, STATUS_SUCCESS)
    return True


# ---- selective suspend ---------------------------------------------------------------


def UsbhubSubmitIdleNotification(pdo: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """Hold the client's idle request and call its idle callback when the port may be
    suspended (at once here: one function per port, no URB in flight is required of it)."""
    ext: UsbDevicePdoExtension = pdo.device_extension
    info = irp.IoGetCurrentIrpStackLocation().parameters.type3_input_buffer
    if not isinstance(info, U.UsbIdleCallbackInfo):
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_PARAMETER)
    if ext.removed:
        return complete_irp(irp, NTSTATUS.STATUS_NO_SUCH_DEVICE)
    if ext.idle_irp is not None:
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_BUSY)
    IoMarkIrpPending(irp)
    IoSetCancelRoutine(irp, UsbhubCancelIdleNotification)
    ext.idle_irp = irp
    hub = ext.hub
    hub.scheduled += 1
    hub.idle.KeClearEvent()
    pdo.driver_object.kernel.scheduler.schedule(0, UsbhubIdleCallbackWorker, pdo, irp, info)
    return STATUS_PENDING


def UsbhubIdleCallbackWorker(pdo: DeviceObject, irp: Irp,  # noqa: N802
                             info: U.UsbIdleCallbackInfo) -> None:
    """At PASSIVE_LEVEL: the client powers its device down in its idle callback; the
    hub then suspends the port (the D2 IRP the client sent did that here)."""
    ext: UsbDevicePdoExtension = pdo.device_extension
    _host_controller_event_done(ext.hub)
    if ext.idle_irp is irp and not irp.cancel:
        scheduler = pdo.driver_object.kernel.scheduler
        old = scheduler.irql
        scheduler.irql = 0
        try:
            info.idle_callback(info.idle_context)
        finally:
            scheduler.irql = old


def UsbhubCancelIdleNotification(device: DeviceObject, irp: Irp) -> None:  # noqa: N802
    """The client wants its device back (or goes away): the idle request ends.
    Called holding the cancel spin lock, which it releases first."""
    IoReleaseCancelSpinLock(device, irp.cancel_irql)
    ext: UsbDevicePdoExtension = device.device_extension
    if ext.idle_irp is irp:
        ext.idle_irp = None
    complete_irp(irp, NTSTATUS.STATUS_CANCELLED)


def _remote_wakeup(ext: UsbDevicePdoExtension) -> bool:
    return len(ext.configuration) >= 8 and bool(ext.configuration[7] & 0x20)


def UsbhubDispatchSystemControl(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    if _is_fdo(device):
        return UsbhubFdoPassDown(device, irp)
    return complete_irp(irp, irp.io_status.status)


# ---------------------------------------------------------------------------------
# URBs
# ---------------------------------------------------------------------------------


def UsbhubDispatchDeviceControl(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    """The hub FDO's IOCTLs: IOCTL_USB_GET_NODE_CONNECTION_INFORMATION, the device on a
    port and its address (what USBPcap asks the hub, USBPcapHelperFunctions.c)."""
    loc = irp.IoGetCurrentIrpStackLocation()
    if not _is_fdo(device) or \
            loc.parameters.io_control_code != U.IOCTL_USB_GET_NODE_CONNECTION_INFORMATION:
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
    info = irp.system_buffer
    if not isinstance(info, U.UsbNodeConnectionInformation):
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_PARAMETER)
    ext: HubFdoExtension = device.device_extension
    child = ext.children.get(info.ConnectionIndex - 1)  # ports count from 1 on the wire
    if child is None or child.deleted:
        info.ConnectionStatus = 0  # NoDeviceConnected
        return complete_irp(irp, STATUS_SUCCESS, info.SIZE)
    child_ext: UsbDevicePdoExtension = child.device_extension
    info.ConnectionStatus = 1  # DeviceConnected
    info.DeviceAddress = child_ext.address
    info.DeviceIsHub = child_ext.device_descriptor.bDeviceClass == 0x09
    info.DeviceDescriptor = child_ext.device_descriptor
    return complete_irp(irp, STATUS_SUCCESS, info.SIZE)


def UsbhubDispatchInternalDeviceControl(device: DeviceObject, irp: Irp) -> int:  # noqa: N802
    parameters = irp.stack[irp.current_location].parameters  # IoGetCurrentIrpStackLocation
    ext = device.device_extension
    code = parameters.io_control_code
    if code != U.IOCTL_INTERNAL_USB_SUBMIT_URB or isinstance(ext, HubFdoExtension):
        if isinstance(ext, HubFdoExtension):
            return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
        if code == U.IOCTL_INTERNAL_USB_SUBMIT_IDLE_NOTIFICATION:
            return UsbhubSubmitIdleNotification(device, irp)
        if code == U.IOCTL_INTERNAL_USB_GET_PARENT_HUB_INFO:
            parent = parameters.type3_input_buffer
            parent.parent_hub_pdo = ext.hub.lower  # the hub FDO sits on it
            parent.port_number = ext.port + 1  # USB port numbers count from 1
            parent.root_hub_pdo = ext.hub.lower  # the model's one hub is the root hub
            return complete_irp(irp, STATUS_SUCCESS)
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST)
    urb: U.Urb = parameters.type3_input_buffer
    if ext.removed or not ext.present or not ext.backend.connected:
        urb.status = U.USBD_STATUS_DEVICE_GONE
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
    handler = URB_HANDLERS.get(urb.function)
    if handler is None:
        urb.status = U.USBD_STATUS_INVALID_URB_FUNCTION
        return complete_irp(irp, NTSTATUS.STATUS_INVALID_PARAMETER)
    run = handler(ext, urb)
    if run is None:  # handled at once, no bus time
        return complete_irp(irp, STATUS_SUCCESS if U.USBD_SUCCESS(urb.status)
                         else NTSTATUS.STATUS_UNSUCCESSFUL)
    if irp.cancel:
        urb.status = U.USBD_STATUS_CANCELED
        return complete_irp(irp, NTSTATUS.STATUS_CANCELLED)
    if IoAcquireRemoveLock(ext.remove_lock, irp) != STATUS_SUCCESS:
        urb.status = U.USBD_STATUS_DEVICE_GONE
        return complete_irp(irp, NTSTATUS.STATUS_DEVICE_NOT_CONNECTED)
    transfer = Transfer(irp, urb, device, run)  # holds the PDO's remove lock until completed
    # IoMarkIrpPending and IoSetCancelRoutine, wdm.h inlines: the location's
    # SL_PENDING_RETURNED, and the cancel routine set (the one it replaces, which
    # IoSetCancelRoutine returns, was not used here either)
    irp.stack[irp.current_location].control |= SL_PENDING_RETURNED
    irp.cancel_routine = UsbhubCancelUrb
    irp.tail[0] = transfer
    ext.in_flight.append(transfer)
    _host_controller_queue(ext.hub, transfer)
    return STATUS_PENDING


def _urb_bulk(ext: UsbDevicePdoExtension, urb: Any) -> Callable[[], TransferResult]:
    backend = ext.backend
    pipe = urb.pipe_handle
    buffer = urb.buffer  # TransferBuffer, or TransferBufferMDL mapped (urb.transfer_buffer)
    if buffer is None:
        buffer = MmGetSystemAddressForMdlSafe(urb.transfer_buffer_mdl)
    length = urb.length
    view = buffer if length == len(buffer) else memoryview(buffer)[:length]
    endpoint = pipe.endpoint_address
    if type(pipe) is not U.PipeInformation:  # urb.stream_id: a stream's pipe handle
        stream = urb.stream_id
        if stream:  # the transfer runs on that stream
            if endpoint & 0x80:
                return lambda: backend.stream_in(endpoint, stream, view)
            return lambda: backend.stream_out(endpoint, stream, view)
    # partial, not a lambda: the controller calls it without a Python frame of its own
    if endpoint & 0x80:
        return partial(backend.bulk_in, endpoint, view)
    return partial(backend.bulk_out, endpoint, view)


def _urb_control(ext: UsbDevicePdoExtension, urb: Any) -> Callable[[], TransferResult]:
    backend = ext.backend
    return lambda: backend.control(urb.setup, urb.buffer)


def _urb_select_configuration(ext: UsbDevicePdoExtension,
                              urb: Any) -> Callable[[], TransferResult]:
    backend = ext.backend

    def run() -> TransferResult:
        result = backend.control(urb.setup_packet(), bytearray())
        if result.status == U.USBD_STATUS_SUCCESS and urb.configuration_descriptor:
            tree = d.configuration_tree(urb.configuration_descriptor)
            urb.interfaces = []
            for entry in tree["interfaces"]:
                i = entry["interface"]
                if i.bAlternateSetting:  # the client selects other settings itself
                    continue
                info = U.InterfaceInformation(i.bInterfaceNumber, i.bAlternateSetting,
                                              i.bInterfaceClass, i.bInterfaceSubClass,
                                              i.bInterfaceProtocol)
                for e in entry["endpoints"]:
                    pipe = U.PipeInformation(e.bEndpointAddress, e.bmAttributes & 3,
                                             e.wMaxPacketSize & 0x7FF, e.bInterval)
                    info.pipes.append(pipe)
                    ext.pipes[e.bEndpointAddress] = pipe
                urb.interfaces.append(info)
            urb.configuration_handle = ext
        return result

    return run


def _urb_select_interface(ext: UsbDevicePdoExtension, urb: Any) -> Callable[[], TransferResult]:
    """SET_INTERFACE on the wire; new pipe handles for the setting's endpoints."""
    backend = ext.backend

    def run() -> TransferResult:
        result = backend.control(urb.wire_setup(), bytearray())
        if result.status == U.USBD_STATUS_SUCCESS:
            info = urb.interface
            info.pipes = []
            for entry in d.configuration_tree(ext.configuration)["interfaces"]:
                i = entry["interface"]
                if (i.bInterfaceNumber, i.bAlternateSetting) != (info.interface_number,
                                                                  info.alternate_setting):
                    continue
                info.interface_class, info.interface_subclass, info.interface_protocol = (
                    i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol)
                for e in entry["endpoints"]:
                    pipe = U.PipeInformation(e.bEndpointAddress, e.bmAttributes & 3,
                                             e.wMaxPacketSize & 0x7FF, e.bInterval)
                    info.pipes.append(pipe)
                    ext.pipes[e.bEndpointAddress] = pipe
                ext.max_streams.update(_max_streams(ext.configuration, info.interface_number,
                                                    info.alternate_setting))
                for e in entry["endpoints"]:
                    ext.streams.pop(e.bEndpointAddress, None)  # a new setting: none open
        return result

    return run


def _max_streams(configuration: bytes, number: int, alternate: int) -> dict[int, int]:
    """Endpoint -> streams its SuperSpeed companion offers (2**MaxStreams; 0: none), for
    the endpoints of one alternate setting (USB 3.2 §9.6.7)."""
    out: dict[int, int] = {}
    for endpoint, exponent in d.endpoint_companions(configuration, number, alternate):
        out[endpoint] = 1 << exponent if exponent else 0
    return out


def _urb_open_static_streams(ext: UsbDevicePdoExtension, urb: Any) -> None:
    """Streams for a bulk pipe, a handle each, once the endpoint offers that many; at
    once, with no bus time (the controller's endpoint context, not the wire)."""
    endpoint = urb.pipe_handle.endpoint_address
    offered = ext.max_streams.get(endpoint, 0)
    if ext.backend.speed.name != "super" or not 0 < urb.number_of_streams <= offered \
            or endpoint in ext.streams:
        urb.status = U.USBD_STATUS_INVALID_PARAMETER
        return None
    pipe = urb.pipe_handle
    urb.streams = [U.StreamInformation(endpoint, pipe.pipe_type, pipe.maximum_packet_size,
                                       pipe.interval, pipe.maximum_transfer_size, stream)
                   for stream in range(1, urb.number_of_streams + 1)]
    ext.streams[endpoint] = urb.streams
    urb.status = U.USBD_STATUS_SUCCESS
    return None


def _urb_close_static_streams(ext: UsbDevicePdoExtension, urb: Any) -> None:
    ext.streams.pop(urb.pipe_handle.endpoint_address, None)
    urb.status = U.USBD_STATUS_SUCCESS
    return None


def _urb_reset_pipe(ext: UsbDevicePdoExtension, urb: Any) -> Callable[[], TransferResult]:
    backend = ext.backend
    return lambda: backend.clear_halt(urb.pipe_handle.endpoint_address)


def _urb_abort_pipe(ext: UsbDevicePdoExtension, urb: Any) -> None:
    endpoint = urb.pipe_handle.endpoint_address
    for transfer in list(ext.in_flight):
        u = transfer.urb
        if isinstance(u, U.UrbBulkOrInterruptTransfer) and u.endpoint == endpoint:
            _cancel_transfer(ext, transfer)
    urb.status = U.USBD_STATUS_SUCCESS
    return None


URB_HANDLERS: dict[int, Callable[[UsbDevicePdoExtension, Any], Any]] = {
    U.URB_FUNCTION_BULK_OR_INTERRUPT_TRANSFER: _urb_bulk,
    U.URB_FUNCTION_CONTROL_TRANSFER: _urb_control,
    U.URB_FUNCTION_GET_DESCRIPTOR_FROM_DEVICE: _urb_control,
    U.URB_FUNCTION_CLASS_INTERFACE: _urb_control,
    U.URB_FUNCTION_CLASS_DEVICE: _urb_control,
    U.URB_FUNCTION_VENDOR_DEVICE: _urb_control,
    U.URB_FUNCTION_VENDOR_INTERFACE: _urb_control,
    U.URB_FUNCTION_SELECT_CONFIGURATION: _urb_select_configuration,
    U.URB_FUNCTION_SELECT_INTERFACE: _urb_select_interface,
    U.URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL: _urb_reset_pipe,
    U.URB_FUNCTION_SYNC_CLEAR_STALL: _urb_reset_pipe,
    U.URB_FUNCTION_ABORT_PIPE: _urb_abort_pipe,
    U.URB_FUNCTION_OPEN_STATIC_STREAMS: _urb_open_static_streams,
    U.URB_FUNCTION_CLOSE_STATIC_STREAMS: _urb_close_static_streams,
}


# ---------------------------------------------------------------------------------
# The host controller: schedule, interrupt, ISR, DPC
# ---------------------------------------------------------------------------------


def _host_controller_queue(hub: HubFdoExtension, transfer: Transfer) -> None:
    """The transfer starts once the bus is free (``busy_until_ns``), or now."""
    hub.scheduled += 1
    hub.idle.signaled = False  # KeClearEvent
    assert hub.scheduler is not None  # bound at AddDevice
    hub.busy_until_ns = hub.scheduler.schedule_after(hub.busy_until_ns, 0,
                                                     _host_controller_run, hub, transfer)


def _host_controller_event_done(hub: HubFdoExtension) -> None:
    hub.scheduled -= 1
    if hub.scheduled == 0:
        hub.idle.signaled = True  # KeSetEvent


def _host_controller_run(hub: HubFdoExtension, transfer: Transfer) -> None:
    """The controller executes the transfer on the bus, then interrupts when done."""
    if transfer.cancelled:
        _host_controller_event_done(hub)
        return
    result = transfer.run()
    if result.status == U.USBD_STATUS_PENDING:
        # NAK (or no ERDY on the stream yet): the transfer waits in the controller until
        # the device has moved on; it costs no bus time meanwhile
        hub.parked.append(transfer)
        _host_controller_event_done(hub)
        return
    transfer.result = result
    assert hub.scheduler is not None  # bound at AddDevice
    # done once the bus has carried it: its duration after the bus is free, or now
    hub.busy_until_ns = hub.scheduler.schedule_after(
        hub.busy_until_ns, result.duration_ns, _host_controller_done, hub, transfer)
    if hub.parked:  # the device took or gave something: the NAKed transfers try again
        retry, hub.parked = hub.parked, []
        for waiting in retry:
            if not waiting.cancelled:
                _host_controller_queue(hub, waiting)


def _host_controller_done(hub: HubFdoExtension, transfer: Transfer) -> None:
    hub.scheduled -= 1  # _host_controller_event_done, inline
    if hub.scheduled == 0:
        hub.idle.signaled = True
    if transfer.cancelled:
        return
    hub.done.append(transfer)
    assert hub.interrupt is not None and hub.scheduler is not None
    hub.scheduler.interrupt(hub.interrupt)


def UsbhubInterruptService(interrupt: KInterrupt, ext: HubFdoExtension) -> bool:  # noqa: N802
    """ISR at DIRQL: take the controller's done list and defer the rest to the DPC."""
    if not ext.done:
        return False
    ext.dpc_list.extend(ext.done)
    ext.done.clear()
    assert ext.dpc is not None and ext.scheduler is not None
    ext.scheduler.KeInsertQueueDpc(ext.dpc)
    return True


def UsbhubDpcForIsr(dpc: KDpc, ext: HubFdoExtension) -> None:  # noqa: N802
    """DPC at DISPATCH_LEVEL: finish each URB and complete its IRP."""
    work = ext.dpc_list
    while work:
        transfer = work.popleft()
        irp, urb = transfer.irp, transfer.urb
        # IoSetCancelRoutine(irp, None), the wdm.h inline: exchange the routine
        cancel_routine, irp.cancel_routine = irp.cancel_routine, None
        if cancel_routine is None and irp.cancel:
            continue  # the cancel routine owns it
        pdo_ext: UsbDevicePdoExtension = transfer.pdo.device_extension
        try:
            pdo_ext.in_flight.remove(transfer)
        except ValueError:
            pass  # no longer in flight
        result = transfer.result
        assert result is not None
        status = result.status
        if isinstance(urb, U.UrbBulkOrInterruptTransfer):
            requested, urb.length = urb.length, result.actual
            if (status == U.USBD_STATUS_SUCCESS and result.actual < requested
                    and urb.pipe_handle.endpoint_address & 0x80  # urb.direction_in
                    and not urb.transfer_flags & U.USBD_SHORT_TRANSFER_OK):
                status = U.USBD_STATUS_ERROR_SHORT_TRANSFER
        elif isinstance(urb, U.UrbControl):
            urb.length = result.actual
        urb.status = status
        io_status = irp.io_status
        io_status.status = USBD_TO_NTSTATUS.get(status, STATUS_UNSUCCESSFUL)
        io_status.information = 0
        IoReleaseRemoveLock(pdo_ext.remove_lock, irp)
        IoCompleteRequest(irp)


def UsbhubCancelUrb(device: DeviceObject, irp: Irp) -> None:  # noqa: N802
    """Cancel routine for a pending URB IRP: called holding the cancel spin lock, which
    it releases first (IoReleaseCancelSpinLock(Irp->CancelIrql))."""
    IoReleaseCancelSpinLock(device, irp.cancel_irql)
    transfer: Transfer = irp.tail[0]
    _cancel_transfer(device.device_extension, transfer, from_cancel_routine=True)


def _cancel_transfer(ext: UsbDevicePdoExtension, transfer: Transfer,
                     from_cancel_routine: bool = False) -> None:
    if transfer.cancelled:
        return
    if not from_cancel_routine and IoSetCancelRoutine(transfer.irp, None) is None:
        return  # being cancelled elsewhere
    transfer.cancelled = True
    if transfer in ext.in_flight:
        ext.in_flight.remove(transfer)
    if transfer in ext.hub.parked:
        ext.hub.parked.remove(transfer)
    if transfer in ext.hub.dpc_list:
        ext.hub.dpc_list.remove(transfer)
    transfer.urb.status = U.USBD_STATUS_CANCELED
    transfer.irp.io_status.status = NTSTATUS.STATUS_CANCELLED
    IoReleaseRemoveLock(ext.remove_lock, transfer.irp)
    IoCompleteRequest(transfer.irp)


def _fail_wait_wake(ext: UsbDevicePdoExtension) -> None:
    """A device gone cannot wake anything nor be suspended: its WAIT_WAKE and idle
    request end STATUS_NO_SUCH_DEVICE."""
    for attribute in ("wait_wake", "idle_irp"):
        irp = getattr(ext, attribute)
        if irp is not None and IoSetCancelRoutine(irp, None) is not None:
            setattr(ext, attribute, None)
            complete_irp(irp, NTSTATUS.STATUS_NO_SUCH_DEVICE)


def _fail_in_flight(ext: UsbDevicePdoExtension, usbd_status: int) -> None:
    for transfer in list(ext.in_flight):
        if IoSetCancelRoutine(transfer.irp, None) is None:
            continue
        transfer.cancelled = True
        ext.in_flight.remove(transfer)
        if transfer in ext.hub.parked:
            ext.hub.parked.remove(transfer)
        transfer.urb.status = usbd_status
        transfer.irp.io_status.status = USBD_TO_NTSTATUS.get(usbd_status,
                                                             NTSTATUS.STATUS_UNSUCCESSFUL)
        IoReleaseRemoveLock(ext.remove_lock, transfer.irp)
        IoCompleteRequest(transfer.irp)
