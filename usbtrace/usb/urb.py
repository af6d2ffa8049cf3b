"""USB request blocks (usb.h, usbdi.h): function codes, USBD status, URB objects.

A client driver builds an URB and sends it down in an
IRP_MJ_INTERNAL_DEVICE_CONTROL / IOCTL_INTERNAL_USB_SUBMIT_URB IRP.  Every
control-type URB knows the SETUP packet the bus driver will put on the wire
(``setup_packet``), so the bus driver, the tracer and pcap export all see the
same eight bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from construct import Int16ul, Int32ul, Int64ul, Struct

from usbtrace.usb import setup as std
from usbtrace.wdm.irp import ctl_code
from usbtrace.wdm.mdl import MmGetSystemAddressForMdlSafe

FILE_DEVICE_USB = 0x22
METHOD_NEITHER = 3
IOCTL_INTERNAL_USB_SUBMIT_URB = ctl_code(FILE_DEVICE_USB, 0, METHOD_NEITHER, 0)  # 0x220003
# usbioctl.h: USB_GET_PARENT_HUB_INFO 267, USB_GET_NODE_CONNECTION_INFORMATION 259
IOCTL_INTERNAL_USB_GET_PARENT_HUB_INFO = ctl_code(FILE_DEVICE_USB, 267, METHOD_NEITHER, 0)
IOCTL_USB_GET_NODE_CONNECTION_INFORMATION = ctl_code(FILE_DEVICE_USB, 259, 0, 0)  # 0x22040C
IOCTL_INTERNAL_USB_RESET_PORT = ctl_code(FILE_DEVICE_USB, 1, METHOD_NEITHER, 0)  # 0x220007
IOCTL_INTERNAL_USB_GET_PORT_STATUS = ctl_code(FILE_DEVICE_USB, 4, METHOD_NEITHER, 0)
IOCTL_INTERNAL_USB_CYCLE_PORT = ctl_code(FILE_DEVICE_USB, 7, METHOD_NEITHER, 0)
# selective suspend: the client's "I am idle" request the hub holds (0x220027)
IOCTL_INTERNAL_USB_SUBMIT_IDLE_NOTIFICATION = ctl_code(FILE_DEVICE_USB, 9, METHOD_NEITHER, 0)


@dataclass
class UsbIdleCallbackInfo:
    """USB_IDLE_CALLBACK_INFO: what the hub calls when it is ready to suspend the device."""

    idle_callback: Callable[[Any], None]
    idle_context: Any

# A private PnP interface (IRP_MN_QUERY_INTERFACE) through which the bus driver
# tells a filter its device's bus number and speed (USBPcap numbers buses by its
# own control devices).  The address comes from the hub's
# IOCTL_USB_GET_NODE_CONNECTION_INFORMATION, as USBPcap gets it.
BUS_INFO_INTERFACE = "usbtrace.bus_info"

# URB function codes (usb.h)
URB_FUNCTION_SELECT_CONFIGURATION = 0x0000
URB_FUNCTION_SELECT_INTERFACE = 0x0001
URB_FUNCTION_ABORT_PIPE = 0x0002
URB_FUNCTION_GET_CURRENT_FRAME_NUMBER = 0x0007
URB_FUNCTION_CONTROL_TRANSFER = 0x0008
URB_FUNCTION_BULK_OR_INTERRUPT_TRANSFER = 0x0009
URB_FUNCTION_ISOCH_TRANSFER = 0x000A
URB_FUNCTION_GET_DESCRIPTOR_FROM_DEVICE = 0x000B
URB_FUNCTION_SET_DESCRIPTOR_TO_DEVICE = 0x000C
URB_FUNCTION_SET_FEATURE_TO_DEVICE = 0x000D
URB_FUNCTION_SET_FEATURE_TO_INTERFACE = 0x000E
URB_FUNCTION_SET_FEATURE_TO_ENDPOINT = 0x000F
URB_FUNCTION_CLEAR_FEATURE_TO_DEVICE = 0x0010
URB_FUNCTION_CLEAR_FEATURE_TO_INTERFACE = 0x0011
URB_FUNCTION_CLEAR_FEATURE_TO_ENDPOINT = 0x0012
URB_FUNCTION_GET_STATUS_FROM_DEVICE = 0x0013
URB_FUNCTION_GET_STATUS_FROM_INTERFACE = 0x0014
URB_FUNCTION_GET_STATUS_FROM_ENDPOINT = 0x0015
URB_FUNCTION_VENDOR_DEVICE = 0x0017
URB_FUNCTION_VENDOR_INTERFACE = 0x0018
URB_FUNCTION_VENDOR_ENDPOINT = 0x0019
URB_FUNCTION_CLASS_DEVICE = 0x001A
URB_FUNCTION_CLASS_INTERFACE = 0x001B
URB_FUNCTION_CLASS_ENDPOINT = 0x001C
URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL = 0x001E
URB_FUNCTION_CLASS_OTHER = 0x001F
URB_FUNCTION_VENDOR_OTHER = 0x0020
URB_FUNCTION_GET_STATUS_FROM_OTHER = 0x0021
URB_FUNCTION_CLEAR_FEATURE_TO_OTHER = 0x0022
URB_FUNCTION_SET_FEATURE_TO_OTHER = 0x0023
URB_FUNCTION_GET_DESCRIPTOR_FROM_ENDPOINT = 0x0024
URB_FUNCTION_SET_DESCRIPTOR_TO_ENDPOINT = 0x0025
URB_FUNCTION_GET_CONFIGURATION = 0x0026
URB_FUNCTION_GET_INTERFACE = 0x0027
URB_FUNCTION_GET_DESCRIPTOR_FROM_INTERFACE = 0x0028
URB_FUNCTION_SET_DESCRIPTOR_TO_INTERFACE = 0x0029
URB_FUNCTION_GET_MS_FEATURE_DESCRIPTOR = 0x002A
URB_FUNCTION_SYNC_RESET_PIPE = 0x0030
URB_FUNCTION_SYNC_CLEAR_STALL = 0x0031
URB_FUNCTION_CONTROL_TRANSFER_EX = 0x0032
URB_FUNCTION_OPEN_STATIC_STREAMS = 0x0035  # USB 3 bulk streams (usb.h, Windows 8)
URB_FUNCTION_CLOSE_STATIC_STREAMS = 0x0036

URB_FUNCTION_NAMES = {
    value: name[len("URB_FUNCTION_"):].lower()
    for name, value in list(globals().items())
    if name.startswith("URB_FUNCTION_") and isinstance(value, int)
}

# USBD status codes (usb.h)
USBD_STATUS_SUCCESS = 0x00000000
USBD_STATUS_PENDING = 0x40000000
USBD_STATUS_CRC = 0xC0000001
USBD_STATUS_BTSTUFF = 0xC0000002
USBD_STATUS_DATA_TOGGLE_MISMATCH = 0xC0000003
USBD_STATUS_STALL_PID = 0xC0000004
USBD_STATUS_DEV_NOT_RESPONDING = 0xC0000005
USBD_STATUS_PID_CHECK_FAILURE = 0xC0000006
USBD_STATUS_UNEXPECTED_PID = 0xC0000007
USBD_STATUS_DATA_OVERRUN = 0xC0000008
USBD_STATUS_DATA_UNDERRUN = 0xC0000009
USBD_STATUS_BUFFER_OVERRUN = 0xC000000C
USBD_STATUS_BUFFER_UNDERRUN = 0xC000000D
USBD_STATUS_NOT_ACCESSED = 0xC000000F
USBD_STATUS_FIFO = 0xC0000010
USBD_STATUS_XACT_ERROR = 0xC0000011
USBD_STATUS_BABBLE_DETECTED = 0xC0000012
USBD_STATUS_DATA_BUFFER_ERROR = 0xC0000013
USBD_STATUS_ENDPOINT_HALTED = 0xC0000030
USBD_STATUS_INVALID_URB_FUNCTION = 0x80000200
USBD_STATUS_INVALID_PARAMETER = 0x80000300
USBD_STATUS_ERROR_BUSY = 0x80000400
USBD_STATUS_REQUEST_FAILED = 0x80000500
USBD_STATUS_INVALID_PIPE_HANDLE = 0x80000600
USBD_STATUS_NO_BANDWIDTH = 0x80000700
USBD_STATUS_INTERNAL_HC_ERROR = 0x80000800
USBD_STATUS_ERROR_SHORT_TRANSFER = 0x80000900
USBD_STATUS_BAD_START_FRAME = 0xC0000A00
USBD_STATUS_NOT_SUPPORTED = 0xC0000E00
USBD_STATUS_TIMEOUT = 0xC0006000
USBD_STATUS_DEVICE_GONE = 0xC0007000
USBD_STATUS_CANCELED = 0xC0010000

USBD_STATUS_NAMES = {
    value: name[len("USBD_STATUS_"):].lower()
    for name, value in list(globals().items())
    if name.startswith("USBD_STATUS_") and isinstance(value, int)
}


def usbd_status_name(status: int | None) -> str | None:
    if status is None:
        return None
    return USBD_STATUS_NAMES.get(status, f"0x{status:08x}")


def USBD_SUCCESS(status: int) -> bool:  # noqa: N802
    return (status >> 30) in (0, 1)


# TransferFlags
USBD_TRANSFER_DIRECTION_OUT = 0
USBD_TRANSFER_DIRECTION_IN = 1
USBD_SHORT_TRANSFER_OK = 2

# USBD_PIPE_TYPE
UsbdPipeTypeControl, UsbdPipeTypeIsochronous, UsbdPipeTypeBulk, UsbdPipeTypeInterrupt = 0, 1, 2, 3

# _URB_HEADER (usb.h), 64-bit layout, as it starts every URB in memory
UrbHeader = Struct(
    "Length" / Int16ul,
    "Function" / Int16ul,
    "Status" / Int32ul,
    "UsbdDeviceHandle" / Int64ul,
    "UsbdFlags" / Int32ul,
)


@dataclass(slots=True, eq=False)
class PipeInformation:
    """USBD_PIPE_INFORMATION; the object itself is the PipeHandle."""

    endpoint_address: int
    pipe_type: int
    maximum_packet_size: int
    interval: int = 0
    maximum_transfer_size: int = 0x10000


@dataclass(slots=True, eq=False)
class StreamInformation(PipeInformation):
    """USBD_STREAM_INFORMATION: the PipeHandle of one stream of a bulk pipe, which
    OPEN_STATIC_STREAMS fills in; a bulk URB on it moves data on stream ``stream_id``
    (from 1) of the pipe's endpoint."""

    stream_id: int = 0


