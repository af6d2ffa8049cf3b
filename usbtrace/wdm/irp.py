"""I/O request packets and their stack locations (wdm.h).

An IRP carries one I/O stack location per device in the stack it is sent to.
``IoCallDriver`` moves the current location one step down; completion walks
back up.  Indices here are 0-based: ``current_location == stack_count`` means
"no driver owns the IRP yet", as ``CurrentLocation == StackCount + 1`` does in
Windows.

Parameters are a per-major object rather than the C union, so that a log can
print them; ``IoCopyCurrentIrpStackLocationToNext`` shares the object, which
is safe because parameter objects are never mutated after the IRP is built.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from usbtrace.wdm.status import NTSTATUS

if TYPE_CHECKING:
    from usbtrace.wdm.device import DeviceObject, FileObject
    from usbtrace.wdm.mdl import Mdl
    from usbtrace.wdm.sched import KEvent

# Major function codes (wdm.h)
IRP_MJ_CREATE = 0x00
IRP_MJ_CLOSE = 0x02
IRP_MJ_READ = 0x03
IRP_MJ_WRITE = 0x04
IRP_MJ_FLUSH_BUFFERS = 0x09
IRP_MJ_DEVICE_CONTROL = 0x0E
IRP_MJ_INTERNAL_DEVICE_CONTROL = 0x0F
IRP_MJ_SCSI = IRP_MJ_INTERNAL_DEVICE_CONTROL
IRP_MJ_SHUTDOWN = 0x10
IRP_MJ_CLEANUP = 0x12
IRP_MJ_POWER = 0x16
IRP_MJ_SYSTEM_CONTROL = 0x17
IRP_MJ_PNP = 0x1B
IRP_MJ_MAXIMUM_FUNCTION = 0x1B

MAJOR_NAMES = {
    0x00: "create", 0x01: "create_named_pipe", 0x02: "close", 0x03: "read", 0x04: "write",
    0x05: "query_information", 0x06: "set_information", 0x07: "query_ea", 0x08: "set_ea",
    0x09: "flush_buffers", 0x0A: "query_volume_information", 0x0B: "set_volume_information",
    0x0C: "directory_control", 0x0D: "file_system_control", 0x0E: "device_control",
    0x0F: "internal_device_control", 0x10: "shutdown", 0x11: "lock_control", 0x12: "cleanup",
    0x13: "create_mailslot", 0x14: "query_security", 0x15: "set_security", 0x16: "power",
    0x17: "system_control", 0x18: "device_change", 0x19: "query_quota", 0x1A: "set_quota",
    0x1B: "pnp",
}

# PnP minor codes
IRP_MN_START_DEVICE = 0x00
IRP_MN_QUERY_REMOVE_DEVICE = 0x01
IRP_MN_REMOVE_DEVICE = 0x02
IRP_MN_CANCEL_REMOVE_DEVICE = 0x03
IRP_MN_STOP_DEVICE = 0x04
IRP_MN_QUERY_STOP_DEVICE = 0x05
IRP_MN_QUERY_DEVICE_RELATIONS = 0x07
IRP_MN_QUERY_INTERFACE = 0x08
IRP_MN_CANCEL_STOP_DEVICE = 0x06
IRP_MN_QUERY_CAPABILITIES = 0x09
IRP_MN_QUERY_RESOURCES = 0x0A
IRP_MN_QUERY_RESOURCE_REQUIREMENTS = 0x0B
IRP_MN_QUERY_DEVICE_TEXT = 0x0C
IRP_MN_FILTER_RESOURCE_REQUIREMENTS = 0x0D
IRP_MN_QUERY_ID = 0x13
IRP_MN_QUERY_PNP_DEVICE_STATE = 0x14
IRP_MN_QUERY_BUS_INFORMATION = 0x15
IRP_MN_DEVICE_USAGE_NOTIFICATION = 0x16
IRP_MN_SURPRISE_REMOVAL = 0x17

PNP_MINOR_NAMES = {
    0x00: "start_device", 0x01: "query_remove_device", 0x02: "remove_device",
    0x03: "cancel_remove_device", 0x04: "stop_device", 0x05: "query_stop_device",
    0x06: "cancel_stop_device", 0x07: "query_device_relations", 0x08: "query_interface",
    0x09: "query_capabilities", 0x0A: "query_resources", 0x0B: "query_resource_requirements",
    0x0C: "query_device_text", 0x0D: "filter_resource_requirements", 0x11: "eject",
    0x13: "query_id", 0x14: "query_pnp_device_state", 0x15: "query_bus_information",
    0x16: "device_usage_notification", 0x17: "surprise_removal",
}

# Power minor codes
IRP_MN_WAIT_WAKE = 0x00
IRP_MN_POWER_SEQUENCE = 0x01
IRP_MN_SET_POWER = 0x02
IRP_MN_QUERY_POWER = 0x03
POWER_MINOR_NAMES = {0: "wait_wake", 1: "power_sequence", 2: "set_power", 3: "query_power"}

# DEVICE_TEXT_TYPE, DEVICE_USAGE_NOTIFICATION_TYPE
DeviceTextDescription, DeviceTextLocationInformation = 0, 1
DeviceUsageTypePaging, DeviceUsageTypeHibernation, DeviceUsageTypeDumpFile = 1, 2, 3

# BUS_QUERY_ID_TYPE and DEVICE_RELATION_TYPE
BusQueryDeviceID, BusQueryHardwareIDs, BusQueryCompatibleIDs, BusQueryInstanceID = 0, 1, 2, 3
BusRelations, EjectionRelations, PowerRelations, RemovalRelations = 0, 1, 2, 3

# Irp->Flags (wdm.h): what the I/O manager set up, and what it must do at completion
IRP_NOCACHE = 0x00000001
IRP_PAGING_IO = 0x00000002
IRP_SYNCHRONOUS_API = 0x00000004
IRP_ASSOCIATED_IRP = 0x00000008
IRP_BUFFERED_IO = 0x00000010
IRP_DEALLOCATE_BUFFER = 0x00000020
IRP_INPUT_OPERATION = 0x00000040
IRP_CREATE_OPERATION = 0x00000080
IRP_READ_OPERATION = 0x00000100
IRP_WRITE_OPERATION = 0x00000200
IRP_CLOSE_OPERATION = 0x00000400
IRP_DEFER_IO_COMPLETION = 0x00000800

# Stack location Control bits
SL_PENDING_RETURNED = 0x01
SL_INVOKE_ON_CANCEL = 0x20
SL_INVOKE_ON_SUCCESS = 0x40
SL_INVOKE_ON_ERROR = 0x80

CompletionRoutine = Callable[["DeviceObject | None", "Irp", Any], int]
CancelRoutine = Callable[["DeviceObject", "Irp"], None]


def minor_name(major: int, minor: int | None) -> str | None:
    """Name of a minor code where the major gives it meaning (PnP, power)."""
    if minor is None:
        return None
    if major == IRP_MJ_PNP:
        return PNP_MINOR_NAMES.get(minor, f"0x{minor:02x}")
    if major == IRP_MJ_POWER:
        return POWER_MINOR_NAMES.get(minor, f"0x{minor:02x}")
    return None


# ---- Parameters, one shape per family of majors ---------------------------------


def _quick_init(cls: type) -> None:
    """Give a frozen, slotted dataclass an ``__init__`` that fills its slots directly.

    A frozen dataclass's own ``__init__`` goes through ``object.__setattr__`` for
    each field, which costs twice as much; every command builds several of these
    (one per URB).  The instances stay frozen: only ``__init__`` changes.
    """
    names = [f.name for f in fields(cls)]
    defaults = {f"_d_{f.name}": f.default for f in fields(cls) if f.default is not MISSING}
    scope: dict[str, Any] = {f"_s_{n}": cls.__dict__[n].__set__ for n in names}
    scope.update(defaults)
    args = ", ".join(n if f"_d_{n}" not in defaults else f"{n}=_d_{n}" for n in names)
    body = "".join(f"    _s_{n}(self, {n})\n" for n in names)
    exec(f"def __init__(self, {args}) -> None:\n{body}", scope)  # noqa: S102
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class ReadWriteParameters:
    length: int
    byte_offset: int


@dataclass(frozen=True, slots=True)
class DeviceIoControlParameters:
    io_control_code: int
    input_buffer_length: int = 0
    output_buffer_length: int = 0
    type3_input_buffer: Any = None  # for internal IOCTLs: Argument1 (the URB)


@dataclass(frozen=True, slots=True)
class ScsiParameters:
    srb: Any  # usbtrace.storage.srb.Srb


for _cls in (ReadWriteParameters, DeviceIoControlParameters, ScsiParameters):
    _quick_init(_cls)


@dataclass(frozen=True, slots=True)
class QueryIdParameters:
    id_type: int


@dataclass(frozen=True, slots=True)
class QueryDeviceRelationsParameters:
    type: int


@dataclass(frozen=True, slots=True)
class QueryDeviceTextParameters:
    device_text_type: int  # DeviceTextDescription or DeviceTextLocationInformation
    locale_id: int = 0x0409


@dataclass(slots=True)
class DeviceCapabilities:
    """DEVICE_CAPABILITIES: filled by the bus driver, adjusted on the way up.

    ``device_state`` maps each system state S0..S5 (index 1..6, as
    PowerSystemWorking..PowerSystemShutdown) to the deepest device state that
    keeps the device's context; ``device_wake`` is the deepest device state
    the device can wake the system from (0: it cannot).
    """

    version: int = 1
    device_d1: bool = False
    device_d2: bool = False
    lock_supported: bool = False
    eject_supported: bool = False
    removable: bool = False
    unique_id: bool = False
    silent_install: bool = False
    raw_device_ok: bool = False
    surprise_removal_ok: bool = False
    wake_from_d0: bool = False
    wake_from_d1: bool = False
    wake_from_d2: bool = False
    wake_from_d3: bool = False
    hardware_disabled: bool = False
    address: int = 0xFFFFFFFF
    ui_number: int = 0xFFFFFFFF
    device_state: list[int] = field(default_factory=lambda: [0] * 7)
    system_wake: int = 0
    device_wake: int = 0


@dataclass(frozen=True, slots=True)
class QueryCapabilitiesParameters:
    capabilities: DeviceCapabilities  # the caller's structure, filled in place


@dataclass(frozen=True, slots=True)
class PnpBusInformation:
    """PNP_BUS_INFORMATION: what IRP_MN_QUERY_BUS_INFORMATION returns."""

    bus_type_guid: str  # GUID_BUS_TYPE_USB and the like; a name in this model
    legacy_bus_type: int  # INTERFACE_TYPE: PNPBus = 15
    bus_number: int


@dataclass(frozen=True, slots=True)
class UsageNotificationParameters:
    in_path: bool  # a paging, hibernation or dump file now is (True) or no longer is here
    type: int  # DeviceUsageTypePaging..


@dataclass(frozen=True, slots=True)
class QueryInterfaceParameters:
    interface_type: str  # the interface GUID; a name in this model


@dataclass(frozen=True, slots=True)
class PowerParameters:
    type: str  # "system" or "device"
    state: int  # PowerSystemWorking.. / PowerDeviceD0..
    shutdown_type: int = 0  # POWER_ACTION, for system IRPs


@dataclass(frozen=True, slots=True)
class CreateParameters:
    desired_access: int
    share_access: int


class IoStackLocation:
    """One driver's view of an IRP (IO_STACK_LOCATION)."""

    __slots__ = (
        "major_function", "minor_function", "flags", "control", "parameters",
        "device_object", "file_object", "completion_routine", "context",
    )

    def __init__(self) -> None:
        self.major_function = 0
        self.minor_function = 0
        self.flags = 0
        self.control = 0
        self.parameters: Any = None
        self.device_object: DeviceObject | None = None
        self.file_object: FileObject | None = None
        self.completion_routine: CompletionRoutine | None = None
        self.context: Any = None


