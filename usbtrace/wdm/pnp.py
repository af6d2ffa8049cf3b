"""The PnP manager: driver database, device nodes, stack building and teardown.

What Windows does when a bus reports a new child, in order:

1. IRP_MN_QUERY_DEVICE_RELATIONS (BusRelations) to the parent's stack gives
   the child PDOs;
2. IRP_MN_QUERY_ID (device, hardware, compatible, instance IDs) to each new
   PDO picks the function driver from the driver database (the INF match),
   and the device's LowerFilters / UpperFilters from the registry;
3. each driver not yet loaded gets ``DriverEntry`` once;
4. AddDevice runs bottom-up: lower filters, the function driver, upper
   filters, each attaching its device object on top of the stack;
5. IRP_MN_START_DEVICE goes to the top of the stack and is handled on the
   way back up; then the power manager powers the stack to D0;
6. the new stack is asked for its own BusRelations, recursively.

Removal runs children first: QUERY_REMOVE (which a driver may veto), then
REMOVE_DEVICE, after which each driver detaches and deletes its device;
on surprise removal SURPRISE_REMOVAL comes first and cannot be vetoed.  A
driver whose last device is gone is unloaded through ``DriverUnload``.

Device-node states move only along ``TRANSITIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from usbtrace.errors import UsbtraceError
from usbtrace.wdm.device import DeviceObject, DriverObject, IoGetAttachedDevice
from usbtrace.wdm.iomgr import IoCallDriver
from usbtrace.wdm.irp import (
    IRP_MJ_PNP,
    IRP_MN_QUERY_CAPABILITIES,
    IRP_MN_QUERY_DEVICE_RELATIONS,
    IRP_MN_QUERY_DEVICE_TEXT,
    IRP_MN_QUERY_ID,
    IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_START_DEVICE,
    IRP_MN_SURPRISE_REMOVAL,
    BusQueryCompatibleIDs,
    BusQueryDeviceID,
    BusQueryHardwareIDs,
    BusQueryInstanceID,
    BusRelations,
    Irp,
    QueryDeviceRelationsParameters,
    QueryIdParameters,
)
from usbtrace.wdm.kernel import Kernel
from usbtrace.wdm.power import PowerManager
from usbtrace.wdm.sched import PASSIVE_LEVEL, KEvent
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS

DriverEntryRoutine = Callable[[DriverObject, str], int]


class PnpError(UsbtraceError):
    """A device could not be started or removed."""


@dataclass
class Service:
    """A driver's service key: its entry point, and the filters installed with it."""

    name: str
    driver_entry: DriverEntryRoutine
    lower_filters: list[str] = field(default_factory=list)
    upper_filters: list[str] = field(default_factory=list)


class DriverDatabase:
    """Services and the INF matches that pick a function driver for an ID."""

    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.matches: dict[str, str] = {}  # hardware or compatible ID -> service name

    def add_service(self, service: Service, ids: list[str] = ()) -> None:  # type: ignore[assignment]
        self.services[service.name] = service
        for device_id in ids:
            self.matches[device_id.upper()] = service.name

    def match(self, hardware_ids: list[str], compatible_ids: list[str]) -> Service | None:
        """Hardware IDs first, most specific first, then compatible IDs (INF ranking)."""
        for device_id in [*hardware_ids, *compatible_ids]:
            name = self.matches.get(device_id.upper())
            if name is not None:
                return self.services[name]
        return None


# Device-node states and the events that move them (a subset of the DNS_ states).
TRANSITIONS: dict[tuple[str, str], str] = {
    ("initialized", "drivers_added"): "drivers_added",
    ("drivers_added", "start"): "started",
    ("drivers_added", "start_failed"): "start_failed",
    ("started", "query_remove"): "query_removed",
    ("query_removed", "cancel_remove"): "started",
    ("query_removed", "remove"): "removed",
    ("started", "surprise_remove"): "surprise_removed",
    ("surprise_removed", "remove"): "removed",
    ("start_failed", "remove"): "removed",
    ("initialized", "remove"): "removed",
    ("drivers_added", "remove"): "removed",
}