@dataclass(slots=True, eq=False)
class InterfaceInformation:
    """USBD_INTERFACE_INFORMATION, filled in by the bus on SELECT_CONFIGURATION."""

    interface_number: int
    alternate_setting: int
    interface_class: int = 0
    interface_subclass: int = 0
    interface_protocol: int = 0
    pipes: list[PipeInformation] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class ParentHubInfo:
    """What IOCTL_INTERNAL_USB_GET_PARENT_HUB_INFO fills in (its Argument1, 2, 4): the
    parent hub's PDO, the device's port on it, the root hub's PDO."""

    parent_hub_pdo: Any = None
    port_number: int = 0
    root_hub_pdo: Any = None


@dataclass(slots=True, eq=False)
class UsbNodeConnectionInformation:
    """USB_NODE_CONNECTION_INFORMATION, for IOCTL_USB_GET_NODE_CONNECTION_INFORMATION."""

    ConnectionIndex: int
    DeviceAddress: int = 0
    DeviceIsHub: bool = False
    ConnectionStatus: int = 0  # NoDeviceConnected 0, DeviceConnected 1
    DeviceDescriptor: Any = None
    SIZE: ClassVar[int] = 35


class Urb:
    """Common URB header: function, status, and what the wire view needs."""

    __slots__ = ("function", "status")
    transfer_type = UsbdPipeTypeControl

    def __init__(self, function: int) -> None:
        self.function = function
        self.status = USBD_STATUS_PENDING

    # the wire view, used by the bus driver, the tracer and exporters
    @property
    def endpoint(self) -> int:
        return 0x80 if self.direction_in else 0x00

    @property
    def direction_in(self) -> bool:
        return False

    def setup_packet(self) -> bytes | None:
        return None

    @property
    def transfer_buffer(self) -> bytearray | memoryview | None:
        return None

    @property
    def transfer_buffer_length(self) -> int:
        return 0


