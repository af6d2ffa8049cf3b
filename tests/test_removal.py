"""The removal protocol as the PnP manager runs it: a vetoed query, a failed start."""

from __future__ import annotations

from typing import Any

import pytest

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.drivers import usbhub, usbstor
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.records import COMPLETE, SUBMIT, Event
from usbtrace.wdm.iomgr import complete_irp
from usbtrace.wdm.irp import (
    IRP_MJ_PNP,
    IRP_MN_CANCEL_REMOVE_DEVICE,
    IRP_MN_QUERY_DEVICE_RELATIONS,
    IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_START_DEVICE,
    Irp,
)
from usbtrace.wdm.pnp import PnpError
from usbtrace.wdm.status import NTSTATUS


def _pnp(events: list[Event], position: str) -> list[tuple[str, int | None]]:
    return [(e.kind, e.minor) for e in events if e.position == position
            and e.major == IRP_MJ_PNP]


def test_a_veto_from_usbstor_cancels_the_removal_of_the_whole_subtree() -> None:
    """QUERY_REMOVE goes to the device's descendants first, and only when all of them
    succeed to the device itself; when one fails, every stack asked (the one that failed
    included) gets CANCEL_REMOVE and nothing is removed (Microsoft Learn, "Handling an
    IRP_MN_QUERY_REMOVE_DEVICE Request" and "IRP_MN_CANCEL_REMOVE_DEVICE"; ReactOS
    ntoskrnl/io/pnpmgr/devaction.c IopQueryRemoveChildDevices)."""
    events: list[Event] = []
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick, sink=events.append).start()
    driver = machine.kernel.drivers["\\Driver\\usbstor"]
    original = driver.major_function[IRP_MJ_PNP]

    def veto(device: Any, irp: Irp) -> int:
        if (isinstance(device.device_extension, usbstor.FdoExtension) and
                irp.IoGetCurrentIrpStackLocation().minor_function ==
                IRP_MN_QUERY_REMOVE_DEVICE):
            return complete_irp(irp, NTSTATUS.STATUS_UNSUCCESSFUL)
        return int(original(device, irp))

    driver.major_function[IRP_MJ_PNP] = veto
    assert machine.root is not None
    usb = machine.root.children[0]
    lun = usb.children[0]
    start = len(events)
    with pytest.raises(PnpError, match="vetoed"):
        machine.pnp.remove(usb)
    after = events[start:]
    upper = [m for k, m in _pnp(after, "upper") if k == SUBMIT]
    lower = [m for k, m in _pnp(after, "lower") if k == SUBMIT]
    # the disk stack (a descendant) was asked first, and told it stays; never removed
    assert IRP_MN_QUERY_REMOVE_DEVICE in upper and IRP_MN_REMOVE_DEVICE not in upper
    assert upper.index(IRP_MN_QUERY_REMOVE_DEVICE) < upper.index(IRP_MN_CANCEL_REMOVE_DEVICE)
    # usbstor failed it above the lower filter, which sees only the cancel
    assert IRP_MN_CANCEL_REMOVE_DEVICE in lower and IRP_MN_REMOVE_DEVICE not in lower
    assert IRP_MN_QUERY_REMOVE_DEVICE not in lower
    first_query = next(i for i, e in enumerate(after) if e.minor == IRP_MN_QUERY_REMOVE_DEVICE
                       and e.major == IRP_MJ_PNP)
    assert after[first_query].position == "upper"
    # RemovalRelations were asked of both stacks before any QUERY_REMOVE
    relations = [e for e in after[:first_query] if e.minor == IRP_MN_QUERY_DEVICE_RELATIONS
                 and e.kind == SUBMIT and e.detail and "removal_relations" in e.detail]
    assert {e.position for e in relations} == {"upper", "lower"}
    assert (usb.state, lun.state) == ("started", "started")
    assert machine.disk_present()
    h = machine.win32.CreateFile(DISK_PATH)
    assert machine.win32.ReadFile(h, bytearray(512), 0) == 512  # still works
    machine.win32.CloseHandle(h)
    driver.major_function[IRP_MJ_PNP] = original
    machine.stop()
    assert set(machine.kernel.drivers) == {"\\Driver\\PnpManager"}


def test_a_failed_start_is_answered_with_remove_and_enumeration_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """"the PnP manager also sends this IRP if one of the drivers in the device stack fails
    an IRP_MN_START_DEVICE request" (Microsoft Learn, "IRP_MN_REMOVE_DEVICE").  The bus
    driver keeps the PDO of a device still present, and deletes it at the REMOVE that
    follows its report that the device is gone (Microsoft Learn, "IoInvalidateDeviceRelations":
    the bus driver handles PnP IRPs for the device until IRP_MN_REMOVE_DEVICE)."""
    original = usbstor.USBSTOR_StartDevice
    calls: list[int] = []

    def fail_first(ext: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            return NTSTATUS.STATUS_DEVICE_DATA_ERROR
        return int(original(ext))

    monkeypatch.setattr(usbstor, "USBSTOR_StartDevice", fail_first)
    events: list[Event] = []
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick, sink=events.append).start()  # no exception
    root = machine.root
    assert root is not None
    failed = root.children[0]
    assert failed.state == "removed" and failed.problem == "CM_PROB_FAILED_START"
    lower = _pnp(events, "lower")
    start_done = lower.index((COMPLETE, IRP_MN_START_DEVICE))
    failed_start = [e for e in events if e.position == "lower" and e.kind == COMPLETE
                    and e.major == IRP_MJ_PNP and e.minor == IRP_MN_START_DEVICE]
    # START is handled on the way up: the hub's PDO started, then usbstor failed it
    assert failed_start[0].status == NTSTATUS.STATUS_SUCCESS
    assert lower[start_done + 1:] == [(SUBMIT, IRP_MN_REMOVE_DEVICE),
                                      (COMPLETE, IRP_MN_REMOVE_DEVICE)]
    assert not failed.pdo.deleted  # still on the bus: the hub keeps its PDO
    assert not machine.disk_present()
    assert "\\Driver\\usbstor" not in machine.kernel.drivers  # no device left: unloaded

    second = SimulatedStick(DiskImage.in_memory(2 << 20))
    second.strings[3] = "UT0000000002"
    usbhub.plug(root, second)  # a sibling still enumerates and starts
    assert [c.state for c in root.children] == ["removed", "started"]
    assert machine.disk_present()

    stick.unplug()  # the failed device reported missing: its second REMOVE deletes the PDO
    machine.scheduler.run_until_idle()
    assert failed.pdo.deleted and failed.state == "deleted"
    assert [c.state for c in root.children] == ["started"]
    machine.stop()
    assert set(machine.kernel.drivers) == {"\\Driver\\PnpManager"}