# NTSTATUS.STATUS_SUCCESS, the member itself: an attribute of an Enum class is read
# through EnumType's __getattr__ hook (about 190 ns), and every IRP has a status block
_STATUS_SUCCESS = NTSTATUS.STATUS_SUCCESS


class IoStatusBlock:
    __slots__ = ("status", "information")

    def __init__(self) -> None:
        self.status: int = _STATUS_SUCCESS
        self.information: Any = 0


IRP_POOL_BASE = 0xFFFF_A000_0000_1000
_irp_ids = itertools.count(IRP_POOL_BASE, 0x100)


def reset_irp_addresses() -> None:
    """Start IRP addresses from the pool's base again: a machine that boots does.

    usbstor tags each CBW with the low 32 bits of its IRP's address, as Windows
    does, so the addresses must repeat from run to run for two recordings of the
    same workload to be the same byte for byte.
    """
    global _irp_ids
    _irp_ids = itertools.count(IRP_POOL_BASE, 0x100)


class Irp:
    """An I/O request packet.

    ``id`` stands in for the IRP's kernel address: unique while the IRP lives,
    and the key by which the tracer pairs submission with completion.
    """

    __slots__ = (
        "id", "stack", "stack_count", "current_location", "io_status", "system_buffer",
        "mdl_address", "user_buffer", "flags", "cancel", "cancel_routine", "pending_returned",
        "master_irp", "irp_count", "user_event", "user_iosb", "tail", "requestor_mode",
        "completed", "freed", "user_callback", "driver_allocated", "registry",
        "cancel_irql", "sort_key", "pending_checks",
    )

    def __init__(self, stack_size: int) -> None:
        self.id = next(_irp_ids)
        self.stack = [IoStackLocation() for _ in range(stack_size)]
        self.stack_count = stack_size
        self.current_location = stack_size
        self.io_status = IoStatusBlock()
        self.system_buffer: Any = None
        self.mdl_address: Mdl | None = None  # MdlAddress: the caller's buffer, direct I/O
        self.user_buffer: Any = None
        self.flags = 0
        self.cancel = False
        self.cancel_routine: CancelRoutine | None = None
        self.pending_returned = False
        self.master_irp: Irp | None = None
        self.irp_count = 0  # for a master IRP: associated IRPs still outstanding
        self.user_event: KEvent | None = None
        self.user_iosb: IoStatusBlock | None = None
        self.tail: list[Any] = [None, None, None, None]  # Tail.Overlay.DriverContext
        self.requestor_mode = "kernel"
        self.completed = False
        self.freed = False
        self.user_callback: Callable[[Irp], None] | None = None
        self.driver_allocated = False  # IoAllocateIrp: the driver must IoFreeIrp it
        self.registry: dict[int, Irp] | None = None  # the kernel's live IRPs, once sent
        self.cancel_irql = 0  # CancelIrql: what the cancel routine restores
        self.sort_key = 0  # Tail.Overlay.DeviceQueueEntry.SortKey
        # bit n: the driver at stack location n returned STATUS_PENDING before marking
        # the IRP pending; the mark must be there when completion reaches location n
        self.pending_checks = 0

    # Accessors with the WDK's names, as methods of the IRP -----------------------

    def IoGetCurrentIrpStackLocation(self) -> IoStackLocation:  # noqa: N802
        return self.stack[self.current_location]

    def IoGetNextIrpStackLocation(self) -> IoStackLocation:  # noqa: N802
        return self.stack[self.current_location - 1]

    def __repr__(self) -> str:
        return f"<Irp {self.id:#x} loc={self.current_location}/{self.stack_count}>"