class UrbBulkOrInterruptTransfer(Urb):
    """_URB_BULK_OR_INTERRUPT_TRANSFER: the data is TransferBuffer, or, when that is
    None, what TransferBufferMDL describes (mapped by whoever needs the bytes)."""

    __slots__ = ("pipe_handle", "transfer_flags", "buffer", "length", "transfer_buffer_mdl")

    def __init__(self, pipe: PipeInformation, buffer: bytearray | memoryview | None,
                 length: int, transfer_flags: int, mdl: Any = None) -> None:
        super().__init__(URB_FUNCTION_BULK_OR_INTERRUPT_TRANSFER)
        self.pipe_handle = pipe
        self.transfer_flags = transfer_flags
        self.buffer = buffer
        self.transfer_buffer_mdl = mdl  # an MDL (usbtrace.wdm.mdl.Mdl), or None
        self.length = length  # TransferBufferLength: requested, then actual

    @property
    def transfer_type(self) -> int:  # type: ignore[override]
        return self.pipe_handle.pipe_type

    @property
    def endpoint(self) -> int:
        return self.pipe_handle.endpoint_address

    @property
    def direction_in(self) -> bool:
        return bool(self.pipe_handle.endpoint_address & 0x80)

    @property
    def stream_id(self) -> int:
        """The stream the URB's pipe handle names; 0 for a pipe without streams."""
        return self.pipe_handle.stream_id if isinstance(self.pipe_handle, StreamInformation) \
            else 0

    @property
    def transfer_buffer(self) -> bytearray | memoryview:
        """TransferBuffer, or the system mapping of TransferBufferMDL."""
        buffer = self.buffer
        if buffer is None:
            buffer = MmGetSystemAddressForMdlSafe(self.transfer_buffer_mdl)
        return buffer

    @property
    def transfer_buffer_length(self) -> int:
        return self.length


