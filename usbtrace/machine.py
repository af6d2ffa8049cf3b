"""One modelled Windows machine with a USB stick: drivers installed, PnP ready.

The driver database is what the INF files would install:

* ``usbhub`` for the root-enumerated host controller;
* ``usbstor`` for ``USB\\Class_08&SubClass_06&Prot_50``, with ``usbtrace`` as
  its LowerFilter;
* ``uaspstor`` for ``USB\\Class_08&SubClass_06&Prot_62`` (a stick that offers
  UAS), with ``usbtrace`` as its LowerFilter too;
* ``disk`` for ``GenDisk``, with ``usbtrace`` as its UpperFilter.

``start()`` lets PnP build both stacks; ``stop()`` tears them down and every
driver unloads.  The tracer's parameters (where its records go, which
positions are on) live in the registry the drivers read in DriverEntry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType

from usbtrace.devices.base import DeviceBackend
from usbtrace.drivers import disk, tracer, uaspstor, usbhub, usbstor
from usbtrace.drivers.partmgr import PartMgrDiskArrival
from usbtrace.records import Event, EventSink, RecordSink
from usbtrace.wdm.kernel import Kernel
from usbtrace.wdm.pnp import DeviceNode, DriverDatabase, PnpManager, Service
from usbtrace.wdm.root import create_root_pdo
from usbtrace.wdm.win32 import Win32

HOST_CONTROLLER_ID = "ROOT\\USB_HOST_CONTROLLER"
DISK_PATH = "\\\\.\\PhysicalDrive0"
POSITIONS = ("lower", "upper")


class Machine:
    def __init__(
        self,
        backend: DeviceBackend,
        sink: Callable[[Event], None] | RecordSink | None = None,
        positions: Iterable[str] = POSITIONS,
        clock: str = "virtual",
        upper_payload: bool = False,
        selective_suspend_ms: float | None = None,
    ) -> None:
        self.positions = tuple(positions)
        for position in self.positions:
            if position not in POSITIONS:
                raise ValueError(f"tracer position must be one of {POSITIONS}, not {position!r}")
        self.backend = backend
        self.kernel = Kernel(clock)
        self.kernel.registry["usbhub"] = {"ports": [backend]}
        # usbstor suspends an idle stick (D2) after this many ms; None: never
        self.kernel.registry["usbstor"] = {"idle_timeout_ms": selective_suspend_ms}
        if sink is not None and not isinstance(sink, RecordSink):
            sink = EventSink(sink)  # the tracer writes flat records: Events are made here
        self.kernel.registry["usbtrace"] = {
            "sink": sink.take if sink is not None else None, "positions": self.positions,
            "upper_payload": upper_payload,
        }
        database = DriverDatabase()
        database.add_service(Service("usbhub", usbhub.DriverEntry), [HOST_CONTROLLER_ID])
        database.add_service(
            Service("usbstor", usbstor.DriverEntry,
                    lower_filters=["usbtrace"] if "lower" in self.positions else []),
            ["USB\\Class_08&SubClass_06&Prot_50", "USB\\Class_08&SubClass_06"],
        )
        database.add_service(
            Service("uaspstor", uaspstor.DriverEntry,
                    lower_filters=["usbtrace"] if "lower" in self.positions else []),
            ["USB\\Class_08&SubClass_06&Prot_62"],
        )
        database.add_service(
            Service("disk", disk.DriverEntry,
                    upper_filters=["usbtrace"] if "upper" in self.positions else []),
            ["GenDisk"],
        )
        database.add_service(Service("usbtrace", tracer.DriverEntry))
        self.pnp = PnpManager(self.kernel, database)
        self.win32 = Win32(self.kernel)
        self.root: DeviceNode | None = None
        backend_hook = getattr(backend, "on_disconnect", "absent")
        if backend_hook != "absent":
            backend.on_disconnect = self._device_relations_changed  # type: ignore[attr-defined]

    @property
    def scheduler(self):  # type: ignore[no-untyped-def]
        return self.kernel.scheduler

    def start(self) -> Machine:
        """Root-enumerate the host controller; PnP builds every stack beneath it.

        When the disk has arrived, the requests Windows sends a new disk before a
        file system mounts (``partmgr.PartMgrDiskArrival``) reach it, as they
        would on Windows.
        """
        self.root = self.pnp.add_root(create_root_pdo(self.kernel, HOST_CONTROLLER_ID))
        if self.disk_present():
            PartMgrDiskArrival(self.win32, DISK_PATH)
        return self

    def _device_relations_changed(self) -> None:
        """IoInvalidateDeviceRelations: PnP re-enumerates the hub at PASSIVE_LEVEL."""
        if self.root is None:
            return
        root = self.root

        def rescan() -> None:
            old = self.kernel.scheduler.irql
            self.kernel.scheduler.irql = 0
            try:
                self.pnp.enumerate(root)
            finally:
                self.kernel.scheduler.irql = old

        self.kernel.scheduler.schedule(0, rescan)

    def sleep(self, seconds: float = 1.0) -> bool:
        """A sleep/resume cycle: S3 for ``seconds`` of machine time, then S0.

        False (and no sleep) when a driver refused the query for S3."""
        from usbtrace.wdm.power import PowerSystemSleeping3, PowerSystemWorking

        power = self.pnp.power
        if not power.set_system_power_state(PowerSystemSleeping3):
            return False
        scheduler = self.kernel.scheduler
        if scheduler.clock == "virtual":
            scheduler.schedule(int(seconds * 1e9), lambda: None)
            scheduler.run_until_idle()
        power.set_system_power_state(PowerSystemWorking)
        return True

    def disk_present(self) -> bool:
        return self.kernel.lookup(DISK_PATH) is not None

    def stop(self) -> None:
        """Close what is open, then remove every device; drivers unload.

        Then Driver Verifier's last check: no IRP may be left unfreed."""
        for handle in list(self.win32.handles):
            self.win32.CloseHandle(handle)
        self.pnp.shutdown()
        self.kernel.scheduler.run_until_idle()
        if self.kernel.scheduler.halted is None and not self.pnp.roots:
            self.kernel.verify_no_leaked_irps()

    def __enter__(self) -> Machine:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
