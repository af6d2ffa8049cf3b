"""The root enumerator: PDOs for devices no bus reports (ROOT\\...).

Windows's PnP manager owns the PDOs of root-enumerated devices, such as a
host controller that the model does not put behind a PCI bus.
"""

from __future__ import annotations

from dataclasses import dataclass

from usbtrace.wdm.device import (
    DO_DEVICE_INITIALIZING,
    FILE_DEVICE_BUS_EXTENDER,
    DeviceObject,
    DriverObject,
    IoCreateDevice,
    IoDeleteDevice,
)
from usbtrace.wdm.iomgr import IoCompleteRequest
from usbtrace.wdm.irp import (
    IRP_MJ_PNP,
    IRP_MJ_POWER,
    IRP_MN_CANCEL_REMOVE_DEVICE,
    IRP_MN_QUERY_CAPABILITIES,
    IRP_MN_QUERY_ID,
    IRP_MN_QUERY_PNP_DEVICE_STATE,
    IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_SET_POWER,
    IRP_MN_START_DEVICE,
    IRP_MN_SURPRISE_REMOVAL,
    IRP_MN_WAIT_WAKE,
    BusQueryCompatibleIDs,
    BusQueryDeviceID,
    BusQueryHardwareIDs,
    BusQueryInstanceID,
    Irp,
)
from usbtrace.wdm.kernel import Kernel
from usbtrace.wdm.power import PoSetPowerState, PowerDeviceD0, PowerDeviceD3
from usbtrace.wdm.status import NTSTATUS


@dataclass
class RootPdoExtension:
    device_id: str
    instance_id: str = "0000"


def _dispatch_pnp(device: DeviceObject, irp: Irp) -> int:
    ext: RootPdoExtension = device.device_extension
    loc = irp.IoGetCurrentIrpStackLocation()
    status = irp.io_status.status
    minor = loc.minor_function
    if minor == IRP_MN_QUERY_ID:
        id_type = loc.parameters.id_type
        if id_type == BusQueryDeviceID:
            irp.io_status.information = ext.device_id
        elif id_type == BusQueryHardwareIDs:
            irp.io_status.information = [ext.device_id]
        elif id_type == BusQueryCompatibleIDs:
            irp.io_status.information = []
        elif id_type == BusQueryInstanceID:
            irp.io_status.information = ext.instance_id
        status = NTSTATUS.STATUS_SUCCESS
    elif minor == IRP_MN_QUERY_CAPABILITIES:
        caps = loc.parameters.capabilities
        caps.device_state = [0, PowerDeviceD0] + [PowerDeviceD3] * 5
        status = NTSTATUS.STATUS_SUCCESS
    elif minor == IRP_MN_START_DEVICE:
        PoSetPowerState(device, "device", PowerDeviceD0)
        status = NTSTATUS.STATUS_SUCCESS
    elif minor in (IRP_MN_QUERY_REMOVE_DEVICE, IRP_MN_SURPRISE_REMOVAL,
                   IRP_MN_CANCEL_REMOVE_DEVICE, IRP_MN_QUERY_PNP_DEVICE_STATE):
        status = NTSTATUS.STATUS_SUCCESS
    elif minor == IRP_MN_REMOVE_DEVICE:
        status = NTSTATUS.STATUS_SUCCESS
        IoDeleteDevice(device)
    irp.io_status.status = status
    IoCompleteRequest(irp)
    return int(status)


def _dispatch_power(device: DeviceObject, irp: Irp) -> int:
    """The bus driver's part for a root-enumerated device: complete, report the state."""
    loc = irp.IoGetCurrentIrpStackLocation()
    if loc.minor_function == IRP_MN_WAIT_WAKE:
        irp.io_status.status = NTSTATUS.STATUS_NOT_SUPPORTED
        IoCompleteRequest(irp)
        return NTSTATUS.STATUS_NOT_SUPPORTED
    if loc.minor_function == IRP_MN_SET_POWER and loc.parameters.type == "device":
        PoSetPowerState(device, "device", loc.parameters.state)
    irp.io_status.status = NTSTATUS.STATUS_SUCCESS
    IoCompleteRequest(irp)
    return NTSTATUS.STATUS_SUCCESS


def create_root_pdo(kernel: Kernel, device_id: str) -> DeviceObject:
    """A PDO for ``ROOT\\...`` device ``device_id``, owned by the root enumerator."""
    driver = kernel.drivers.get("\\Driver\\PnpManager")
    if driver is None:
        driver = DriverObject(kernel, "\\Driver\\PnpManager")
        driver.major_function[IRP_MJ_PNP] = _dispatch_pnp
        driver.major_function[IRP_MJ_POWER] = _dispatch_power
        kernel.drivers[driver.name] = driver
    pdo = IoCreateDevice(driver, RootPdoExtension(device_id), None, FILE_DEVICE_BUS_EXTENDER)
    pdo.flags &= ~DO_DEVICE_INITIALIZING
    return pdo