@dataclass
class DeviceNode:
    pdo: DeviceObject
    parent: DeviceNode | None
    device_id: str = ""
    instance_id: str = ""
    hardware_ids: list[str] = field(default_factory=list)
    compatible_ids: list[str] = field(default_factory=list)
    description: str = ""
    service: str | None = None
    state: str = "initialized"
    children: list[DeviceNode] = field(default_factory=list)
    history: list[str] = field(default_factory=list)

    def move(self, event: str) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise PnpError(
                f"device {self.instance_path}: no '{event}' from '{self.state}'") from None
        self.history.append(self.state)

    @property
    def instance_path(self) -> str:
        return f"{self.device_id}\\{self.instance_id}" if self.device_id else self.pdo.name

    @property
    def top(self) -> DeviceObject:
        return IoGetAttachedDevice(self.pdo)

    def walk(self) -> list[DeviceNode]:
        nodes = [self]
        for child in self.children:
            nodes.extend(child.walk())
        return nodes


def send_irp_synchronously(kernel: Kernel, device: DeviceObject, irp: Irp) -> int:
    """IoCallDriver, then wait on the IRP's event if it pended (PASSIVE_LEVEL only)."""
    kernel.scheduler.require_irql(PASSIVE_LEVEL, "synchronous IRP")
    event = KEvent()
    irp.user_event = event
    status = IoCallDriver(device, irp)
    if status == NTSTATUS.STATUS_PENDING:
        kernel.scheduler.KeWaitForSingleObject(event, f"IRP {irp.id:#x}")
    return int(irp.io_status.status)


