"""PnP: driver loading, AddDevice order, start-up sequence, removal and unload."""

from __future__ import annotations

from typing import Any

import pytest

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.drivers import disk, tracer, usbhub, usbstor
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.records import SUBMIT
from usbtrace.wdm.device import DriverObject, IoGetAttachedDevice
from usbtrace.wdm.pnp import PnpError

from .conftest import Stack


def test_stacks_are_built_bottom_up_with_filters_in_place(stack: Stack) -> None:
    disk_fdo = stack.machine.kernel.lookup(DISK_PATH)
    assert disk_fdo is not None
    top = IoGetAttachedDevice(disk_fdo)
    # disk stack: usbstor LUN PDO -> disk FDO -> tracer (upper filter)
    chain = []
    device: Any = top
    while device is not None:
        chain.append(device.driver_object.name)
        device = device.attached_to
    assert chain == ["\\Driver\\usbtrace", "\\Driver\\disk", "\\Driver\\usbstor"]
    # USB device stack: usbhub PDO -> tracer (lower filter) -> usbstor FDO
    hub_node = stack.machine.root
    assert hub_node is not None
    usb_node = hub_node.children[0]
    chain = []
    device = usb_node.pdo
    while device is not None:
        chain.append(device.driver_object.name)
        device = device.attached_device
    assert chain == ["\\Driver\\usbhub", "\\Driver\\usbtrace", "\\Driver\\usbstor"]
    assert usb_node.compatible_ids[0] == "USB\\Class_08&SubClass_06&Prot_50"
    assert usb_node.device_id == "USB\\VID_1209&PID_0001"
    assert usb_node.children[0].hardware_ids[-1] == "GenDisk"


