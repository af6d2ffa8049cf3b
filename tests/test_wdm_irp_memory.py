"""What a finished IRP leaves behind, and the parameter objects every IRP carries.

Drivers keep per-request state that points back at the IRP: usbstor's request is
the completion context of the URB phases on the SRB's IRP, the bus driver's
transfer sits in Tail.Overlay.DriverContext[0].  Once the I/O manager (or the
driver, IoFreeIrp) frees the IRP, nothing may reach that state through it -- in
Windows the memory is gone -- so reference counting alone reclaims a finished
command; left as cycles, collecting them was a fifth of a device replay's CPU.
"""

from __future__ import annotations

import dataclasses
import gc

import pytest

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.wdm.irp import (
    DeviceIoControlParameters,
    IoAllocateIrp,
    IoFreeIrp,
    Irp,
    ReadWriteParameters,
    ScsiParameters,
)


def _irps_left_to_the_collector(work: int) -> list[Irp]:
    """IRPs of ``work`` reads and writes that only the cyclic collector could free."""
    machine = Machine(SimulatedStick(DiskImage.in_memory(1 << 20))).start()
    win32 = machine.win32
    handle = win32.CreateFile(DISK_PATH)
    buffer = bytearray(4096)
    win32.ReadFile(handle, buffer, 0)  # the stack's first command: its caches are made
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for n in range(work):
            if n % 2:
                win32.WriteFile(handle, bytes([n]) * 4096, 4096 * n)
            else:
                win32.ReadFile(handle, buffer, 4096 * n)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, Irp)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    machine.stop()
    return left


def test_finished_reads_and_writes_leave_no_irp_in_a_reference_cycle() -> None:
    assert _irps_left_to_the_collector(6) == []


def test_a_freed_irp_no_longer_reaches_its_drivers_state() -> None:
    irp = IoAllocateIrp(2)
    state = object()
    irp.tail[0] = state
    irp.stack[0].context = state
    irp.stack[0].completion_routine = lambda device, i, context: 0
    IoFreeIrp(irp)
    assert irp.freed
    assert irp.tail == [None, None, None, None]
    assert all(loc.context is None and loc.completion_routine is None for loc in irp.stack)


@pytest.mark.parametrize("cls, args", [
    (ReadWriteParameters, (4096, 512)),
    (DeviceIoControlParameters, (0x220003, 0, 0, "urb")),
    (ScsiParameters, ("srb",)),
])
def test_parameters_are_frozen_dataclasses_built_by_their_fields(cls: type,
                                                                 args: tuple[object, ...]) -> None:
    """The per-IRP parameter classes fill their slots directly; they stay what their
    declarations say: frozen, equal by value, hashable, defaults and arity kept."""
    made = cls(*args)
    names = [f.name for f in dataclasses.fields(cls)]
    assert [getattr(made, n) for n in names] == list(args)
    assert made == cls(**dict(zip(names, args)))
    assert hash(made) == hash(cls(*args))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, names[0], 1)
    with pytest.raises(TypeError):
        cls(*args, "one too many")


def test_device_io_control_parameters_keep_their_defaults() -> None:
    assert DeviceIoControlParameters(7) == DeviceIoControlParameters(7, 0, 0, None)
    assert DeviceIoControlParameters(7, type3_input_buffer=3).type3_input_buffer == 3
    with pytest.raises(TypeError):
        DeviceIoControlParameters()  # type: ignore[call-arg]
