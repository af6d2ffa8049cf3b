"""Power: a sleep/resume cycle, the power policy owners' device IRPs, WAIT_WAKE."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.drivers import usbhub
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.records import COMPLETE, SUBMIT, Event
from usbtrace.wdm.iomgr import complete_irp
from usbtrace.wdm.irp import (
    IRP_MJ_POWER,
    IRP_MN_QUERY_POWER,
    IRP_MN_SET_POWER,
    IRP_MN_WAIT_WAKE,
    Irp,
)
from usbtrace.wdm.power import (
    PowerDeviceD0,
    PowerDeviceD2,
    PowerDeviceD3,
    PowerSystemSleeping3,
    PowerSystemWorking,
)
from usbtrace.wdm.status import NTSTATUS

from .conftest import Stack


def _power(events: list[Event], position: str) -> list[tuple[str, str]]:
    return [(e.kind, e.detail or "") for e in events
            if e.position == position and e.major == IRP_MJ_POWER]


def test_sleep_and_resume_as_each_filter_logs_it(stack: Stack) -> None:
    """S3: QUERY_POWER to every stack, leaves first, then SET_POWER, leaves first; S0:
    SET_POWER parents first, no query (Microsoft Learn, "Handling IRP_MN_SET_POWER for
    System Power States").  Each power policy owner passes the system IRP down and requests
    the device IRP in its completion routine; going to sleep the system IRP completes after
    the device IRP ("Handling a System Set-Power IRP in a Device Power Policy Owner")."""
    start = len(stack.events)
    assert stack.machine.sleep(seconds=2.0)
    events = stack.events[start:]
    # above the disk driver, the policy owner of the disk stack: the D-IRP nests in the S-IRP
    assert _power(events, "upper") == [
        (SUBMIT, "query_power system S3"), (COMPLETE, "query_power system S3"),
        (SUBMIT, "set_power system S3"),
        (SUBMIT, "set_power device D3"), (COMPLETE, "set_power device D3"),
        (COMPLETE, "set_power system S3"),
        (SUBMIT, "set_power system S0"),
        (SUBMIT, "set_power device D0"), (COMPLETE, "set_power device D0"),
        (COMPLETE, "set_power system S0"),
    ]
    # below usbstor, the policy owner of the USB device's stack: the S-IRP is back up from
    # the hub before usbstor asks for its D-IRP
    assert _power(events, "lower") == [
        (SUBMIT, "query_power system S3"), (COMPLETE, "query_power system S3"),
        (SUBMIT, "set_power system S3"), (COMPLETE, "set_power system S3"),
        (SUBMIT, "set_power device D3"), (COMPLETE, "set_power device D3"),
        (SUBMIT, "set_power system S0"), (COMPLETE, "set_power system S0"),
        (SUBMIT, "set_power device D0"), (COMPLETE, "set_power device D0"),
    ]
    # order across stacks: the disk stack (a leaf) first to sleep, last to wake
    sets = [(e.position, e.detail) for e in events if e.kind == SUBMIT
            and e.detail and e.detail.startswith("set_power system")]
    assert sets == [("upper", "set_power system S3"), ("lower", "set_power system S3"),
                    ("lower", "set_power system S0"), ("upper", "set_power system S0")]
    # the port takes its resume time (USB 2.0 §7.1.7.7) before D0 completes
    d0 = [e for e in events if e.position == "lower" and e.detail == "set_power device D0"]
    assert d0[1].ts - d0[0].ts >= 0.03
    h = stack.open()
    assert stack.win32.ReadFile(h, bytearray(512), 0) == 512  # and it works after resume
    stack.win32.CloseHandle(h)


def test_device_states_follow_the_capabilities_and_po_set_power_state(stack: Stack) -> None:
    """Each driver reports the state its device object reached (PoSetPowerState): D0 from
    the start on without a power IRP ("Powering Up a Device"), D3 in S3 as the bus
    driver's DeviceState says, D0 again after the resume."""
    fdo = stack.machine.kernel.lookup(DISK_PATH)
    assert fdo is not None
    stack_devices = []
    device: Any = fdo.attached_device
    while device is not None:
        stack_devices.append(device)
        device = device.attached_to
    assert {d.power_state for d in stack_devices} == {PowerDeviceD0}
    power = stack.machine.pnp.power
    assert power.set_system_power_state(PowerSystemSleeping3)
    assert {d.power_state for d in stack_devices} == {PowerDeviceD3}
    assert power.set_system_power_state(PowerSystemWorking)
    assert {d.power_state for d in stack_devices} == {PowerDeviceD0}


def test_a_stick_with_remote_wakeup_gets_a_wait_wake_armed_and_cancelled() -> None:
    """The power policy owner arms IRP_MN_WAIT_WAKE before the device leaves D0 for a state
    it can wake from (DeviceWake D2, SystemWake S3 in its capabilities) and cancels it once
    the device is back in D0 (Microsoft Learn, "Sending a Wait/Wake IRP", "Canceling a
    Wait/Wake IRP")."""
    events: list[Event] = []
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    stick.remote_wakeup = True
    machine = Machine(stick, sink=events.append).start()
    assert machine.root is not None
    usb = machine.root.children[0]
    assert (usb.capabilities.device_wake, usb.capabilities.system_wake) == \
        (PowerDeviceD2, PowerSystemSleeping3)
    start = len(events)
    assert machine.sleep()
    lower = _power(events[start:], "lower")
    armed = lower.index((SUBMIT, "wait_wake system S3"))
    assert armed < lower.index((SUBMIT, "set_power device D2"))
    assert lower[-1] == (COMPLETE, "wait_wake system S3")
    cancelled = [e for e in events[start:] if e.kind == COMPLETE
                 and e.detail == "wait_wake system S3"]
    assert cancelled[0].status == NTSTATUS.STATUS_CANCELLED
    machine.stop()


def test_the_device_waking_the_machine_completes_its_wait_wake() -> None:
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    stick.remote_wakeup = True
    events: list[Event] = []
    machine = Machine(stick, sink=events.append).start()
    power = machine.pnp.power
    assert power.set_system_power_state(PowerSystemSleeping3)
    assert machine.root is not None
    pdo = machine.root.children[0].pdo
    assert usbhub.UsbhubRemoteWakeup(pdo)
    done = [e for e in events if e.kind == COMPLETE and e.detail == "wait_wake system S3"]
    assert done and done[0].status == NTSTATUS.STATUS_SUCCESS
    assert power.set_system_power_state(PowerSystemWorking)
    usbstor_fdo = pdo.attached_device
    while usbstor_fdo is not None and not hasattr(usbstor_fdo.device_extension, "wait_wake"):
        usbstor_fdo = usbstor_fdo.attached_device
    assert usbstor_fdo is not None and usbstor_fdo.device_extension.wake_signalled
    machine.stop()


def test_a_stick_without_remote_wakeup_arms_nothing(stack: Stack) -> None:
    assert stack.machine.sleep()
    assert not [e for e in stack.events if e.major == IRP_MJ_POWER
                and e.minor == IRP_MN_WAIT_WAKE]


def test_a_refused_query_keeps_the_machine_awake_and_reaffirms_s0() -> None:
    """A driver may fail IRP_MN_QUERY_POWER; the power manager then sends IRP_MN_SET_POWER
    for the current state to reaffirm it (Microsoft Learn, "Power IRPs for the System")
    and never the sleep state."""
    events: list[Event] = []
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick, sink=events.append).start()
    driver = machine.kernel.drivers["\\Driver\\disk"]
    original = driver.major_function[IRP_MJ_POWER]

    def refuse(device: Any, irp: Irp) -> int:
        loc = irp.IoGetCurrentIrpStackLocation()
        if loc.minor_function == IRP_MN_QUERY_POWER and loc.parameters.type == "system":
            return complete_irp(irp, NTSTATUS.STATUS_UNSUCCESSFUL)
        return int(original(device, irp))

    driver.major_function[IRP_MJ_POWER] = refuse
    assert not machine.sleep()
    sets = [e.detail for e in events if e.kind == SUBMIT and e.major == IRP_MJ_POWER
            and e.minor == IRP_MN_SET_POWER]
    assert sets == ["set_power system S0"]
    assert machine.pnp.power.system_state == PowerSystemWorking
    driver.major_function[IRP_MJ_POWER] = original
    machine.stop()


