"""The PnP IRP streams the filter logs, against the order Windows sends them in."""

from __future__ import annotations

from typing import Any

import pytest

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.drivers import usbhub
from usbtrace.machine import Machine
from usbtrace.records import COMPLETE, SUBMIT, Event
from usbtrace.usb.urb import BUS_INFO_INTERFACE
from usbtrace.wdm.irp import (
    IRP_MJ_PNP,
    IRP_MJ_POWER,
    IRP_MN_FILTER_RESOURCE_REQUIREMENTS,
    IRP_MN_QUERY_BUS_INFORMATION,
    IRP_MN_QUERY_CAPABILITIES,
    IRP_MN_QUERY_DEVICE_RELATIONS,
    IRP_MN_QUERY_DEVICE_TEXT,
    IRP_MN_QUERY_ID,
    IRP_MN_QUERY_INTERFACE,
    IRP_MN_QUERY_PNP_DEVICE_STATE,
    IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_QUERY_RESOURCE_REQUIREMENTS,
    IRP_MN_QUERY_RESOURCES,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_START_DEVICE,
    DeviceUsageTypePaging,
    Irp,
    describe_parameters,
)
from usbtrace.wdm.pnp import PnpError
from usbtrace.wdm.status import NTSTATUS

from .conftest import Stack

STARTED = [IRP_MN_FILTER_RESOURCE_REQUIREMENTS, IRP_MN_START_DEVICE, IRP_MN_QUERY_CAPABILITIES,
           IRP_MN_QUERY_PNP_DEVICE_STATE, IRP_MN_QUERY_DEVICE_RELATIONS]


def _pnp(events: list[Event], position: str, kind: str = SUBMIT) -> list[int | None]:
    return [e.minor for e in events
            if e.position == position and e.kind == kind and e.major == IRP_MJ_PNP]


def test_start_up_stream_as_each_filter_logs_it(stack: Stack) -> None:
    """After AddDevice: FILTER_RESOURCE_REQUIREMENTS, START_DEVICE, QUERY_CAPABILITIES
    (again, after the start), QUERY_PNP_DEVICE_STATE, then BusRelations (ReactOS
    ntoskrnl/io/pnpmgr/devaction.c PiStartDeviceFinal, IoInvalidateDeviceState), and no
    power IRP: "The device power policy owner does not send an IRP_MN_SET_POWER request
    for PowerDeviceD0, so drivers should not expect to receive these IRPs at start-up"
    (Microsoft Learn, "Powering Up a Device")."""
    for position in ("lower", "upper"):
        assert _pnp(stack.events, position) == STARTED
        assert _pnp(stack.events, position, COMPLETE) == STARTED
    assert not [e for e in stack.events if e.major == IRP_MJ_POWER]
    relations = [e for e in stack.events if e.minor == IRP_MN_QUERY_DEVICE_RELATIONS
                 and e.major == IRP_MJ_PNP]
    assert all(e.detail and e.detail.startswith("query_device_relations bus_relations")
               for e in relations)
    # DEVICE_CAPABILITIES as the bus driver filled them, logged on the way back up
    caps = [e.detail for e in stack.events if e.kind == COMPLETE and e.major == IRP_MJ_PNP
            and e.minor == IRP_MN_QUERY_CAPABILITIES and e.position == "lower"]
    assert caps == ["query_capabilities -> removable surprise_removal_ok unique_id; "
                    "S0=D0 S1=D3 S2=D3 S3=D3 S4=D3 S5=D3"]


