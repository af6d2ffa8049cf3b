"""The I/O manager's contracts: transfer types, IRP flags, pending, completion's last stage.

References: Microsoft docs "Buffer Descriptions for I/O Control Codes" (METHOD_BUFFERED,
METHOD_IN_DIRECT / METHOD_OUT_DIRECT, METHOD_NEITHER), "IRP" (Flags: IRP_BUFFERED_IO,
IRP_DEALLOCATE_BUFFER, IRP_INPUT_OPERATION, IRP_NOCACHE), "IoMarkIrpPending" (a
dispatch routine that returns STATUS_PENDING must mark the IRP pending first; Driver
Verifier checks it), "Completing IRPs" (the I/O manager's last stage runs in the
requesting thread, as an APC when the IRP pended); ReactOS
``ntoskrnl/io/iomgr/irp.c`` (IofCompleteRequest queues IopCompleteRequest as a special
kernel APC when PendingReturned).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Stack
from usbtrace.wdm import iomgr
from usbtrace.wdm.device import DriverObject, IoCreateDevice
from usbtrace.wdm.iomgr import IoCallDriver, IoCompleteRequest, IoMarkIrpPending
from usbtrace.wdm.irp import (
    IRP_BUFFERED_IO,
    IRP_DEALLOCATE_BUFFER,
    IRP_INPUT_OPERATION,
    IRP_MJ_CLEANUP,
    IRP_MJ_CLOSE,
    IRP_MJ_CREATE,
    IRP_MJ_DEVICE_CONTROL,
    IRP_MJ_READ,
    IRP_NOCACHE,
    IRP_READ_OPERATION,
    Irp,
    ReadWriteParameters,
    ctl_code,
)
from usbtrace.wdm.kernel import Kernel
from usbtrace.wdm.mdl import MmGetSystemAddressForMdlSafe
from usbtrace.wdm.sched import APC_LEVEL, DISPATCH_LEVEL, BugCheck, KDpc, KEvent
from usbtrace.wdm.status import NTSTATUS
from usbtrace.wdm.win32 import (
    METHOD_BUFFERED,
    METHOD_IN_DIRECT,
    METHOD_NEITHER,
    METHOD_OUT_DIRECT,
    Win32,
)

SUCCESS = NTSTATUS.STATUS_SUCCESS
PENDING = NTSTATUS.STATUS_PENDING


def one_device(ioctl: Callable[[Any, Irp], int]) -> tuple[Kernel, Win32]:
    """A kernel with one named device whose DEVICE_CONTROL is ``ioctl``."""
    kernel = Kernel()
    driver = DriverObject(kernel, "\\Driver\\probe")

    def create_close(dev: Any, irp: Irp) -> int:
        irp.io_status.status = SUCCESS
        IoCompleteRequest(irp)
        return SUCCESS

    for major in (IRP_MJ_CREATE, IRP_MJ_CLOSE, IRP_MJ_CLEANUP):
        driver.major_function[major] = create_close
    driver.major_function[IRP_MJ_DEVICE_CONTROL] = ioctl
    IoCreateDevice(driver, None, "\\Device\\Probe", 0)
    kernel.IoCreateSymbolicLink("\\DosDevices\\Probe", "\\Device\\Probe")
    return kernel, Win32(kernel)


def test_method_buffered_copies_information_bytes_back() -> None:
    seen: dict[str, Any] = {}

    def ioctl(dev: Any, irp: Irp) -> int:
        params = irp.IoGetCurrentIrpStackLocation().parameters
        seen.update(flags=irp.flags, in_len=params.input_buffer_length,
                    out_len=params.output_buffer_length, system=bytes(irp.system_buffer))
        irp.system_buffer[:3] = b"out"  # the driver writes its output over the input
        irp.io_status.status = SUCCESS
        irp.io_status.information = 3
        IoCompleteRequest(irp)
        return SUCCESS

    _, w = one_device(ioctl)
    h = w.CreateFile("\\\\.\\Probe")
    out = bytearray(b"........")
    n, returned = w.DeviceIoControl(h, ctl_code(0x22, 0x800, METHOD_BUFFERED, 0), b"input",
                                    out_buffer=out)
    assert seen["flags"] & (IRP_BUFFERED_IO | IRP_DEALLOCATE_BUFFER | IRP_INPUT_OPERATION) == \
        IRP_BUFFERED_IO | IRP_DEALLOCATE_BUFFER | IRP_INPUT_OPERATION
    # one system buffer of max(in, out) bytes, holding the input
    assert (seen["in_len"], seen["out_len"], seen["system"]) == (5, 8, b"input\0\0\0")
    assert n == 3 and returned is out and out == bytearray(b"out.....")  # Information bytes


@pytest.mark.parametrize("method", [METHOD_IN_DIRECT, METHOD_OUT_DIRECT])
def test_direct_methods_describe_the_output_with_an_mdl(method: int) -> None:
    def ioctl(dev: Any, irp: Irp) -> int:
        assert irp.system_buffer == bytearray(b"cmd")
        view = MmGetSystemAddressForMdlSafe(irp.mdl_address)
        view[:4] = b"data"  # straight into the caller's pages: no copy-back
        irp.io_status.status = SUCCESS
        irp.io_status.information = 4
        IoCompleteRequest(irp)
        return SUCCESS

    _, w = one_device(ioctl)
    h = w.CreateFile("\\\\.\\Probe")
    out = bytearray(6)
    n, _ = w.DeviceIoControl(h, ctl_code(0x22, 0x801, method, 0), b"cmd", out_buffer=out)
    assert n == 4 and out == bytearray(b"data\0\0")


def test_method_neither_passes_the_callers_buffers_as_they_are() -> None:
    request = bytearray(b"raw")

    def ioctl(dev: Any, irp: Irp) -> int:
        params = irp.IoGetCurrentIrpStackLocation().parameters
        assert params.type3_input_buffer is request and irp.system_buffer is None
        irp.user_buffer[:2] = b"ok"
        irp.io_status.status = SUCCESS
        IoCompleteRequest(irp)
        return SUCCESS

    _, w = one_device(ioctl)
    h = w.CreateFile("\\\\.\\Probe")
    out = bytearray(2)
    w.DeviceIoControl(h, ctl_code(0x22, 0x802, METHOD_NEITHER, 0), request, out_buffer=out)
    assert out == bytearray(b"ok")


def test_status_pending_without_io_mark_irp_pending_is_a_verifier_bug_check() -> None:
    def ioctl(dev: Any, irp: Irp) -> int:
        irp.io_status.status = SUCCESS
        IoCompleteRequest(irp)
        return PENDING  # completed, never marked pending

    _, w = one_device(ioctl)
    h = w.CreateFile("\\\\.\\Probe")
    with pytest.raises(BugCheck, match="without IoMarkIrpPending"):
        w.DeviceIoControl(h, ctl_code(0x22, 0x803, METHOD_BUFFERED, 0), b"x")


def test_unmarked_pending_irp_completed_later_is_caught_at_completion() -> None:
    held: list[Irp] = []

    def ioctl(dev: Any, irp: Irp) -> int:
        held.append(irp)
        return PENDING  # forgot IoMarkIrpPending

    kernel, w = one_device(ioctl)
    h = w.CreateFile("\\\\.\\Probe")
    w.DeviceIoControl(h, ctl_code(0x22, 0x804, METHOD_BUFFERED, 0), b"x", overlapped=True)
    held[0].io_status.status = SUCCESS
    with pytest.raises(BugCheck, match="without IoMarkIrpPending"):
        IoCompleteRequest(held[0])


def test_completion_of_a_pended_irp_reaches_the_requester_as_an_apc_not_in_the_dpc() -> None:
    """A DPC completes the IRP at DISPATCH_LEVEL; the caller's event, status block and
    copied-back output come later, at APC_LEVEL, outside the DPC."""
    held: list[Irp] = []
    kernel_box: list[Kernel] = []

    def ioctl(dev: Any, irp: Irp) -> int:
        IoMarkIrpPending(irp)
        held.append(irp)

        def dpc_routine(dpc: KDpc, ctx: Any) -> None:
            irp.system_buffer[:2] = b"hi"
            irp.io_status.status = SUCCESS
            irp.io_status.information = 2
            IoCompleteRequest(irp)

        kernel_box[0].scheduler.schedule(
            1000, lambda: kernel_box[0].scheduler.KeInsertQueueDpc(KDpc(dpc_routine)))
        return PENDING

    kernel, w = one_device(ioctl)
    kernel_box.append(kernel)
    stages: list[tuple[int, bool]] = []
    real = iomgr.IopCompleteRequest

    def spy(irp: Irp) -> None:
        in_dpc = any(f.function == "dpc_routine" for f in inspect.stack())
        stages.append((kernel.scheduler.irql, in_dpc))
        real(irp)

    h = w.CreateFile("\\\\.\\Probe")
    iomgr.IopCompleteRequest = spy  # type: ignore[assignment]
    try:
        out = bytearray(2)
        n, _ = w.DeviceIoControl(h, ctl_code(0x22, 0x805, METHOD_BUFFERED, 0), b"..",
                                 out_buffer=out)
    finally:
        iomgr.IopCompleteRequest = real  # type: ignore[assignment]
    assert stages == [(APC_LEVEL, False)] and n == 2 and out == bytearray(b"hi")


def test_reads_through_the_stack_complete_in_the_requesting_thread(stack: Stack) -> None:
    """A READ that pended (usbstor queues it, the bus completes it from its DPC) gets
    its last stage at APC_LEVEL, never inside UsbhubDpcForIsr; its flags say what the
    I/O manager set up (IRP_NOCACHE | IRP_READ_OPERATION, an MDL)."""
    stages: list[tuple[int, bool, int]] = []
    real = iomgr.IopCompleteRequest

    def spy(irp: Irp) -> None:
        in_dpc = any(f.function == "UsbhubDpcForIsr" for f in inspect.stack())
        stages.append((stack.machine.scheduler.irql, in_dpc, irp.flags))
        real(irp)

    h = stack.open()
    iomgr.IopCompleteRequest = spy  # type: ignore[assignment]
    try:
        assert stack.win32.ReadFile(h, bytearray(4096), 0) == 4096
    finally:
        iomgr.IopCompleteRequest = real  # type: ignore[assignment]
    assert len(stages) == 1
    irql, in_dpc, flags = stages[0]
    assert irql == APC_LEVEL and not in_dpc
    assert flags & (IRP_NOCACHE | IRP_READ_OPERATION) == IRP_NOCACHE | IRP_READ_OPERATION


def test_driver_allocated_irp_stops_with_more_processing_and_is_freed_by_its_owner() -> None:
    """Microsoft docs "IoAllocateIrp": the allocating driver's completion routine
    returns STATUS_MORE_PROCESSING_REQUIRED and the driver frees the IRP; freeing
    twice is a bug check."""
    from usbtrace.wdm.iomgr import IoSetCompletionRoutine
    from usbtrace.wdm.irp import IoAllocateIrp, IoFreeIrp

    kernel = Kernel()
    driver = DriverObject(kernel, "\\Driver\\lower")

    def read(dev: Any, irp: Irp) -> int:
        irp.io_status.status = SUCCESS
        IoCompleteRequest(irp)
        return SUCCESS

    driver.major_function[IRP_MJ_READ] = read
    lower = IoCreateDevice(driver, None, None, 0)
    irp = IoAllocateIrp(lower.stack_size)
    irp.IoGetNextIrpStackLocation().major_function = IRP_MJ_READ
    irp.IoGetNextIrpStackLocation().parameters = ReadWriteParameters(512, 0)
    done = KEvent()

    def completion(dev: Any, i: Irp, ctx: Any) -> int:
        done.KeSetEvent()
        return NTSTATUS.STATUS_MORE_PROCESSING_REQUIRED

    IoSetCompletionRoutine(irp, completion, None)
    assert IoCallDriver(lower, irp) == SUCCESS and done.signaled
    assert not irp.completed  # the I/O manager never finished it: it is the owner's
    IoFreeIrp(irp)
    with pytest.raises(BugCheck, match="freed twice"):
        IoFreeIrp(irp)


def test_io_start_next_packet_below_dispatch_level_is_a_bug_check() -> None:
    kernel = Kernel()
    driver = DriverObject(kernel, "\\Driver\\startio")
    device = IoCreateDevice(driver, None, None, 0)
    with pytest.raises(BugCheck, match="DISPATCH_LEVEL"):
        iomgr.IoStartNextPacket(device, True)
    old = kernel.scheduler.KeRaiseIrql(DISPATCH_LEVEL)
    iomgr.IoStartNextPacket(device, True)  # nothing queued: the device goes idle
    kernel.scheduler.KeLowerIrql(old)
    assert device.current_irp is None and not device.device_queue.busy


def test_driver_allocated_irp_completed_to_the_io_manager_is_a_bug_check() -> None:
    """An IRP from IoAllocateIrp has no thread for the I/O manager to finish it in: a
    completion routine that lets completion continue to the top stops the machine."""
    from usbtrace.wdm.iomgr import IoSetCompletionRoutine
    from usbtrace.wdm.irp import IoAllocateIrp

    kernel = Kernel()
    driver = DriverObject(kernel, "\\Driver\\lower")

    def read(dev: Any, irp: Irp) -> int:
        irp.io_status.status = SUCCESS
        IoCompleteRequest(irp)
        return SUCCESS

    driver.major_function[IRP_MJ_READ] = read
    lower = IoCreateDevice(driver, None, None, 0)
    irp = IoAllocateIrp(lower.stack_size)
    irp.IoGetNextIrpStackLocation().major_function = IRP_MJ_READ
    irp.IoGetNextIrpStackLocation().parameters = ReadWriteParameters(512, 0)
    IoSetCompletionRoutine(irp, lambda d, i, c: SUCCESS, None)  # should stop it: does not
    with pytest.raises(BugCheck, match="STATUS_MORE_PROCESSING_REQUIRED"):
        IoCallDriver(lower, irp)