def IoAllocateIrp(stack_size: int, charge_quota: bool = False) -> Irp:  # noqa: N802
    """Allocate an IRP with ``stack_size`` stack locations."""
    if stack_size < 1:
        raise ValueError("an IRP needs at least one stack location")
    irp = Irp(stack_size)
    irp.driver_allocated = True
    return irp


def IoFreeIrp(irp: Irp) -> None:  # noqa: N802
    """Release an IRP the caller allocated; freeing twice is a bug check, as in Windows."""
    from usbtrace.wdm.sched import BugCheck

    if irp.freed:
        raise BugCheck("MULTIPLE_IRP_COMPLETE_REQUESTS", f"{irp!r} freed twice")
    release_irp(irp)


def release_irp(irp: Irp) -> None:
    """The IRP's memory goes back to the pool: it leaves the kernel's live IRPs, and
    what its stack locations and DriverContext pointed at is no longer reachable from it.

    Drivers keep their per-request state there (usbstor's request as a completion
    context, the bus driver's transfer in Tail.Overlay.DriverContext[0]), and that
    state points back at the IRP: left in place, every IRP would be a reference
    cycle that only Python's cyclic collector reclaims, and collecting them was a
    fifth of a device replay's CPU.  Nothing may read a freed IRP's completion
    routines or DriverContext; in Windows the memory is gone.
    """
    irp.freed = True
    if irp.registry is not None:
        irp.registry.pop(irp.id, None)
    for loc in irp.stack:
        loc.context = None
        loc.completion_routine = None
    tail = irp.tail
    tail[0] = tail[1] = tail[2] = tail[3] = None