def test_identification_goes_to_the_bare_pdo_in_reactos_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the USB device's PDO receives, first alone (no filter attached yet), then as
    the bottom of its stack: ReactOS ntoskrnl/io/pnpmgr/devaction.c
    IopCreateDeviceInstancePath (device ID, capabilities, instance ID), PiInitializeDevNode
    (hardware and compatible IDs, description and location text, bus information,
    resources, resource requirements), PiCallDriverAddDevice, then the start."""
    received: list[tuple[int, str]] = []
    original = usbhub.UsbhubDispatchPnp

    def spy(device: Any, irp: Irp) -> int:
        if isinstance(device.device_extension, usbhub.UsbDevicePdoExtension):
            loc = irp.IoGetCurrentIrpStackLocation()
            received.append((loc.minor_function, describe_parameters(loc.parameters)))
        return int(original(device, irp))

    monkeypatch.setattr(usbhub, "UsbhubDispatchPnp", spy)
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    assert received[:16] == [
        (IRP_MN_QUERY_ID, "device_id"), (IRP_MN_QUERY_CAPABILITIES, ""),
        (IRP_MN_QUERY_ID, "instance_id"), (IRP_MN_QUERY_ID, "hardware_ids"),
        (IRP_MN_QUERY_ID, "compatible_ids"), (IRP_MN_QUERY_DEVICE_TEXT, "description"),
        (IRP_MN_QUERY_DEVICE_TEXT, "location_information"),
        (IRP_MN_QUERY_BUS_INFORMATION, ""), (IRP_MN_QUERY_RESOURCES, ""),
        (IRP_MN_QUERY_RESOURCE_REQUIREMENTS, ""),
        (IRP_MN_QUERY_INTERFACE, BUS_INFO_INTERFACE),  # the lower filter asks, in AddDevice
        (IRP_MN_FILTER_RESOURCE_REQUIREMENTS, ""), (IRP_MN_START_DEVICE, ""),
        (IRP_MN_QUERY_CAPABILITIES, ""), (IRP_MN_QUERY_PNP_DEVICE_STATE, ""),
        (IRP_MN_QUERY_DEVICE_RELATIONS, "bus_relations"),
    ]
    assert machine.root is not None
    usb = machine.root.children[0]
    assert usb.description and usb.location == "Port_#0001.Hub_#0001"
    assert usb.bus_information.bus_type_guid == "GUID_BUS_TYPE_USB"
    assert usb.capabilities.removable and usb.capabilities.surprise_removal_ok
    machine.stop()


def test_safe_removal_queries_the_whole_subtree_before_any_remove(stack: Stack) -> None:
    """CM_Query_And_Remove_SubTree on the USB device: RemovalRelations, QUERY_REMOVE to the
    descendants (the disk stack) before the device itself, and REMOVE_DEVICE only once all
    agreed, descendants first (Microsoft Learn, "Handling an IRP_MN_QUERY_REMOVE_DEVICE
    Request": query-remove goes to the device's descendants before the device)."""
    root = stack.machine.root
    assert root is not None
    start = len(stack.events)
    stack.machine.pnp.remove(root.children[0])
    stream = [(e.position, e.minor) for e in stack.events[start:]
              if e.kind == SUBMIT and e.major == IRP_MJ_PNP]
    assert stream == [
        ("upper", IRP_MN_QUERY_DEVICE_RELATIONS), ("lower", IRP_MN_QUERY_DEVICE_RELATIONS),
        ("upper", IRP_MN_QUERY_REMOVE_DEVICE), ("lower", IRP_MN_QUERY_REMOVE_DEVICE),
        ("upper", IRP_MN_REMOVE_DEVICE), ("lower", IRP_MN_REMOVE_DEVICE),
    ]
    assert not [e for e in stack.events[start:] if e.major == IRP_MJ_POWER]
    assert not stack.machine.disk_present()
    assert "\\Driver\\disk" not in stack.machine.kernel.drivers
    # the stick is still plugged in: its PDO and node stay (removed) until it is pulled
    usb = root.children[0]
    assert usb.state == "removed" and not usb.pdo.deleted
    stack.stick.unplug()
    stack.machine.scheduler.run_until_idle()
    assert usb.state == "deleted" and usb.pdo.deleted and root.children == []


def test_a_paging_file_makes_the_disk_refuse_removal(stack: Stack) -> None:
    """DEVICE_USAGE_NOTIFICATION (paging file in path): the disk class driver reports
    PNP_DEVICE_NOT_DISABLEABLE and fails QUERY_REMOVE while the file is there, as classpnp
    does (Microsoft Learn, "IRP_MN_DEVICE_USAGE_NOTIFICATION")."""
    root = stack.machine.root
    assert root is not None
    usb = root.children[0]
    lun = usb.children[0]
    pnp = stack.machine.pnp
    assert pnp.device_usage_notification(lun, DeviceUsageTypePaging, True) == 0
    notified = [e for e in stack.events if e.major == IRP_MJ_PNP and e.minor == 0x16]
    assert notified and notified[0].detail == "device_usage_notification paging in path"
    status, state = pnp.send_pnp(lun, IRP_MN_QUERY_PNP_DEVICE_STATE)
    assert status == 0 and state & 0x20  # PNP_DEVICE_NOT_DISABLEABLE
    with pytest.raises(PnpError, match="STATUS_DEVICE_BUSY"):
        pnp.remove(usb)
    vetoed = [e for e in stack.events if e.kind == COMPLETE and e.major == IRP_MJ_PNP
              and e.minor == IRP_MN_QUERY_REMOVE_DEVICE]
    assert vetoed[-1].status == NTSTATUS.STATUS_DEVICE_BUSY
    assert stack.machine.disk_present()
    assert pnp.device_usage_notification(lun, DeviceUsageTypePaging, False) == 0
    pnp.remove(usb)
    assert not stack.machine.disk_present()