class PnpManager:
    def __init__(self, kernel: Kernel, database: DriverDatabase) -> None:
        self.kernel = kernel
        self.database = database
        self.power = PowerManager(kernel)
        self.roots: list[DeviceNode] = []
        self.on_event: list[Callable[[str, DeviceNode], None]] = []
        kernel.pnp = self

    # ---- PnP IRPs -----------------------------------------------------------------

    def send_pnp(self, node: DeviceNode, minor: int, parameters: Any = None) -> tuple[int, Any]:
        top = node.top
        irp = Irp(top.stack_size)
        loc = irp.IoGetNextIrpStackLocation()
        loc.major_function = IRP_MJ_PNP
        loc.minor_function = minor
        loc.parameters = parameters
        irp.io_status.status = NTSTATUS.STATUS_NOT_SUPPORTED  # the rule for PnP IRPs
        status = send_irp_synchronously(self.kernel, top, irp)
        return status, irp.io_status.information

    def _query_id(self, node: DeviceNode, id_type: int) -> Any:
        status, info = self.send_pnp(node, IRP_MN_QUERY_ID, QueryIdParameters(id_type))
        return info if NT_SUCCESS(status) else None

    # ---- building ------------------------------------------------------------------

    def load_driver(self, service: str) -> DriverObject:
        """Load a driver once: create its driver object and call DriverEntry."""
        name = f"\\Driver\\{service}"
        driver = self.kernel.drivers.get(name)
        if driver is not None:
            return driver
        entry = self.database.services.get(service)
        if entry is None:
            raise PnpError(f"service '{service}' is not installed")
        driver = DriverObject(self.kernel, name)
        status = entry.driver_entry(driver, f"\\Registry\\Machine\\System\\Services\\{service}")
        if not NT_SUCCESS(status):
            raise PnpError(f"DriverEntry of {service} failed with {NTSTATUS(status).name}")
        self.kernel.drivers[name] = driver
        return driver

    def add_root(self, pdo: DeviceObject) -> DeviceNode:
        """A root-enumerated device (the host controller's root hub)."""
        node = DeviceNode(pdo, None)
        self.roots.append(node)
        self._start_node(node)
        return node

    def enumerate(self, node: DeviceNode) -> None:
        """Ask ``node``'s stack for its children; build stacks for the new ones."""
        status, relations = self.send_pnp(
            node, IRP_MN_QUERY_DEVICE_RELATIONS, QueryDeviceRelationsParameters(BusRelations)
        )
        if not NT_SUCCESS(status) or not relations:
            relations = []
        present = set(map(id, relations))
        for child in list(node.children):
            if id(child.pdo) not in present:
                self.remove(child, surprise=child.state == "started")
        known = {id(c.pdo) for c in node.children}
        for pdo in relations:
            if id(pdo) not in known:
                child = DeviceNode(pdo, node)
                node.children.append(child)
                self._start_node(child)

    def _start_node(self, node: DeviceNode) -> None:
        node.device_id = self._query_id(node, BusQueryDeviceID) or ""
        node.hardware_ids = list(self._query_id(node, BusQueryHardwareIDs) or [])
        node.compatible_ids = list(self._query_id(node, BusQueryCompatibleIDs) or [])
        node.instance_id = self._query_id(node, BusQueryInstanceID) or ""
        self.send_pnp(node, IRP_MN_QUERY_CAPABILITIES)
        _, text = self.send_pnp(node, IRP_MN_QUERY_DEVICE_TEXT)
        node.description = text or ""
        service = self.database.match(node.hardware_ids, node.compatible_ids)
        if service is None:
            # No driver: the device stays a bare PDO, as an unknown device does.
            self.kernel.DbgPrint("PnP: no driver for %s", node.instance_path)
            return
        node.service = service.name
        order = [*service.lower_filters, service.name, *service.upper_filters]
        for name in order:
            driver = self.load_driver(name)
            add_device = driver.driver_extension.add_device
            if add_device is None:
                raise PnpError(f"driver {name} has no AddDevice")
            before = set(map(id, driver.device_objects))
            status = add_device(driver, node.pdo)
            if not NT_SUCCESS(status):
                raise PnpError(f"AddDevice of {name} failed with {NTSTATUS(status).name}")
            from usbtrace.wdm.device import DO_DEVICE_INITIALIZING
            from usbtrace.wdm.sched import BugCheck

            for dev in driver.device_objects:
                if id(dev) not in before and dev.flags & DO_DEVICE_INITIALIZING:
                    raise BugCheck(
                        "DRIVER_VERIFIER_DETECTED_VIOLATION",
                        f"{name} AddDevice left DO_DEVICE_INITIALIZING set on {dev!r}",
                    )
        node.move("drivers_added")
        status, _ = self.send_pnp(node, IRP_MN_START_DEVICE)
        if not NT_SUCCESS(status):
            node.move("start_failed")
            raise PnpError(
                f"{node.instance_path}: IRP_MN_START_DEVICE failed with {_name(status)}"
            )
        node.move("start")
        self.power.power_up(node.top)
        for callback in self.on_event:
            callback("started", node)
        self.enumerate(node)

    # ---- teardown ------------------------------------------------------------------

    def remove(self, node: DeviceNode, surprise: bool = False) -> None:
        """Remove ``node`` and its children (children first)."""
        for child in list(node.children):
            self.remove(child, surprise)
        if node.state == "removed":
            return
        if node.state == "started":
            if surprise:
                node.move("surprise_remove")
                self.send_pnp(node, IRP_MN_SURPRISE_REMOVAL)
            else:
                status, _ = self.send_pnp(node, IRP_MN_QUERY_REMOVE_DEVICE)
                if not NT_SUCCESS(status):
                    raise PnpError(f"{node.instance_path}: removal vetoed ({_name(status)})")
                node.move("query_remove")
                self.power.power_down(node.top)
        drivers = self._drivers_of(node)
        self.send_pnp(node, IRP_MN_REMOVE_DEVICE)
        node.move("remove")
        for callback in self.on_event:
            callback("removed", node)
        if node.parent is not None and node in node.parent.children:
            node.parent.children.remove(node)
        if node in self.roots:
            self.roots.remove(node)
        for driver in drivers:
            self._unload_if_idle(driver)

    def _drivers_of(self, node: DeviceNode) -> list[DriverObject]:
        drivers = []
        device: DeviceObject | None = node.pdo
        while device is not None:
            if device.driver_object not in drivers:
                drivers.append(device.driver_object)
            device = device.attached_device
        return drivers

    def _unload_if_idle(self, driver: DriverObject) -> None:
        if driver.device_objects or driver.name not in self.kernel.drivers:
            return
        if driver.name == "\\Driver\\PnpManager":
            return  # the root enumerator is part of the PnP manager, never unloaded
        if driver.driver_unload is not None:
            driver.driver_unload(driver)
        del self.kernel.drivers[driver.name]
        self.kernel.DbgPrint("PnP: unloaded %s", driver.name)

    def shutdown(self) -> None:
        """Remove every device; on a machine an interrupt halted there is nothing to run."""
        if self.kernel.scheduler.halted is not None:
            return
        for root in list(self.roots):
            self.remove(root)


def _name(status: int) -> str:
    try:
        return NTSTATUS(status).name
    except ValueError:
        return f"0x{status:08X}"