def IoReuseIrp(irp: Irp, status: int) -> None:  # noqa: N802
    """Make a finished IRP the caller allocated ready for its next request (IoReuseIrp).

    The stack locations and status block are cleared and ``status`` becomes
    the initial status; the IRP keeps its address, which is why a driver that
    reuses one IRP for a series of start-up requests shows the same IRP id on
    each of them (USBPcap's irpId, and so the tracer's).
    """
    if irp.freed:
        from usbtrace.wdm.sched import BugCheck

        raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION", f"{irp!r} reused after IoFreeIrp")
    irp.stack = [IoStackLocation() for _ in range(irp.stack_count)]
    irp.current_location = irp.stack_count
    irp.io_status = IoStatusBlock()
    irp.io_status.status = status
    irp.cancel = False
    irp.cancel_routine = None
    irp.pending_returned = False
    irp.pending_checks = 0
    irp.completed = False
    irp.tail = [None, None, None, None]


def IoMakeAssociatedIrp(master: Irp, stack_size: int) -> Irp:  # noqa: N802
    """An IRP whose completion counts down its master (IoMakeAssociatedIrp).

    The caller sets ``master.irp_count`` to the number of associated IRPs; the
    master completes when the last of them does.
    """
    irp = Irp(stack_size)
    irp.master_irp = master
    return irp