def test_driver_entry_once_and_add_device_in_filter_order(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name, module in (("usbhub", usbhub), ("usbstor", usbstor), ("disk", disk),
                         ("usbtrace", tracer)):
        entry = module.DriverEntry

        def wrapped(driver: DriverObject, path: str, entry: Any = entry, name: str = name) -> int:
            calls.append(f"DriverEntry {name}")
            status = entry(driver, path)
            add = driver.driver_extension.add_device

            def add_device(d: DriverObject, pdo: Any, add: Any = add) -> int:
                calls.append(f"AddDevice {name}")
                return add(d, pdo)

            driver.driver_extension.add_device = add_device
            return status

        monkeypatch.setattr(module, "DriverEntry", wrapped)
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    machine.stop()
    assert calls == [
        "DriverEntry usbhub", "AddDevice usbhub",
        "DriverEntry usbtrace", "AddDevice usbtrace",  # lower filter first
        "DriverEntry usbstor", "AddDevice usbstor",
        "DriverEntry disk", "AddDevice disk",  # usbtrace is loaded already: no second entry
        "AddDevice usbtrace",  # upper filter last
    ]


def test_start_up_sequence_seen_by_the_lower_filter(stack: Stack) -> None:
    """FILTER_RESOURCE_REQUIREMENTS, then START_DEVICE, during which usbstor reads the
    descriptors; no power IRP follows a start (ReactOS ntoskrnl/io/pnpmgr/devaction.c
    PiStartDeviceFinal: QUERY_CAPABILITIES, QUERY_PNP_DEVICE_STATE, then BusRelations)."""
    lower = [e for e in stack.events if e.position == "lower" and e.kind == SUBMIT]
    assert [(e.major, e.minor) for e in lower[:2]] == [(0x1B, 0x0D), (0x1B, 0x00)]
    setups = [e.setup[1:4] for e in lower if e.setup is not None and e.endpoint == 0x80]
    # GET_DESCRIPTOR device, configuration (9, then all), string 0 and the serial, each
    # string in two steps (Windows 10: the shared USBPcap capture)
    assert [s[2] for s in setups[:7]] == [1, 2, 2, 3, 3, 3, 3]
    functions = [e.urb_function for e in lower if e.urb_function is not None]
    assert functions[7] == 0x0000  # SELECT_CONFIGURATION
    assert functions[8] == 0x0001  # SELECT_INTERFACE
    assert functions[9] == 0x001B  # CLASS_INTERFACE: GET_MAX_LUN
    bulk = [e for e in lower if e.transfer_type == 2]
    assert bulk[0].data[:4] == b"USBC" and bulk[0].data[15] == 0x12  # INQUIRY CBW
    minors = [(e.major, e.minor) for e in lower if e.major in (0x16, 0x1B)]
    assert not any(major == 0x16 for major, _ in minors)
    assert minors[-3:] == [(0x1B, 0x09), (0x1B, 0x14), (0x1B, 0x07)]  # then BusRelations


def test_orderly_removal_unloads_every_driver() -> None:
    unloaded: list[str] = []
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    kernel = machine.kernel
    for driver in kernel.drivers.values():
        driver.driver_unload = lambda d, u=unloaded: u.append(d.name)
    machine.stop()
    assert sorted(unloaded) == sorted(["\\Driver\\usbhub", "\\Driver\\usbstor", "\\Driver\\disk",
                                       "\\Driver\\usbtrace"])
    assert kernel.namespace == {} and kernel.symbolic_links == {}


def test_surprise_removal_fails_pending_io_and_tears_down(stack: Stack) -> None:
    """REMOVE waits for the last handle: "The driver must not call IoDeleteDevice or
    IoDetachDevice ... until the IRP_MN_SURPRISE_REMOVAL IRP succeeds and all open handles
    to the device are closed. The PnP manager then sends an IRP_MN_REMOVE_DEVICE"
    (Microsoft Learn, Static Driver Verifier rule PnpSurpriseRemove)."""
    h = stack.open()
    pending = stack.win32.ReadFile(h, bytearray(65536), 0, overlapped=True)
    stack.stick.unplug()
    from usbtrace.wdm.win32 import NtStatusError

    with pytest.raises(NtStatusError, match="STATUS_DEVICE_NOT_CONNECTED"):
        stack.win32.GetOverlappedResult(h, pending)
    stack.machine.scheduler.run_until_idle()
    assert not stack.machine.disk_present()  # no new opens
    root = stack.machine.root
    assert root is not None and len(root.children) == 1  # the handle keeps it
    minors = [(e.major, e.minor) for e in stack.events if e.kind == SUBMIT and e.major == 0x1B]
    assert (0x1B, 0x17) in minors and (0x1B, 0x02) not in minors
    stack.win32.CloseHandle(h)
    assert root.children == []
    minors = [(e.major, e.minor) for e in stack.events if e.kind == SUBMIT and e.major == 0x1B]
    assert minors[-1] == (0x1B, 0x02)  # SURPRISE, then REMOVE once the handle is closed


def test_query_remove_veto_stops_removal() -> None:
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick).start()
    driver = machine.kernel.drivers["\\Driver\\disk"]
    original = driver.major_function[0x1B]

    def veto(device: Any, irp: Any) -> int:
        if irp.IoGetCurrentIrpStackLocation().minor_function == 0x01:
            from usbtrace.wdm.iomgr import IoCompleteRequest
            irp.io_status.status = 0xC0000001
            IoCompleteRequest(irp)
            return 0xC0000001
        return original(device, irp)

    driver.major_function[0x1B] = veto
    with pytest.raises(PnpError, match="vetoed"):
        machine.stop()
    assert machine.disk_present()


def test_a_second_stick_plugged_in_gets_its_own_stacks(stack: Stack) -> None:
    second = SimulatedStick(DiskImage.in_memory(2 << 20))
    second.strings[3] = "UT0000000002"
    hub = stack.machine.root
    assert hub is not None
    usbhub.plug(hub, second)
    assert [child.instance_id for child in hub.children] == ["UT0000000001", "UT0000000002"]
    disk1 = stack.machine.kernel.lookup("\\\\.\\PhysicalDrive1")
    assert disk1 is not None
    h = stack.win32.CreateFile("\\\\.\\PhysicalDrive1")
    second.image.view[:512] = b"\x77" * 512
    buffer = bytearray(512)
    assert stack.win32.ReadFile(h, buffer, 0) == 512 and buffer == b"\x77" * 512
    addresses = {e.device for e in stack.events if e.device is not None}
    assert addresses == {1, 2}