class UrbControl(Urb):
    """Every control-pipe URB: it carries or implies a SETUP packet."""

    __slots__ = ("buffer", "length", "setup", "pipe_handle")

    def __init__(self, function: int, setup: bytes, buffer: bytearray | None = None,
                 pipe: PipeInformation | None = None) -> None:
        super().__init__(function)
        self.setup = setup
        self.buffer = buffer if buffer is not None else bytearray(std.SETUP.unpack(setup)[4])
        self.length = std.SETUP.unpack(setup)[4]
        self.pipe_handle = pipe

    @property
    def direction_in(self) -> bool:
        return bool(self.setup[0] & 0x80)

    def setup_packet(self) -> bytes:
        return self.setup

    @property
    def transfer_buffer(self) -> bytearray:
        return self.buffer

    @property
    def transfer_buffer_length(self) -> int:
        return self.length


def urb_get_descriptor(descriptor_type: int, index: int, language_id: int,
                       length: int) -> UrbControl:
    """UsbBuildGetDescriptorRequest: URB_FUNCTION_GET_DESCRIPTOR_FROM_DEVICE."""
    setup = std.build_setup(0x80, std.GET_DESCRIPTOR, (descriptor_type << 8) | index,
                            language_id, length)
    return UrbControl(URB_FUNCTION_GET_DESCRIPTOR_FROM_DEVICE, setup)


