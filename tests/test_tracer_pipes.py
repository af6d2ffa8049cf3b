"""The lower tracer learns endpoints as USBPcap does: from the pipe information that
SELECT_CONFIGURATION and SELECT_INTERFACE return (desowin/usbpcap
``USBPcapDriver/USBPcapURB.c``: USBPcapParseInterfaceInformation keeps PipeHandle ->
endpoint; a bulk URB names only its PipeHandle)."""

from __future__ import annotations

from tests.conftest import Stack
from usbtrace.drivers.tracer import TracerExtension
from usbtrace.records import COMPLETE
from usbtrace.usb import urb as U


def _lower_tracer(stack: Stack) -> TracerExtension:
    driver = stack.machine.kernel.drivers["\\Driver\\usbtrace"]
    return next(d.device_extension for d in driver.device_objects
                if d.device_extension.position == "lower")


def test_pipes_are_learnt_at_start_up(stack: Stack) -> None:
    ext = _lower_tracer(stack)
    assert sorted(ext.pipes.values()) == [(0x02, U.UsbdPipeTypeBulk, None),
                                          (0x81, U.UsbdPipeTypeBulk, None)]
    assert ext.unknown_pipes == 0


def test_the_recorded_endpoint_comes_from_the_learnt_table(stack: Stack) -> None:
    ext = _lower_tracer(stack)
    bulk_in = next(p for p, (ep, _, _) in ext.pipes.items() if ep == 0x81)
    ext.pipes[bulk_in] = (0x85, U.UsbdPipeTypeBulk, None)  # what the table says is logged
    before = len(stack.events)
    h = stack.open()
    stack.win32.ReadFile(h, bytearray(512), 0)
    ins = {e.endpoint for e in stack.events[before:] if e.position == "lower"
           and e.kind == COMPLETE and e.transfer_type == U.UsbdPipeTypeBulk
           and e.endpoint is not None and e.endpoint & 0x80}
    assert ins == {0x85}


def test_a_pipe_the_filter_never_saw_selected_is_counted(stack: Stack) -> None:
    ext = _lower_tracer(stack)
    ext.pipes.clear()
    h = stack.open()
    stack.win32.ReadFile(h, bytearray(512), 0)
    assert ext.unknown_pipes > 0


def test_device_address_comes_from_the_hubs_node_connection_information(stack: Stack) -> None:
    """USBPcapHelperFunctions.c: the parent hub and port, then
    IOCTL_USB_GET_NODE_CONNECTION_INFORMATION on the hub for that port."""
    from usbtrace.wdm.device import IoGetAttachedDevice
    from usbtrace.wdm.irp import IoBuildDeviceIoControlRequest
    from usbtrace.wdm.pnp import send_irp_synchronously

    ext = _lower_tracer(stack)
    kernel = stack.machine.kernel
    parent = U.ParentHubInfo()
    irp = IoBuildDeviceIoControlRequest(U.IOCTL_INTERNAL_USB_GET_PARENT_HUB_INFO, ext.lower,
                                        None, 0, True, None, None, argument1=parent)
    assert send_irp_synchronously(kernel, ext.lower, irp) == 0 and parent.port_number >= 1
    hub = IoGetAttachedDevice(parent.parent_hub_pdo)
    node = U.UsbNodeConnectionInformation(parent.port_number)
    irp = IoBuildDeviceIoControlRequest(U.IOCTL_USB_GET_NODE_CONNECTION_INFORMATION, hub, node,
                                        node.SIZE, False, None, None)
    assert send_irp_synchronously(kernel, hub, irp) == 0
    assert node.ConnectionStatus == 1 and node.DeviceAddress == ext.address == \
        ext.lower.device_extension.address
    assert {e.device for e in stack.events if e.position == "lower" and e.is_urb} == \
        {node.DeviceAddress}
