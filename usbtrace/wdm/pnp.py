"""The PnP manager: driver database, device nodes, stack building and teardown.

What Windows does when a bus reports a new child, in order:

1. IRP_MN_QUERY_DEVICE_RELATIONS (BusRelations) to the parent's stack gives
   the child PDOs;
2. to each new PDO: QUERY_ID (device ID), QUERY_CAPABILITIES, QUERY_ID
   (instance, hardware, compatible IDs), QUERY_DEVICE_TEXT (description,
   location), QUERY_BUS_INFORMATION, QUERY_RESOURCES and
   QUERY_RESOURCE_REQUIREMENTS; the IDs pick the function driver from the
   driver database (the INF match), and the device's LowerFilters /
   UpperFilters from the registry;
3. each driver not yet loaded gets ``DriverEntry`` once;
4. AddDevice runs bottom-up: lower filters, the function driver, upper
   filters, each attaching its device object on top of the stack;
5. IRP_MN_FILTER_RESOURCE_REQUIREMENTS, then IRP_MN_START_DEVICE go to the
   top of the stack; START is handled on the way back up.  No power IRP
   follows: a started device is in D0;
6. QUERY_CAPABILITIES once more, QUERY_PNP_DEVICE_STATE, and the new stack's
   own BusRelations, recursively.

If any driver fails IRP_MN_START_DEVICE, the PnP manager answers with
IRP_MN_REMOVE_DEVICE to that stack: every driver detaches and deletes its
device object, the bus driver keeps its PDO (the device is still there), and
the device node stays in the tree with a problem code; enumeration of its
siblings goes on.

An orderly removal (CM_Query_And_Remove_SubTree) first builds the list of
devices to go: the device, its descendants and their RemovalRelations.  It
sends IRP_MN_QUERY_REMOVE_DEVICE to every one of them, descendants first,
before any IRP_MN_REMOVE_DEVICE; if one vetoes, every stack that was asked
gets IRP_MN_CANCEL_REMOVE_DEVICE and nothing is removed.  Otherwise
REMOVE_DEVICE goes to each, descendants first.

A device its bus no longer reports (surprise removal) gets
IRP_MN_SURPRISE_REMOVAL, as does each of its descendants; REMOVE_DEVICE for
that subtree waits until the last handle to any of its device objects is
closed.  A bus driver deletes a PDO only once it has reported it missing (or
when its own FDO is removed).  A driver is unloaded through ``DriverUnload``
once its last device object is gone; unloading a driver that still has an
IRP, timer or DPC pending is bug check 0xCE, as Driver Verifier makes it.

Device-node states move only along ``TRANSITIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from usbtrace.errors import UsbtraceError
from usbtrace.wdm.device import (
    DO_DEVICE_INITIALIZING,
    DeviceObject,
    DriverObject,
    IoGetAttachedDevice,
)
from usbtrace.wdm.iomgr import IoCallDriver
from usbtrace.wdm.irp import (
    IRP_MJ_PNP,
    IRP_MN_CANCEL_REMOVE_DEVICE,
    IRP_MN_DEVICE_USAGE_NOTIFICATION,
    IRP_MN_FILTER_RESOURCE_REQUIREMENTS,
    IRP_MN_QUERY_BUS_INFORMATION,
    IRP_MN_QUERY_CAPABILITIES,
    IRP_MN_QUERY_DEVICE_RELATIONS,
    IRP_MN_QUERY_DEVICE_TEXT,
    IRP_MN_QUERY_ID,
    IRP_MN_QUERY_PNP_DEVICE_STATE,
    IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_QUERY_RESOURCE_REQUIREMENTS,
    IRP_MN_QUERY_RESOURCES,
    IRP_MN_REMOVE_DEVICE,
    IRP_MN_START_DEVICE,
    IRP_MN_SURPRISE_REMOVAL,
    SL_INVOKE_ON_CANCEL,
    SL_INVOKE_ON_ERROR,
    SL_INVOKE_ON_SUCCESS,
    BusQueryCompatibleIDs,
    BusQueryDeviceID,
    BusQueryHardwareIDs,
    BusQueryInstanceID,
    BusRelations,
    DeviceCapabilities,
    DeviceTextDescription,
    DeviceTextLocationInformation,
    Irp,
    QueryCapabilitiesParameters,
    QueryDeviceRelationsParameters,
    QueryDeviceTextParameters,
    QueryIdParameters,
    RemovalRelations,
    UsageNotificationParameters,
)
from usbtrace.wdm.kernel import Kernel
from usbtrace.wdm.power import PowerManager
from usbtrace.wdm.sched import PASSIVE_LEVEL, BugCheck, KEvent
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS

_INVOKE_ANY = SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL

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


# Device-node states and the events that move them (a subset of the DNS_ states:
# DeviceNodeInitialized, DriversAdded, Started, QueryRemoved, SurpriseRemoved,
# RemovePendingCloses, Removed, Deleted).
TRANSITIONS: dict[tuple[str, str], str] = {
    ("initialized", "drivers_added"): "drivers_added",
    ("initialized", "add_failed"): "add_failed",
    ("drivers_added", "start"): "started",
    ("drivers_added", "start_failed"): "start_failed",
    ("started", "query_remove"): "query_removed",
    ("query_removed", "cancel_remove"): "started",
    ("query_removed", "remove"): "removed",
    ("started", "surprise_remove"): "surprise_removed",
    ("surprise_removed", "wait_for_closes"): "remove_pending_closes",
    ("remove_pending_closes", "remove"): "removed",
    ("start_failed", "remove"): "removed",
    ("add_failed", "remove"): "removed",
    ("initialized", "remove"): "removed",
    ("drivers_added", "remove"): "removed",
    # a removed device whose PDO its bus now reports missing: REMOVE once more
    ("removed", "remove_missing"): "deleted",
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
    problem: str | None = None  # CM_PROB_* once the node failed
    location: str = ""
    capabilities: DeviceCapabilities = field(default_factory=DeviceCapabilities)
    bus_information: Any = None
    pnp_device_state: int = 0

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

    def descendants_first(self) -> list[DeviceNode]:
        """The subtree in the order removal IRPs go: every child before its parent."""
        nodes: list[DeviceNode] = []
        for child in self.children:
            nodes.extend(child.descendants_first())
        nodes.append(self)
        return nodes

    def stack(self) -> list[DeviceObject]:
        """The device objects of this node's stack, PDO first."""
        devices = []
        device: DeviceObject | None = self.pdo
        while device is not None:
            devices.append(device)
            device = device.attached_device
        return devices


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
        # surprise-removed subtrees whose REMOVE waits for the last handle to close
        self.pending_removals: list[DeviceNode] = []
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

    def _notify(self, what: str, node: DeviceNode) -> None:
        for callback in self.on_event:
            callback(what, node)

    # ---- building ------------------------------------------------------------------

    def load_driver(self, service: str) -> DriverObject:
        """Load a driver once: create its driver object and call DriverEntry."""
        name = f"\\Driver\\{service}"
        driver = self.kernel.drivers.get(name)
        if driver is not None:
            driver.unload_pending = False  # a new device wants it: it stays
            return driver
        entry = self.database.services.get(service)
        if entry is None:
            raise PnpError(f"service '{service}' is not installed")
        driver = DriverObject(self.kernel, name)
        driver.module = getattr(entry.driver_entry, "__module__", "") or ""
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
                self.surprise_remove(child)
        known = {id(c.pdo) for c in node.children}
        for pdo in relations:
            if id(pdo) not in known:
                child = DeviceNode(pdo, node)
                node.children.append(child)
                self._start_node(child)

    def _start_node(self, node: DeviceNode) -> None:
        """A new PDO: identify it, add its drivers, start the stack, enumerate it.

        The IRPs and their order are ReactOS's (ntoskrnl/io/pnpmgr/devaction.c:
        IopCreateDeviceInstancePath, PiInitializeDevNode, PiCallDriverAddDevice,
        PiStartDeviceFinal): the identification goes to the bare PDO, before any
        filter is attached, so the tracer sees the stream from
        FILTER_RESOURCE_REQUIREMENTS on.
        """
        node.device_id = self._query_id(node, BusQueryDeviceID) or ""
        node.capabilities = self._query_capabilities(node)
        node.instance_id = self._query_id(node, BusQueryInstanceID) or ""
        node.hardware_ids = list(self._query_id(node, BusQueryHardwareIDs) or [])
        node.compatible_ids = list(self._query_id(node, BusQueryCompatibleIDs) or [])
        node.description = self._query_text(node, DeviceTextDescription)
        node.location = self._query_text(node, DeviceTextLocationInformation)
        status, info = self.send_pnp(node, IRP_MN_QUERY_BUS_INFORMATION)
        node.bus_information = info if NT_SUCCESS(status) else None
        self.send_pnp(node, IRP_MN_QUERY_RESOURCES)
        status, requirements = self.send_pnp(node, IRP_MN_QUERY_RESOURCE_REQUIREMENTS)
        requirements = requirements if NT_SUCCESS(status) else None
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
                # CM_PROB_FAILED_ADD: whatever attached already is removed again
                self.kernel.DbgPrint("PnP: AddDevice of %s failed with %s", name, _name(status))
                node.move("add_failed")
                self._fail_node(node, "CM_PROB_FAILED_ADD")
                return
            for dev in driver.device_objects:
                if id(dev) not in before and dev.flags & DO_DEVICE_INITIALIZING:
                    raise BugCheck(
                        "DRIVER_VERIFIER_DETECTED_VIOLATION",
                        f"{name} AddDevice left DO_DEVICE_INITIALIZING set on {dev!r}",
                    )
        node.move("drivers_added")
        # the function driver may adjust what the bus driver asked for (no resources
        # for a USB device: the list stays empty)
        self.send_pnp(node, IRP_MN_FILTER_RESOURCE_REQUIREMENTS, requirements)
        status, _ = self.send_pnp(node, IRP_MN_START_DEVICE)
        if not NT_SUCCESS(status):
            # IRP_MN_REMOVE_DEVICE answers a failed start (Windows 2000 and later)
            self.kernel.DbgPrint("PnP: %s: IRP_MN_START_DEVICE failed with %s",
                                 node.instance_path, _name(status))
            node.move("start_failed")
            self._fail_node(node, "CM_PROB_FAILED_START")
            return
        node.move("start")
        # no power IRP: a started device is in D0 (its power policy owner says so with
        # PoSetPowerState); the capabilities are asked again, then the device state
        node.capabilities = self._query_capabilities(node)
        status, state = self.send_pnp(node, IRP_MN_QUERY_PNP_DEVICE_STATE)
        node.pnp_device_state = state if NT_SUCCESS(status) and isinstance(state, int) else 0
        self._notify("started", node)
        self.enumerate(node)

    def _query_capabilities(self, node: DeviceNode) -> DeviceCapabilities:
        """IRP_MN_QUERY_CAPABILITIES with a DEVICE_CAPABILITIES the stack fills in."""
        capabilities = DeviceCapabilities()
        self.send_pnp(node, IRP_MN_QUERY_CAPABILITIES, QueryCapabilitiesParameters(capabilities))
        return capabilities

    def _query_text(self, node: DeviceNode, text_type: int) -> str:
        status, text = self.send_pnp(node, IRP_MN_QUERY_DEVICE_TEXT,
                                     QueryDeviceTextParameters(text_type))
        return text if NT_SUCCESS(status) and isinstance(text, str) else ""

    def device_usage_notification(self, node: DeviceNode, usage_type: int,
                                  in_path: bool) -> int:
        """Tell a stack a paging, hibernation or dump file now lives (or no longer lives)
        on it, as the PnP manager does when such a file is created or deleted."""
        status, _ = self.send_pnp(node, IRP_MN_DEVICE_USAGE_NOTIFICATION,
                                  UsageNotificationParameters(in_path, usage_type))
        return status

    def _fail_node(self, node: DeviceNode, problem: str) -> None:
        """REMOVE to a stack that could not come up; the PDO and the node stay."""
        node.problem = problem
        drivers = self._drivers_of(node)
        self.send_pnp(node, IRP_MN_REMOVE_DEVICE)
        node.move("remove")
        self._notify("failed", node)
        for driver in drivers:
            self.request_unload(driver)

    # ---- orderly removal -----------------------------------------------------------

    def _removal_list(self, node: DeviceNode) -> list[DeviceNode]:
        """The subtree and its RemovalRelations, each device after its descendants."""
        nodes = node.descendants_first()
        for member in list(nodes):
            if member.state != "started":
                continue
            status, relations = self.send_pnp(
                member, IRP_MN_QUERY_DEVICE_RELATIONS,
                QueryDeviceRelationsParameters(RemovalRelations))
            if not NT_SUCCESS(status) or not relations:
                continue
            for pdo in relations:
                related = self._node_of(pdo)
                if related is not None:
                    for extra in related.descendants_first():
                        if extra not in nodes:
                            nodes.insert(0, extra)
        return nodes

    def _node_of(self, pdo: DeviceObject) -> DeviceNode | None:
        for root in self.roots:
            for node in root.walk():
                if node.pdo is pdo:
                    return node
        return None

    def remove(self, node: DeviceNode, surprise: bool = False) -> None:
        """Remove ``node`` and its subtree; a vetoed query leaves everything in place."""
        if surprise:
            self.surprise_remove(node)
            return
        nodes = self._removal_list(node)
        queried: list[DeviceNode] = []
        for member in nodes:
            if member.state != "started":
                continue
            status, _ = self.send_pnp(member, IRP_MN_QUERY_REMOVE_DEVICE)
            queried.append(member)
            if not NT_SUCCESS(status):
                # every stack asked, the one that vetoed included, is told it stays
                for asked in reversed(queried):
                    self.send_pnp(asked, IRP_MN_CANCEL_REMOVE_DEVICE)
                    if asked.state == "query_removed":
                        asked.move("cancel_remove")
                raise PnpError(f"{member.instance_path}: removal vetoed ({_name(status)})")
            member.move("query_remove")
        # a surprise-removed subtree inside this one goes now, with its parent
        self.pending_removals = [p for p in self.pending_removals if p not in nodes]
        self._send_removes(nodes)

    def _send_removes(self, nodes: list[DeviceNode], missing: DeviceNode | None = None) -> None:
        """IRP_MN_REMOVE_DEVICE to each node (descendants first), then unload idle drivers.

        ``missing`` is the node whose PDO its bus reported gone: if an earlier
        failure removed it already, it gets its second REMOVE, the one that
        deletes the PDO.
        """
        drivers: list[DriverObject] = []
        for member in nodes:
            if member.state == "deleted":
                continue
            if member.state == "removed":
                if member is missing and not member.pdo.deleted:
                    self.send_pnp(member, IRP_MN_REMOVE_DEVICE)
                    member.move("remove_missing")
                continue
            for driver in self._drivers_of(member):
                if driver not in drivers:
                    drivers.append(driver)
            self.send_pnp(member, IRP_MN_REMOVE_DEVICE)
            member.move("remove")
            self._notify("removed", member)
        for member in nodes:
            if member.pdo.deleted:
                self._unlink(member)
        for driver in drivers:
            self.request_unload(driver)

    def _unlink(self, node: DeviceNode) -> None:
        if node.parent is not None and node in node.parent.children:
            node.parent.children.remove(node)
        if node in self.roots:
            self.roots.remove(node)

    # ---- surprise removal ----------------------------------------------------------

    def surprise_remove(self, node: DeviceNode) -> None:
        """The bus no longer reports ``node``: SURPRISE_REMOVAL to the subtree now,
        REMOVE_DEVICE once no handle is open on any of its device objects."""
        for member in node.descendants_first():
            if member.state == "started":
                self.send_pnp(member, IRP_MN_SURPRISE_REMOVAL)
                member.move("surprise_remove")
                self._notify("surprise_removed", member)
            if member.state == "surprise_removed":
                member.move("wait_for_closes")
        self.pending_removals.append(node)
        self._complete_pending_removals()

    def _has_open_handles(self, node: DeviceNode) -> bool:
        return any(device.reference_count for member in node.walk()
                   for device in member.stack())

    def _complete_pending_removals(self) -> None:
        for node in list(self.pending_removals):
            if node in self.pending_removals and not self._has_open_handles(node):
                self.pending_removals.remove(node)
                self._send_removes(node.descendants_first(), missing=node)

    def last_reference_dropped(self, device: DeviceObject) -> None:
        """The object manager's news that ``device`` has no reference left (a handle
        closed): a surprise-removed subtree may now get its REMOVE."""
        if self.pending_removals and self.kernel.scheduler.irql == PASSIVE_LEVEL:
            self._complete_pending_removals()

    # ---- driver unload -------------------------------------------------------------

    def _drivers_of(self, node: DeviceNode) -> list[DriverObject]:
        drivers = []
        for device in node.stack():
            if device.driver_object not in drivers:
                drivers.append(device.driver_object)
        return drivers

    def request_unload(self, driver: DriverObject) -> None:
        """Unload ``driver`` if it has no device left; if only delete-pending ones are
        left (a file object still references one), when the last of them goes."""
        if driver.name not in self.kernel.drivers or driver.name == "\\Driver\\PnpManager":
            return  # the root enumerator is part of the PnP manager, never unloaded
        if any(not device.deleted for device in driver.device_objects):
            return  # still serving another device
        if driver.device_objects:
            driver.unload_pending = True
            return
        self.unload_driver(driver)

    def unload_driver(self, driver: DriverObject) -> None:
        """Call DriverUnload; Driver Verifier's 0xCE if anything of the driver is pending."""
        if driver.unloaded:
            return
        pending = self._pending_operations(driver)
        if pending:
            raise BugCheck("DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
                           f"{driver.name} unloaded with {pending}")
        if driver.driver_unload is not None:
            driver.driver_unload(driver)
        driver.unloaded = True
        driver.unload_pending = False
        self.kernel.drivers.pop(driver.name, None)
        self.kernel.DbgPrint("PnP: unloaded %s", driver.name)

    def _pending_operations(self, driver: DriverObject) -> str | None:
        """What of ``driver`` could still run: a completion or cancel routine of an IRP
        in flight, a scheduled timer or event, a queued DPC."""
        module = driver.module
        if not module:
            return None
        for irp in self.kernel.irps.values():
            if irp.completed or irp.freed:
                continue
            if getattr(irp.cancel_routine, "__module__", None) == module:
                return f"the cancel routine of {irp!r} set"
            for loc in irp.stack[irp.current_location:]:
                # a routine counts where an invoke flag says it will run (a location
                # copied with IoCopyCurrentIrpStackLocationToNext keeps an earlier
                # pass's routine, with Control clear)
                if loc.control & _INVOKE_ANY and \
                        getattr(loc.completion_routine, "__module__", None) == module:
                    return f"a completion routine pending on {irp!r}"
        for routine in self.kernel.scheduler.pending_routines():
            if getattr(routine, "__module__", None) == module:
                return f"{getattr(routine, '__name__', routine)} still scheduled"
        return None

    def shutdown(self) -> None:
        """Remove every device; on a machine an interrupt halted there is nothing to run."""
        if self.kernel.scheduler.halted is not None:
            return
        self._complete_pending_removals()
        for root in list(self.roots):
            self.remove(root)


def _name(status: int) -> str:
    try:
        return NTSTATUS(status).name
    except ValueError:
        return f"0x{status:08X}"
