"""One modelled machine: its scheduler, object namespace and loaded drivers.

Everything a driver reaches through a global in C (the clock, the object
manager, the PnP manager) hangs off one ``Kernel``, so tests can run many
independent machines side by side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usbtrace.wdm.irp import reset_irp_addresses
from usbtrace.wdm.sched import Scheduler

if TYPE_CHECKING:
    from usbtrace.wdm.device import DeviceObject, DriverObject
    from usbtrace.wdm.irp import Irp
    from usbtrace.wdm.pnp import PnpManager


class Kernel:
    def __init__(self, clock: str = "virtual") -> None:
        reset_irp_addresses()  # IRP addresses (and so CBW tags) repeat from run to run
        self.scheduler = Scheduler(clock)
        self.drivers: dict[str, DriverObject] = {}
        self.namespace: dict[str, DeviceObject] = {}
        self.symbolic_links: dict[str, str] = {}
        self.pnp: PnpManager | None = None
        self.registry: dict[str, dict[str, Any]] = {}  # Services\<name>\Parameters
        self.bugchecks: list[str] = []
        self.irps: dict[int, Irp] = {}  # IRPs sent and not yet freed, by id
        self.cancel_spin_lock: Any = None  # IopCancelSpinLock, made by the I/O manager
        self.log: list[tuple[float, str]] = []  # a DbgPrint buffer, read by tests

    def register_name(self, name: str, device: DeviceObject) -> None:
        if name in self.namespace:
            raise RuntimeError(f"STATUS_OBJECT_NAME_COLLISION: {name}")
        self.namespace[name] = device

    def unregister_device(self, device: DeviceObject) -> None:
        for name in [n for n, d in self.namespace.items() if d is device]:
            del self.namespace[name]
        for link in [k for k, v in self.symbolic_links.items() if v == device.name]:
            del self.symbolic_links[link]

    def IoCreateSymbolicLink(self, link: str, target: str) -> None:  # noqa: N802
        self.symbolic_links[link] = target

    def IoDeleteSymbolicLink(self, link: str) -> None:  # noqa: N802
        self.symbolic_links.pop(link, None)

    def lookup(self, path: str) -> DeviceObject | None:
        """Resolve a Win32 or NT device path (``\\\\.\\PhysicalDrive0``) to a device."""
        if path.startswith("\\\\.\\"):
            path = "\\DosDevices\\" + path[4:]
        seen = 0
        while path in self.symbolic_links and seen < 8:
            path = self.symbolic_links[path]
            seen += 1
        return self.namespace.get(path)

    def DbgPrint(self, message: str, *args: Any) -> None:  # noqa: N802
        self.log.append((self.scheduler.now(), message % args if args else message))

    def verify_no_leaked_irps(self) -> None:
        """At shutdown: every IRP sent was freed (Driver Verifier's leak check)."""
        leaked = [irp for irp in self.irps.values() if not irp.freed]
        self.irps.clear()
        if leaked:
            from usbtrace.wdm.sched import BugCheck

            raise BugCheck("DRIVER_VERIFIER_DETECTED_VIOLATION",
                           f"{len(leaked)} IRP(s) never freed at shutdown, first {leaked[0]!r}")