def urb_class_interface(request: int, value: int, interface: int, length: int,
                        direction_in: bool, data: bytes = b"") -> UrbControl:
    """UsbBuildVendorRequest with URB_FUNCTION_CLASS_INTERFACE."""
    bm = (0x80 if direction_in else 0x00) | 0x20 | 0x01
    setup = std.build_setup(bm, request, value, interface, length)
    buffer = bytearray(data) if not direction_in else bytearray(length)
    return UrbControl(URB_FUNCTION_CLASS_INTERFACE, setup, buffer)


class UrbSelectConfiguration(Urb):
    __slots__ = ("configuration_descriptor", "interfaces", "configuration_handle")

    def __init__(self, configuration_descriptor: bytes | None) -> None:
        super().__init__(URB_FUNCTION_SELECT_CONFIGURATION)
        self.configuration_descriptor = configuration_descriptor
        self.interfaces: list[InterfaceInformation] = []
        self.configuration_handle: Any = None

    def setup_packet(self) -> bytes:
        value = self.configuration_descriptor[5] if self.configuration_descriptor else 0
        return std.build_setup(0x00, std.SET_CONFIGURATION, value, 0, 0)


class UrbSelectInterface(Urb):
    """URB_FUNCTION_SELECT_INTERFACE: SET_INTERFACE on the wire; the bus fills the pipes."""

    __slots__ = ("configuration_handle", "interface")

    def __init__(self, configuration_handle: Any, interface: InterfaceInformation) -> None:
        super().__init__(URB_FUNCTION_SELECT_INTERFACE)
        self.configuration_handle = configuration_handle
        self.interface = interface

    def setup_packet(self) -> bytes:
        """The SETUP packet as USBPcap records it: bmRequestType 0x00 (USBPcapURB.c
        builds it so; the shared Windows 10 capture shows it).  The bus sends the
        standard 0x01 (recipient interface): see ``wire_setup``."""
        return std.build_setup(0x00, std.SET_INTERFACE, self.interface.alternate_setting,
                               self.interface.interface_number, 0)

    def wire_setup(self) -> bytes:
        """SET_INTERFACE as USB 2.0 §9.4.10 defines it."""
        return std.build_setup(0x01, std.SET_INTERFACE, self.interface.alternate_setting,
                               self.interface.interface_number, 0)


class UrbOpenStaticStreams(Urb):
    """_URB_OPEN_STATIC_STREAMS: open ``number_of_streams`` streams on a bulk pipe whose
    SuperSpeed companion offers them; the bus fills ``streams`` with a handle each
    (stream ids 1..n).  Nothing goes on the wire: the host controller configures its
    endpoint context (xHCI's stream context array)."""

    __slots__ = ("pipe_handle", "number_of_streams", "streams")

    def __init__(self, pipe: PipeInformation, number_of_streams: int) -> None:
        super().__init__(URB_FUNCTION_OPEN_STATIC_STREAMS)
        self.pipe_handle = pipe
        self.number_of_streams = number_of_streams
        self.streams: list[StreamInformation] = []

    @property
    def endpoint(self) -> int:
        return self.pipe_handle.endpoint_address


class UrbPipeRequest(Urb):
    """ABORT_PIPE, SYNC_RESET_PIPE_AND_CLEAR_STALL, SYNC_RESET_PIPE, SYNC_CLEAR_STALL,
    CLOSE_STATIC_STREAMS."""

    __slots__ = ("pipe_handle",)

    def __init__(self, function: int, pipe: PipeInformation) -> None:
        super().__init__(function)
        self.pipe_handle = pipe

    @property
    def endpoint(self) -> int:
        return self.pipe_handle.endpoint_address

    def setup_packet(self) -> bytes | None:
        if self.function in (URB_FUNCTION_SYNC_RESET_PIPE_AND_CLEAR_STALL,
                             URB_FUNCTION_SYNC_CLEAR_STALL):
            return std.build_setup(0x02, std.CLEAR_FEATURE, std.ENDPOINT_HALT,
                                   self.pipe_handle.endpoint_address, 0)
        return None