def IoBuildDeviceIoControlRequest(  # noqa: N802
    io_control_code: int,
    device: DeviceObject,
    input_buffer: Any,
    output_buffer_length: int,
    internal: bool,
    event: KEvent | None,
    iosb: IoStatusBlock | None,
    argument1: Any = None,
) -> Irp:
    """Build a (internal) device-control IRP for ``device``'s stack.

    For internal IOCTLs the URB (or other argument) travels as Argument1, as
    usbhub expects for IOCTL_INTERNAL_USB_SUBMIT_URB.
    """
    irp = Irp(device.stack_size)
    loc = irp.IoGetNextIrpStackLocation()
    loc.major_function = IRP_MJ_INTERNAL_DEVICE_CONTROL if internal else IRP_MJ_DEVICE_CONTROL
    in_len = len(input_buffer) if isinstance(input_buffer, (bytes, bytearray, memoryview)) else 0
    loc.parameters = DeviceIoControlParameters(
        io_control_code, in_len, output_buffer_length,
        argument1 if internal else None,
    )
    irp.system_buffer = input_buffer
    irp.user_event = event
    irp.user_iosb = iosb
    return irp


_ID_TYPES = {0: "device_id", 1: "hardware_ids", 2: "compatible_ids", 3: "instance_id"}
_RELATIONS = {0: "bus_relations", 1: "ejection_relations", 2: "power_relations",
              3: "removal_relations", 4: "target_device_relation"}
_DEVICE_POWER = {1: "D0", 2: "D1", 3: "D2", 4: "D3"}
_TEXT_TYPES = {0: "description", 1: "location_information"}
_USAGE_TYPES = {1: "paging", 2: "hibernation", 3: "dump_file"}


def describe_parameters(params: Any) -> str:
    """A short text for PnP and power parameters, for logs."""
    if isinstance(params, QueryIdParameters):
        return _ID_TYPES.get(params.id_type, str(params.id_type))
    if isinstance(params, QueryDeviceRelationsParameters):
        return _RELATIONS.get(params.type, str(params.type))
    if isinstance(params, PowerParameters):
        state = _DEVICE_POWER.get(params.state, str(params.state)) if params.type == "device" \
            else f"S{params.state - 1}"
        return f"{params.type} {state}"
    if isinstance(params, QueryInterfaceParameters):
        return params.interface_type
    if isinstance(params, QueryDeviceTextParameters):
        return _TEXT_TYPES.get(params.device_text_type, str(params.device_text_type))
    if isinstance(params, UsageNotificationParameters):
        usage = _USAGE_TYPES.get(params.type, str(params.type))
        return f"{usage} {'in' if params.in_path else 'out of'} path"
    return ""


def ctl_code(device_type: int, function: int, method: int, access: int) -> int:
    """CTL_CODE from devioctl.h."""
    return (device_type << 16) | (access << 14) | (function << 2) | method
