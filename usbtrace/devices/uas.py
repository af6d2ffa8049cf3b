"""The device side of USB Attached SCSI (T10 UAS r04, UAS-2) for the simulated stick.

Four bulk pipes, named by the Pipe Usage descriptors of the UAS alternate
setting: the host sends Command and Task Management IUs on the command pipe;
the device answers on the status pipe and moves data on the data-in and
data-out pipes.  Several commands are in flight at once, each under the tag
of its Command IU, and each runs through the same :class:`ScsiTarget` LUNs as
Bulk-Only does (a :class:`~usbtrace.devices.scsi_target.Plan` says what the
command wants to move).

Which transfer belongs to which command:

* **without streams** (USB 2, or a SuperSpeed device that offers none) the
  pipes are plain FIFOs.  The device runs one data phase per pipe at a time:
  it sends a Read Ready (Write Ready) IU naming the tag on the status pipe,
  then the data moves on the data-in (data-out) pipe, then the Sense IU
  comes; the next command's Ready IU waits until the data pipe is free;
* **with streams** (SuperSpeed bulk streams, USB 3.2 §8.12.1.4) the stream id
  *is* the tag (UAS r04 §4.3): a command's data and its Sense IU travel on the
  stream of its tag, and no Ready IUs are sent.  Every command's data phase
  may run at once.

The device answers refusals with Response IUs: an IU it cannot parse gets
INVALID INFORMATION UNIT, a Command IU whose tag is still in use gets
OVERLAPPED TAG ATTEMPTED (and the task that held the tag is aborted, as SAM-5
§5.10 has it), a LUN it does not have gets INCORRECT LOGICAL UNIT NUMBER.
Task management (UAS r04 §6.2.6): ABORT TASK, ABORT TASK SET, CLEAR TASK SET,
LOGICAL UNIT RESET and I_T NEXUS RESET end the tasks they name and answer
FUNCTION COMPLETE; QUERY TASK answers FUNCTION SUCCEEDED when the task exists
and FUNCTION COMPLETE when it does not; any other function gets TASK
MANAGEMENT FUNCTION NOT SUPPORTED.

An IN transfer the device has nothing for is NAKed (``NAK``): the host
controller keeps it pending and tries again once the device has moved on, as
xHCI does after a device's ERDY.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from usbtrace.decode.uas import (
    ABORT_TASK,
    ABORT_TASK_SET,
    CDB_LENGTH_BY_GROUP,
    CLEAR_TASK_SET,
    COMMAND_IU_LENGTH,
    I_T_NEXUS_RESET,
    IU_COMMAND,
    IU_READ_READY,
    IU_TASK_MANAGEMENT,
    IU_WRITE_READY,
    LOGICAL_UNIT_RESET,
    TASK_MANAGEMENT_IU_LENGTH,
    build_ready_iu,
    build_response_iu,
    build_sense_iu,
)
from usbtrace.devices.scsi_target import IN, OUT, Plan, ScsiTarget
from usbtrace.storage import scsi
from usbtrace.usb.urb import USBD_STATUS_PENDING, USBD_STATUS_STALL_PID, USBD_STATUS_SUCCESS

# The UAS alternate setting's endpoints (alternate setting 0, Bulk-Only, uses 0x81/0x02:
# the data pipes share them, as most UAS devices do)
UAS_COMMAND, UAS_STATUS, UAS_DATA_IN, UAS_DATA_OUT = 0x04, 0x83, 0x81, 0x02
NAK = USBD_STATUS_PENDING  # nothing to send yet: the controller keeps the transfer pending

QUERY_TASK = 0x80
# UAS r04 §6.2.5, Table 17: RESPONSE CODE
RESPONSE_COMPLETE = 0x00
RESPONSE_INVALID_IU = 0x02
RESPONSE_NOT_SUPPORTED = 0x04
RESPONSE_SUCCEEDED = 0x08
RESPONSE_INCORRECT_LUN = 0x09
RESPONSE_OVERLAPPED_TAG = 0x0A
SAM_STATUS_GOOD, SAM_STATUS_CHECK_CONDITION = 0x00, 0x02


def _cdb(cdb16: bytes, additional: bytes) -> bytes:
    """The CDB of a Command IU: as long as its operation code's group says (SPC-4
    §4.2.5.1), or all that came for a variable-length or vendor-specific one."""
    length = CDB_LENGTH_BY_GROUP.get(cdb16[0] >> 5)
    return cdb16[:length] if length is not None else cdb16 + additional


@dataclass(eq=False)
class Task:
    """One command the device holds, from its Command IU to its Sense IU."""

    tag: int
    lun: int
    plan: Plan
    data: memoryview | bytes = b""  # IN: what is still to send
    received: bytearray = field(default_factory=bytearray)  # OUT: what came so far
    ready_sent: bool = False


class UasDevice:
    """The UAS interface: IUs in, IUs and data out, several tags in flight."""

    def __init__(self, luns: list[ScsiTarget], streams: bool = False) -> None:
        self.luns = luns
        self.streams = streams
        self.tasks: dict[int, Task] = {}
        self.halted: set[int] = set()
        # what the device did lately, for tests and logs (bounded: a long session)
        self.history: deque[str] = deque(maxlen=1024)
        self.commands = 0  # Command IUs taken, counted from 1
        self.on_command: Callable[[int, int], None] | None = None  # (number, LUN)
        # IUs waiting for a status transfer: one FIFO, or one per stream (tag)
        self._status: deque[tuple[int, bytes]] = deque()
        self._waiting: dict[int, deque[Task]] = {IN: deque(), OUT: deque()}  # no streams
        self._active: dict[int, Task | None] = {IN: None, OUT: None}  # no streams

    # ---- the command pipe -----------------------------------------------------------

    def command_out(self, data: bytes | bytearray | memoryview) -> int:
        """A Command or Task Management IU from the host; returns a USBD status."""
        if UAS_COMMAND in self.halted:
            return USBD_STATUS_STALL_PID
        iu = bytes(data)
        tag = int.from_bytes(iu[2:4], "big") if len(iu) >= 4 else 0
        if iu[:1] == bytes([IU_COMMAND]) and len(iu) >= COMMAND_IU_LENGTH \
                and len(iu) >= COMMAND_IU_LENGTH + (iu[6] >> 2) * 4:
            self._command(tag, iu)
        elif iu[:1] == bytes([IU_TASK_MANAGEMENT]) and len(iu) >= TASK_MANAGEMENT_IU_LENGTH:
            self._task_management(tag, iu)
        else:
            self.history.append("invalid_iu")
            self._respond(tag, RESPONSE_INVALID_IU)
        return USBD_STATUS_SUCCESS

    def _command(self, tag: int, iu: bytes) -> None:
        lun = ((iu[8] & 0x3F) << 8) | iu[9]
        if tag in self.tasks:  # SAM-5 §5.10: overlapped: the old task ends, unanswered
            self.history.append("overlapped_tag")
            self._drop(self.tasks[tag])
            self._respond(tag, RESPONSE_OVERLAPPED_TAG)
            return
        if lun >= len(self.luns):
            self.history.append("incorrect_lun")
            self._respond(tag, RESPONSE_INCORRECT_LUN)
            return
        self.commands += 1
        if self.on_command is not None:
            self.on_command(self.commands, lun)
        plan = self.luns[lun].plan(_cdb(iu[16:32], iu[32:]))
        task = self.tasks[tag] = Task(tag, lun, plan)
        if not plan.good or not plan.length:
            self._sense(task)
        elif plan.direction == IN:
            assert plan.data is not None
            task.data = plan.data
            self._queue_data(task, IN)
        else:
            self._queue_data(task, OUT)

    def _task_management(self, tag: int, iu: bytes) -> None:
        function, managed = iu[4], int.from_bytes(iu[6:8], "big")
        lun = ((iu[8] & 0x3F) << 8) | iu[9]
        self.history.append(f"tmf_{function:#04x}")
        if tag in self.tasks:
            self._drop(self.tasks[tag])
            self._respond(tag, RESPONSE_OVERLAPPED_TAG)
            return
        if function == ABORT_TASK:
            task = self.tasks.get(managed)
            if task is not None:
                self._drop(task)
            self._respond(tag, RESPONSE_COMPLETE)
        elif function in (ABORT_TASK_SET, CLEAR_TASK_SET, LOGICAL_UNIT_RESET):
            for task in [t for t in self.tasks.values() if t.lun == lun]:
                self._drop(task)
            self._respond(tag, RESPONSE_COMPLETE)
        elif function == I_T_NEXUS_RESET:
            for task in list(self.tasks.values()):
                self._drop(task)
            self._respond(tag, RESPONSE_COMPLETE)
        elif function == QUERY_TASK:
            self._respond(tag, RESPONSE_SUCCEEDED if managed in self.tasks else RESPONSE_COMPLETE)
        else:
            self._respond(tag, RESPONSE_NOT_SUPPORTED)

    # ---- what goes to the status pipe ---------------------------------------------------

    def _respond(self, tag: int, code: int) -> None:
        self._status.append((tag, build_response_iu(tag, code)))

    def _sense(self, task: Task, sense: scsi.Sense | None = None) -> None:
        """The command is done: its Sense IU (status, and sense data on CHECK CONDITION)."""
        sense = sense or task.plan.sense
        del self.tasks[task.tag]
        if sense is None:
            iu = build_sense_iu(task.tag, SAM_STATUS_GOOD)
        else:
            self.luns[task.lun].sense = scsi.Sense(0, 0, 0)  # reported here, not kept
            iu = build_sense_iu(task.tag, SAM_STATUS_CHECK_CONDITION,
                                scsi.build_fixed_sense(sense.key, sense.asc, sense.ascq))
        self._status.append((task.tag, iu))

    def _drop(self, task: Task) -> None:
        """A task management function (or an overlapped tag) ended ``task``: its data and
        IUs not yet sent go with it."""
        self.history.append(f"aborted_{task.tag}")
        self.tasks.pop(task.tag, None)
        self._status = deque((t, iu) for t, iu in self._status if t != task.tag)
        for direction in (IN, OUT):
            if task in self._waiting[direction]:
                self._waiting[direction].remove(task)
            if self._active[direction] is task:
                self._active[direction] = None
                self._next_data(direction)

    def _queue_data(self, task: Task, direction: int) -> None:
        if self.streams:
            return  # the host's transfer on the task's stream takes it when it comes
        self._waiting[direction].append(task)
        if self._active[direction] is None:
            self._next_data(direction)

    def _next_data(self, direction: int) -> None:
        """No streams: the next waiting command gets the data pipe; its Ready IU says so."""
        waiting = self._waiting[direction]
        if self._active[direction] is not None or not waiting:
            return
        task = self._active[direction] = waiting.popleft()
        task.ready_sent = True
        iu_id = IU_READ_READY if direction == IN else IU_WRITE_READY
        self._status.append((task.tag, build_ready_iu(iu_id, task.tag)))

    def status_in(self, buffer: bytearray | memoryview, stream: int = 0) -> tuple[int, int]:
        """Fill ``buffer`` with the next IU (of ``stream``'s tag, with streams)."""
        if UAS_STATUS in self.halted:
            return USBD_STATUS_STALL_PID, 0
        for i, (tag, iu) in enumerate(self._status):
            if not self.streams or tag == stream:
                del self._status[i]
                n = min(len(buffer), len(iu))
                buffer[:n] = iu[:n]
                return USBD_STATUS_SUCCESS, n
        return NAK, 0

    # ---- the data pipes ---------------------------------------------------------------

    def _data_task(self, direction: int, stream: int) -> Task | None:
        if not self.streams:
            return self._active[direction]
        task = self.tasks.get(stream)
        if task is None or task.plan.direction != direction or not task.plan.length:
            return None
        return task

    def data_in(self, buffer: bytearray | memoryview, stream: int = 0) -> tuple[int, int]:
        """The data phase of a read: the whole of what the host's buffer takes, at once."""
        if UAS_DATA_IN in self.halted:
            return USBD_STATUS_STALL_PID, 0
        task = self._data_task(IN, stream)
        if task is None:
            return NAK, 0
        data = task.data
        n = min(len(buffer), len(data))
        buffer[:n] = data[:n]
        self._sense(task)  # before the next command's Read Ready
        self._end_data(task, IN)
        return USBD_STATUS_SUCCESS, n

    def data_out(self, data: bytes | bytearray | memoryview, stream: int = 0) -> int:
        """The data phase of a write; the command ends once the planned bytes came."""
        if UAS_DATA_OUT in self.halted:
            return USBD_STATUS_STALL_PID
        task = self._data_task(OUT, stream)
        if task is None:
            return NAK
        task.received += data
        plan = task.plan
        if len(task.received) >= plan.length:
            assert plan.sink is not None
            sense = plan.sink(memoryview(task.received)[: plan.length])
            self._sense(task, sense)
            self._end_data(task, OUT)
        return USBD_STATUS_SUCCESS

    def _end_data(self, task: Task, direction: int) -> None:
        if not self.streams and self._active[direction] is task:
            self._active[direction] = None
            self._next_data(direction)

    def clear_halt(self, endpoint: int) -> None:
        self.halted.discard(endpoint)

    def reset(self) -> None:
        """A bus reset: every task and IU is gone."""
        self.tasks.clear()
        self._status.clear()
        for direction in (IN, OUT):
            self._waiting[direction].clear()
            self._active[direction] = None
        self.halted.clear()
