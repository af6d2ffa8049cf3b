"""Without a sink the tracer has nothing to record, and passes the data path (READ,
WRITE and bulk URBs) as the WDK toaster filter's FilterPass passes every IRP
(filter.c: IoAcquireRemoveLock, IoSkipCurrentIrpStackLocation, IoCallDriver,
IoReleaseRemoveLock): no completion routine of its own, and its remove lock held
only while IoCallDriver runs.  With a sink it keeps its completion routines, where
it records, and holds the lock until they have run.  Device replay's machine has
no sink."""

from __future__ import annotations

from typing import Any
from unittest import mock

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.drivers import tracer
from usbtrace.drivers.tracer import TracerExtension
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.usb import urb as U


def _machine(sink: Any) -> Machine:
    stick = SimulatedStick(DiskImage.in_memory(8 << 20))
    stick.image.write(0, bytes(range(256)) * 16)
    return Machine(stick, sink=sink).start()


def _tracers(machine: Machine) -> dict[str, TracerExtension]:
    driver = machine.kernel.drivers["\\Driver\\usbtrace"]
    return {d.device_extension.position: d.device_extension for d in driver.device_objects}


def _lock_counts_while_a_read_is_below(machine: Machine) -> dict[str, int]:
    """Each tracer's remove-lock count (1 is IoInitializeRemoveLock's bias) while an
    overlapped READ waits below both filters: its CBW in the host controller."""
    win32 = machine.win32
    handle = win32.CreateFile(DISK_PATH)
    buffer = bytearray(4096)
    pending = win32.ReadFile(handle, buffer, 0, overlapped=True)
    assert not pending.irp.completed
    counts = {position: ext.remove_lock.io_count
              for position, ext in _tracers(machine).items()}
    assert win32.GetOverlappedResult(handle, pending) == 4096
    assert buffer == bytes(range(256)) * 16
    machine.stop()
    return counts


def test_without_a_sink_a_read_below_the_filter_holds_none_of_its_remove_locks() -> None:
    assert _lock_counts_while_a_read_is_below(_machine(None)) == {"upper": 1, "lower": 1}


def test_with_a_sink_each_filter_holds_its_remove_lock_until_its_completion_routine() -> None:
    records: list[Any] = []
    assert _lock_counts_while_a_read_is_below(_machine(records.append)) == \
        {"upper": 2, "lower": 2}
    assert records  # and it recorded


def test_without_a_sink_only_requests_off_the_data_path_get_the_filter_completion() -> None:
    machine = _machine(None)
    seen: list[int] = []
    real = tracer.TracerCompletion

    def spy(device: Any, irp: Any, context: Any) -> int:
        seen.append(irp.stack[irp.current_location].major_function)
        return real(device, irp, context)

    win32 = machine.win32
    handle = win32.CreateFile(DISK_PATH)  # CREATE: off the data path, passed with a routine
    with mock.patch.object(tracer, "TracerCompletion", spy):
        win32.ReadFile(handle, bytearray(65536 * 2), 0)
        win32.WriteFile(handle, bytes(4096), 4096)
        assert seen == []
        win32.CloseHandle(handle)  # CLEANUP and CLOSE: the filter's routine, as before
    assert seen == [0x12, 0x02]
    # the pipes a selection returned are still learnt (TracerCompletion, at start-up)
    assert sorted(_tracers(machine)["lower"].pipes.values()) == [
        (0x02, U.UsbdPipeTypeBulk, None), (0x81, U.UsbdPipeTypeBulk, None)]
    machine.stop()
