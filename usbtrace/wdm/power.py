"""Power IRPs: the power manager's system IRPs, PoRequestPowerIrp, PoSetPowerState.

Only the power manager sends system power IRPs (S-IRPs); it sends one to the
top of every started device stack.  Going to sleep it asks first
(IRP_MN_QUERY_POWER to every stack) and then sets the state, devices
farther from the root before those closer to it; waking it sends
IRP_MN_SET_POWER(S0) without asking, parents before children (Microsoft
Learn, "Handling IRP_MN_SET_POWER for System Power States").

A system IRP is a notice, not an order: each stack's power policy owner
(the function driver) passes it down and, in its completion routine,
requests the device IRP (D-IRP) for the device state its capabilities map
the system state to, with ``PoRequestPowerIrp``; the D-IRP goes to the top
of the same stack, so both filters log it.  Every driver reports the device
state it reaches with ``PoSetPowerState``; a started device is in D0 without
any power IRP ("Powering Up a Device").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from usbtrace.wdm.device import IoGetAttachedDevice
from usbtrace.wdm.iomgr import IoCallDriver
from usbtrace.wdm.irp import (
    IRP_MJ_POWER,
    IRP_MN_QUERY_POWER,
    IRP_MN_SET_POWER,
    IRP_MN_WAIT_WAKE,
    IoStatusBlock,
    Irp,
    PowerParameters,
)
from usbtrace.wdm.sched import KEvent
from usbtrace.wdm.status import NT_SUCCESS, NTSTATUS

if TYPE_CHECKING:
    from usbtrace.wdm.device import DeviceObject
    from usbtrace.wdm.kernel import Kernel
    from usbtrace.wdm.pnp import DeviceNode

# DEVICE_POWER_STATE and SYSTEM_POWER_STATE (wdm.h)
PowerDeviceUnspecified, PowerDeviceD0, PowerDeviceD1, PowerDeviceD2, PowerDeviceD3 = 0, 1, 2, 3, 4
PowerSystemWorking, PowerSystemSleeping1, PowerSystemSleeping2, PowerSystemSleeping3 = 1, 2, 3, 4
PowerSystemHibernate, PowerSystemShutdown = 5, 6
# POWER_ACTION, what a system IRP's ShutdownType says
PowerActionNone, PowerActionSleep, PowerActionHibernate, PowerActionShutdown = 0, 2, 3, 4

PoCallDriver = IoCallDriver  # since Vista, PoCallDriver is IoCallDriver for power IRPs

PowerCompletion = Callable[["DeviceObject", int, int, Any, IoStatusBlock], None]


def PoStartNextPowerIrp(irp: Irp) -> None:  # noqa: N802
    """A no-op since Windows Vista; kept so drivers read as drivers do."""


def PoSetPowerState(device: DeviceObject, kind: str, state: int) -> int:  # noqa: N802
    """Tell the power manager ``device`` is now in ``state``; returns the previous one."""
    old = device.power_state
    if kind == "device":
        device.power_state = state
    return old


def PoRequestPowerIrp(  # noqa: N802
    pdo: DeviceObject, minor: int, state: int, completion: PowerCompletion | None,
    context: Any,
) -> tuple[int, Irp]:
    """A device power IRP for the stack ``pdo`` is the bottom of, sent to its top.

    ``completion(pdo, minor, state, context, io_status)`` runs once every driver
    has completed it.  Returns STATUS_PENDING and the IRP (what the WDK's
    optional ``Irp`` out-parameter gives, for cancelling a WAIT_WAKE).
    """
    top = IoGetAttachedDevice(pdo)
    irp = Irp(top.stack_size)
    loc = irp.IoGetNextIrpStackLocation()
    loc.major_function = IRP_MJ_POWER
    loc.minor_function = minor
    # a WAIT_WAKE names the deepest system state it may wake the machine from
    loc.parameters = PowerParameters("system" if minor == IRP_MN_WAIT_WAKE else "device", state)
    irp.io_status.status = NTSTATUS.STATUS_NOT_SUPPORTED

    def finished(done: Irp) -> None:
        if completion is not None:
            completion(pdo, minor, state, context, done.io_status)

    irp.user_callback = finished
    PoCallDriver(top, irp)
    return NTSTATUS.STATUS_PENDING, irp


class PowerManager:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.system_state = PowerSystemWorking

    def request(self, top: DeviceObject, minor: int, kind: str, state: int,
                action: int = PowerActionNone) -> int:
        """Send one power IRP to the top of a stack and wait until it is completed."""
        irp = Irp(top.stack_size)
        loc = irp.IoGetNextIrpStackLocation()
        loc.major_function = IRP_MJ_POWER
        loc.minor_function = minor
        loc.parameters = PowerParameters(kind, state, action)
        irp.io_status.status = NTSTATUS.STATUS_NOT_SUPPORTED
        event = KEvent()
        irp.user_event = event
        if PoCallDriver(top, irp) == NTSTATUS.STATUS_PENDING:
            self.kernel.scheduler.KeWaitForSingleObject(event, "power IRP")
        return int(irp.io_status.status)

    def _started(self) -> list[DeviceNode]:
        """Every started device node, parents before children."""
        pnp = self.kernel.pnp
        if pnp is None:
            return []
        return [node for root in pnp.roots for node in root.walk() if node.state == "started"]

    def set_system_power_state(self, state: int) -> bool:
        """Move the machine to system state ``state``; False when a driver refused to sleep.

        Sleep: IRP_MN_QUERY_POWER to every stack, leaves first; a refusal is
        answered with IRP_MN_SET_POWER for the current state (the reaffirming
        IRP) to those asked.  Then IRP_MN_SET_POWER, leaves first.  Wake:
        IRP_MN_SET_POWER(S0), parents first, without a query.
        """
        self.kernel.scheduler.require_irql(0, "system power transition")
        nodes = self._started()
        if state == PowerSystemWorking:
            for node in nodes:
                self.request(node.top, IRP_MN_SET_POWER, "system", state, PowerActionSleep)
            self.system_state = state
            return True
        nodes.reverse()
        action = PowerActionHibernate if state == PowerSystemHibernate else PowerActionSleep
        asked: list[DeviceNode] = []
        for node in nodes:
            asked.append(node)
            if not NT_SUCCESS(self.request(node.top, IRP_MN_QUERY_POWER, "system", state,
                                           action)):
                for reaffirm in reversed(asked):
                    self.request(reaffirm.top, IRP_MN_SET_POWER, "system", self.system_state,
                                 PowerActionNone)
                return False
        for node in nodes:
            self.request(node.top, IRP_MN_SET_POWER, "system", state, action)
        self.system_state = state
        return True