def test_record_sleep_traces_the_cycle(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    result = CliRunner().invoke(main, ["record", "--db", str(db), "--size", "8M",
                                       "--workload", "read", "--sleep"])
    assert result.exit_code == 0, result.output
    assert "slept (S3) and resumed" in result.stdout
    details = [d for (d,) in sqlite3.connect(db).execute(
        "SELECT detail FROM irps WHERE major='power' AND position='upper' ORDER BY seq")]
    assert details == ["query_power system S3", "set_power system S3", "set_power device D3",
                       "set_power system S0", "set_power device D0"]


def test_selective_suspend_idle_request_d2_and_resume_on_io() -> None:
    """USB selective suspend as a WDM client driver does it: after its idle time usbstor
    sends IOCTL_INTERNAL_USB_SUBMIT_IDLE_NOTIFICATION; in the idle callback the hub calls it
    arms IRP_MN_WAIT_WAKE (remote wake-up) and requests D2; when I/O comes it cancels the
    idle request, requests D0 and cancels the WAIT_WAKE (Microsoft Learn, "USB Selective
    Suspend", "Sending the USB Idle Request IRP")."""
    events: list[Event] = []
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    stick.remote_wakeup = True
    machine = Machine(stick, sink=events.append, selective_suspend_ms=2000).start()
    h = machine.win32.CreateFile(DISK_PATH)
    assert machine.win32.ReadFile(h, bytearray(512), 0) == 512
    start = len(events)
    idle_from = machine.scheduler.now()
    machine.scheduler.run_until_idle()  # two seconds of nothing
    assert machine.win32.ReadFile(h, bytearray(512), 512) == 512
    lower = [(e.kind, e.detail or f"ioctl 0x{e.ioctl:06x}") for e in events[start:]
             if e.position == "lower" and (e.major == IRP_MJ_POWER or e.ioctl == 0x220027)]
    assert lower == [
        (SUBMIT, "ioctl 0x220027"),
        (SUBMIT, "wait_wake system S0"),
        (SUBMIT, "set_power device D2"), (COMPLETE, "set_power device D2"),
        (COMPLETE, "ioctl 0x220027"),  # cancelled for the read
        (SUBMIT, "set_power device D0"), (COMPLETE, "set_power device D0"),
        (COMPLETE, "wait_wake system S0"),
    ]
    idle = next(e for e in events[start:] if e.ioctl == 0x220027)
    assert idle.ts - idle_from >= 2.0
    cancelled = [e for e in events[start:] if e.kind == COMPLETE and e.ioctl == 0x220027]
    assert cancelled[0].status == NTSTATUS.STATUS_CANCELLED
    # the read's CBW goes out only once the device is back in D0
    d0_done = next(e for e in events[start:] if e.kind == COMPLETE
                   and e.detail == "set_power device D0")
    cbw = next(e for e in events[start:] if e.kind == SUBMIT and e.data[:4] == b"USBC")
    assert cbw.ts >= d0_done.ts
    machine.win32.CloseHandle(h)
    machine.stop()  # the idle timer the read set is waited for, not left behind
    assert set(machine.kernel.drivers) == {"\\Driver\\PnpManager"}


def test_unplugged_while_suspended_ends_the_idle_request() -> None:
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    machine = Machine(stick, selective_suspend_ms=100).start()
    h = machine.win32.CreateFile(DISK_PATH)
    machine.win32.ReadFile(h, bytearray(512), 0)
    machine.scheduler.run_until_idle()
    assert machine.root is not None
    pdo = machine.root.children[0].pdo
    assert pdo.device_extension.idle_irp is not None and pdo.power_state == PowerDeviceD2
    stick.unplug()
    machine.scheduler.run_until_idle()
    assert pdo.device_extension.idle_irp is None
    machine.win32.CloseHandle(h)
    assert set(machine.kernel.drivers) == {"\\Driver\\PnpManager", "\\Driver\\usbhub"}
    machine.stop()
