"""Power IRPs: the power manager's requests and PoCallDriver.

After a stack starts, the power manager asks it to go to D0 (QUERY_POWER then
SET_POWER); before an orderly removal it asks for D3.  Filters pass power IRPs
down untouched; the bus driver's PDO completes them.  WAIT_WAKE and
POWER_SEQUENCE travel the same way and are refused by PDOs that do not
support them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usbtrace.wdm.iomgr import IoCallDriver
from usbtrace.wdm.irp import (
    IRP_MJ_POWER,
    IRP_MN_QUERY_POWER,
    IRP_MN_SET_POWER,
    Irp,
    PowerParameters,
)
from usbtrace.wdm.sched import KEvent
from usbtrace.wdm.status import NTSTATUS

if TYPE_CHECKING:
    from usbtrace.wdm.device import DeviceObject
    from usbtrace.wdm.kernel import Kernel

PowerDeviceD0, PowerDeviceD1, PowerDeviceD2, PowerDeviceD3 = 1, 2, 3, 4
PowerSystemWorking, PowerSystemSleeping1, PowerSystemSleeping2, PowerSystemSleeping3 = 1, 2, 3, 4
PowerSystemHibernate, PowerSystemShutdown = 5, 6

PoCallDriver = IoCallDriver  # since Vista, PoCallDriver is IoCallDriver for power IRPs


def PoStartNextPowerIrp(irp: Irp) -> None:  # noqa: N802
    """A no-op since Windows Vista; kept so drivers read as drivers do."""


class PowerManager:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def request(self, top: DeviceObject, minor: int, kind: str, state: int) -> int:
        """Send one power IRP to the top of a stack and wait for it (PoRequestPowerIrp)."""
        irp = Irp(top.stack_size)
        loc = irp.IoGetNextIrpStackLocation()
        loc.major_function = IRP_MJ_POWER
        loc.minor_function = minor
        loc.parameters = PowerParameters(kind, state)
        irp.io_status.status = NTSTATUS.STATUS_NOT_SUPPORTED
        event = KEvent()
        irp.user_event = event
        if PoCallDriver(top, irp) == NTSTATUS.STATUS_PENDING:
            self.kernel.scheduler.KeWaitForSingleObject(event, "power IRP")
        return int(irp.io_status.status)

    def power_up(self, top: DeviceObject) -> None:
        self.request(top, IRP_MN_QUERY_POWER, "device", PowerDeviceD0)
        self.request(top, IRP_MN_SET_POWER, "device", PowerDeviceD0)

    def power_down(self, top: DeviceObject) -> None:
        self.request(top, IRP_MN_QUERY_POWER, "device", PowerDeviceD3)
        self.request(top, IRP_MN_SET_POWER, "device", PowerDeviceD3)
