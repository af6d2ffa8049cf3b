"""Stage 2 for UAS devices: USB Attached SCSI information units -> SCSI commands.

UAS (T10 UAS r04, UAS-2) moves SCSI over four bulk pipes that the Pipe Usage
descriptors of the UAS alternate setting name: the host sends Command and
Task Management IUs on the command pipe; the device answers on the status
pipe with a Sense IU (a command's status and sense data), a Response IU (a
task management function's outcome, or a refusal of an IU), and, without
streams, with Read Ready and Write Ready IUs that say which tag the next
data-in or data-out transfer belongs to.  Every IU starts with its IU ID and
carries a 16-bit tag.

Which command a data transfer belongs to:

* after a Read Ready / Write Ready IU (USB 2, no streams): the tag it named;
* with streams (USB 3): the stream id *is* the tag.  A live record has it
  (``Event.stream_id``), but no capture format records stream ids.  Without
  it, if one command is open, it is that one.  With several
  in flight, the transfer goes to the command whose Command IU was submitted
  first after it (hosts queue a command's data and status transfers before
  its Command IU, so the device can answer at once: Linux's uas driver and
  macOS do), else to the last one submitted before it.  Such matches are
  counted (``matched_by_order``) and the session notes say so.

What each command ends as (``ScsiCommand.status``): the SCSI status of its
Sense IU (``good``, ``check_condition`` with the sense key, ASC and ASCQ of
its sense data, ``busy``, ...); the response of a Response IU that refused
it (``invalid_iu``, ``overlapped_tag``, ...); ``aborted`` when a task
management function that succeeded ended it; ``invalid`` when the IU that
should have said could not be parsed; ``missing`` when nothing ever came.

Task management functions are rows of their own: opcode -1, name
``tmf_<function>``, the Task Management IU as ``cdb``, and the response code
of their Response IU as status (``tmf_complete``, ``tmf_succeeded``,
``tmf_failed``, ...).  They have a tag, a LUN, a time and an outcome, like a
command, and an examiner reads them in sequence with the commands they ended.

UAS has no residue field: ``residue`` is the host's view, as the host driver
computes it, the length it asked for on the data pipe less what came.  Where
the capture does not say what the host asked for (USBPcap records no length
for an IN submission), what came counts as asked for.

Sans-I/O: ``feed(exchange, pipes)`` returns the commands it finished.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from construct import (
    BitsInteger,
    BitStruct,
    Byte,
    Bytes,
    Const,
    Flag,
    Int16ub,
    Struct,
    this,
)

from usbtrace.decode.bot import ScsiCommand
from usbtrace.decode.pairing import Exchange
from usbtrace.records import CONTROL
from usbtrace.storage import scsi
from usbtrace.storage.scsi import CdbInfo
from usbtrace.usb import descriptors as d
from usbtrace.usb.urb import USBD_STATUS_STALL_PID

UAS_PROTOCOL = 0x62  # bInterfaceProtocol of the UAS alternate setting

# IU IDs (UAS r04 §6.2, "Information units")
IU_COMMAND = 0x01
IU_SENSE = 0x03
IU_RESPONSE = 0x04
IU_TASK_MANAGEMENT = 0x05
IU_READ_READY = 0x06
IU_WRITE_READY = 0x07
IU_NAMES = {1: "command", 3: "sense", 4: "response", 5: "task_management",
            6: "read_ready", 7: "write_ready"}

# UAS r04 §6.2, "Command IU": 32 bytes, then ADDITIONAL CDB LENGTH dwords
CommandIU = Struct(
    "IU_ID" / Const(IU_COMMAND, Byte),
    "Reserved1" / Byte,
    "TAG" / Int16ub,
    "prio_attr" / BitStruct(
        "Reserved" / Flag,
        "COMMAND_PRIORITY" / BitsInteger(4),
        "TASK_ATTRIBUTE" / BitsInteger(3),
    ),
    "Reserved5" / Byte,
    "add_cdb" / BitStruct(
        "ADDITIONAL_CDB_LENGTH" / BitsInteger(6),  # in dwords
        "Reserved" / BitsInteger(2),
    ),
    "Reserved7" / Byte,
    "LOGICAL_UNIT_NUMBER" / Bytes(8),
    "CDB" / Bytes(16),
    "ADDITIONAL_CDB_BYTES" / Bytes(this.add_cdb.ADDITIONAL_CDB_LENGTH * 4),
)
COMMAND_IU_LENGTH = 32

# UAS r04 §6.2, "Sense IU": 16 bytes, then LENGTH bytes of sense data
SenseIUHeader = Struct(
    "IU_ID" / Const(IU_SENSE, Byte),
    "Reserved1" / Byte,
    "TAG" / Int16ub,
    "STATUS_QUALIFIER" / Int16ub,
    "STATUS" / Byte,
    "Reserved7" / Bytes(7),
    "LENGTH" / Int16ub,
)
SenseIU = Struct(*SenseIUHeader.subcons, "SENSE_DATA" / Bytes(this.LENGTH))
SENSE_IU_HEADER = 16

# UAS r04 §6.2, "Response IU": 8 bytes
ResponseIU = Struct(
    "IU_ID" / Const(IU_RESPONSE, Byte),
    "Reserved1" / Byte,
    "TAG" / Int16ub,
    "ADDITIONAL_RESPONSE_INFORMATION" / Bytes(3),
    "RESPONSE_CODE" / Byte,
)
RESPONSE_IU_LENGTH = 8

# UAS r04 §6.2, "Task Management IU": 16 bytes
TaskManagementIU = Struct(
    "IU_ID" / Const(IU_TASK_MANAGEMENT, Byte),
    "Reserved1" / Byte,
    "TAG" / Int16ub,
    "TASK_MANAGEMENT_FUNCTION" / Byte,
    "Reserved5" / Byte,
    "TAG_OF_TASK_TO_BE_MANAGED" / Int16ub,
    "LOGICAL_UNIT_NUMBER" / Bytes(8),
)
TASK_MANAGEMENT_IU_LENGTH = 16

# UAS r04 §6.2, "Read Ready IU" and "Write Ready IU": 4 bytes each
ReadReadyIU = Struct("IU_ID" / Const(IU_READ_READY, Byte), "Reserved1" / Byte,
                     "TAG" / Int16ub)
WriteReadyIU = Struct("IU_ID" / Const(IU_WRITE_READY, Byte), "Reserved1" / Byte,
                      "TAG" / Int16ub)
READY_IU_LENGTH = 4

# UAS r04 §5.3, "Pipe Usage descriptor": follows each endpoint of the UAS interface
PIPE_USAGE = 0x24
PipeUsageDescriptor = Struct(
    "bLength" / Const(4, Byte),
    "bDescriptorType" / Const(PIPE_USAGE, Byte),
    "bPipeID" / Byte,
    "Reserved" / Byte,
)
PIPE_COMMAND, PIPE_STATUS, PIPE_DATA_IN, PIPE_DATA_OUT = 1, 2, 3, 4
PIPE_NAMES = {1: "command", 2: "status", 3: "data_in", 4: "data_out"}

# SAM-5 status codes, as the Sense IU's STATUS carries them (names fit the column)
STATUS_NAMES = {0x00: "good", 0x02: "check_condition", 0x04: "condition_met",
                0x08: "busy", 0x18: "resv_conflict", 0x28: "task_set_full",
                0x30: "aca_active", 0x40: "task_aborted"}

# UAS r04 §6.2, "Response IU": RESPONSE CODE
RESPONSE_COMPLETE = 0x00
RESPONSE_SUCCEEDED = 0x08
RESPONSE_NAMES = {0x00: "tmf_complete", 0x02: "invalid_iu", 0x04: "tmf_unsupported",
                  0x05: "tmf_failed", 0x08: "tmf_succeeded", 0x09: "incorrect_lun",
                  0x0A: "overlapped_tag"}

# UAS r04 §6.2, "Task Management IU": TASK MANAGEMENT FUNCTION
ABORT_TASK, ABORT_TASK_SET, CLEAR_TASK_SET, LOGICAL_UNIT_RESET = 0x01, 0x02, 0x04, 0x08
I_T_NEXUS_RESET, CLEAR_ACA = 0x10, 0x40
TMF_NAMES = {0x01: "abort_task", 0x02: "abort_task_set", 0x04: "clear_task_set",
             0x08: "logical_unit_reset", 0x10: "i_t_nexus_reset", 0x40: "clear_aca",
             0x80: "query_task", 0x81: "query_task_set", 0x82: "query_async_event"}
TMF_OPCODE = -1  # scsi_commands.opcode of a task management row (it has no CDB)

# CDB length by the group code of the operation code (SPC-4 §4.2.5.1); group 3
# is variable length (its length is in the CDB), groups 6 and 7 vendor specific
CDB_LENGTH_BY_GROUP = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}

RECENT = 256  # Command IUs remembered per device for matching data by order
# Commands in flight per device, at most: far above any device's queue depth, and
# it bounds every scan.  Past it the oldest open command ends as missing.
MAX_OPEN = 1024


@dataclass(frozen=True, slots=True)
class UasPipes:
    """The endpoints (with the direction bit) of the four pipes."""

    command: int
    status: int
    data_in: int
    data_out: int

    def role(self, endpoint: int | None) -> int | None:
        return {self.command: PIPE_COMMAND, self.status: PIPE_STATUS,
                self.data_in: PIPE_DATA_IN, self.data_out: PIPE_DATA_OUT}.get(endpoint or -1)

    @classmethod
    def from_usage(cls, usage: dict[int, int]) -> UasPipes | None:
        """From pipe id -> endpoint; None unless all four are there, each way round right."""
        try:
            pipes = cls(usage[PIPE_COMMAND], usage[PIPE_STATUS], usage[PIPE_DATA_IN],
                        usage[PIPE_DATA_OUT])
        except KeyError:
            return None
        if pipes.command & 0x80 or pipes.data_out & 0x80 or not pipes.status & 0x80 \
                or not pipes.data_in & 0x80:
            return None
        return pipes


def pipe_usage(blob: bytes) -> dict[tuple[int, int], tuple[int, dict[int, int]]]:
    """Per (interface, alternate setting): its protocol and pipe id -> endpoint.

    A Pipe Usage descriptor names the endpoint descriptor before it (a
    SuperSpeed companion may sit between them).
    """
    out: dict[tuple[int, int], tuple[int, dict[int, int]]] = {}
    current: tuple[int, int] | None = None
    endpoint: int | None = None
    for desc in d.parse_descriptors(blob):
        kind = desc.bDescriptorType
        if getattr(desc, "malformed", False):  # too short for its type: no fields to read
            if kind in (d.INTERFACE, d.ENDPOINT):
                endpoint = None
            continue
        if kind == d.INTERFACE:
            current = (desc.bInterfaceNumber, desc.bAlternateSetting)
            out[current] = (desc.bInterfaceProtocol if desc.bInterfaceClass == 0x08 else -1,
                            {})
            endpoint = None
        elif kind == d.ENDPOINT and current is not None:
            endpoint = desc.bEndpointAddress
        elif kind == PIPE_USAGE and current is not None and endpoint is not None \
                and desc.bLength >= 3:
            out[current][1][desc.data[0]] = endpoint
    return out


def max_streams(blob: bytes, number: int, alternate: int, endpoint: int) -> int:
    """The MaxStreams exponent (0: no streams) the SuperSpeed Endpoint Companion of
    ``endpoint`` in interface ``number``, setting ``alternate``, gives (USB 3.2
    §9.6.7: bmAttributes bits 4..0 of a bulk endpoint's companion)."""
    for found, exponent in d.endpoint_companions(blob, number, alternate):
        if found == endpoint and exponent is not None:
            return exponent
    return 0


# The three IUs every command of the data path builds (the host's Command IU, the
# device's Read/Write Ready and Sense IUs), packed in one call each: ``construct``'s
# build of them cost about 50 microseconds apiece, over two fifths of a UAS read's
# instructions through the modelled stack.  The layouts above say what the bytes are;
# the tests hold each packing equal to their build, which still makes what these do not
# take (a CDB over 16 bytes, a field out of its range).
_COMMAND_IU = struct.Struct(">BBHBBBB8s16s")
_SENSE_IU_HEADER = struct.Struct(">BBHHB7xH")
_READY_IU = struct.Struct(">BBH")
# ... and read back so, from what the decoder has checked is long enough: a Command IU's
# TAG, LOGICAL UNIT NUMBER and CDB; a Sense IU's STATUS and LENGTH
_command_iu_fields = struct.Struct(">2xH4x8s16s").unpack_from
_sense_iu_fields = struct.Struct(">6xB7xH").unpack_from


def build_command_iu(tag: int, cdb: bytes, lun: int = 0, priority: int = 0,
                     task_attribute: int = 0) -> bytes:
    """A Command IU; a CDB longer than 16 bytes goes on as ADDITIONAL CDB BYTES."""
    if len(cdb) <= 16 and 0 <= tag <= 0xFFFF and 0 <= priority <= 15 and \
            0 <= task_attribute <= 7 and 0 <= lun <= 0x3FFF:
        return _COMMAND_IU.pack(IU_COMMAND, 0, tag, priority << 3 | task_attribute, 0, 0, 0,
                                build_lun(lun), cdb)  # ``s`` pads the CDB with zeros
    extra = cdb[16:]
    extra += bytes(-len(extra) % 4)
    return CommandIU.build({
        "Reserved1": 0, "TAG": tag,
        "prio_attr": {"Reserved": False, "COMMAND_PRIORITY": priority,
                      "TASK_ATTRIBUTE": task_attribute},
        "Reserved5": 0, "add_cdb": {"ADDITIONAL_CDB_LENGTH": len(extra) // 4, "Reserved": 0},
        "Reserved7": 0, "LOGICAL_UNIT_NUMBER": build_lun(lun),
        "CDB": cdb[:16].ljust(16, b"\0"), "ADDITIONAL_CDB_BYTES": extra})


def build_sense_iu(tag: int, status: int, sense: bytes = b"", qualifier: int = 0) -> bytes:
    if 0 <= tag <= 0xFFFF and 0 <= qualifier <= 0xFFFF and 0 <= status <= 0xFF and \
            len(sense) <= 0xFFFF:
        return _SENSE_IU_HEADER.pack(IU_SENSE, 0, tag, qualifier, status, len(sense)) + sense
    return SenseIU.build({"Reserved1": 0, "TAG": tag, "STATUS_QUALIFIER": qualifier,
                          "STATUS": status, "Reserved7": bytes(7), "LENGTH": len(sense),
                          "SENSE_DATA": sense})


def build_response_iu(tag: int, code: int, info: bytes = bytes(3)) -> bytes:
    return ResponseIU.build({"Reserved1": 0, "TAG": tag,
                             "ADDITIONAL_RESPONSE_INFORMATION": info, "RESPONSE_CODE": code})


def build_task_management_iu(tag: int, function: int, managed_tag: int = 0,
                             lun: int = 0) -> bytes:
    return TaskManagementIU.build({"Reserved1": 0, "TAG": tag,
                                   "TASK_MANAGEMENT_FUNCTION": function, "Reserved5": 0,
                                   "TAG_OF_TASK_TO_BE_MANAGED": managed_tag,
                                   "LOGICAL_UNIT_NUMBER": build_lun(lun)})


def build_ready_iu(iu_id: int, tag: int) -> bytes:
    """A Read Ready (``IU_READ_READY``) or Write Ready (``IU_WRITE_READY``) IU."""
    if 0 <= tag <= 0xFFFF:
        return _READY_IU.pack(IU_READ_READY if iu_id == IU_READ_READY else IU_WRITE_READY,
                              0, tag)
    layout = ReadReadyIU if iu_id == IU_READ_READY else WriteReadyIU
    return layout.build({"Reserved1": 0, "TAG": tag})


def build_lun(lun: int) -> bytes:
    """An 8-byte single-level LUN: peripheral addressing below 256, flat space above."""
    if lun < 256:
        return bytes([0, lun]) + bytes(6)
    return bytes([0x40 | (lun >> 8) & 0x3F, lun & 0xFF]) + bytes(6)


def _lun(raw: bytes) -> int:
    """The LUN of an 8-byte SAM LUN field (single level: address method in bits 7..6)."""
    return ((raw[0] & 0x3F) << 8) | raw[1]


def _cdb(cdb16: bytes, additional: bytes) -> bytes:
    group = cdb16[0] >> 5
    length = CDB_LENGTH_BY_GROUP.get(group)
    if length is None:  # variable length or vendor specific: all that was sent
        return cdb16 + additional
    return cdb16[:length]


def _tag(data: bytes) -> int | None:
    return int.from_bytes(data[2:4], "big") if len(data) >= 4 else None


@dataclass(slots=True)
class _Device:
    open: dict[int, ScsiCommand] = field(default_factory=dict)  # tag -> command or TMF
    recent: deque[ScsiCommand] = field(default_factory=lambda: deque(maxlen=RECENT))
    read_ready: int | None = None  # tag of the last Read Ready IU
    write_ready: int | None = None
    tmf: dict[int, tuple[int, int]] = field(default_factory=dict)  # tag -> function, managed


class UasDecoder:
    """IUs of UAS devices -> :class:`ScsiCommand` objects (see the module docstring)."""

    def __init__(self, next_seq: Callable[[], int] | None = None) -> None:
        self._devices: dict[tuple[int | None, int | None], _Device] = {}
        self._seq = 0
        self._next_seq = next_seq or self._own_seq
        self.orphans = 0  # IUs or data that belonged to no command
        self.invalid = 0  # IUs that could not be parsed
        self.matched_by_order = 0  # data transfers matched among several open commands

    def _own_seq(self) -> int:
        self._seq += 1
        return self._seq

    def feed(self, x: Exchange, pipes: UasPipes) -> list[ScsiCommand]:
        first = x.first
        role = pipes.role(first.endpoint)
        if role is None or first.transfer_type == CONTROL:
            return []  # not a UAS pipe, or a request about one (ABORT_PIPE, OPEN_STATIC_STREAMS)
        key = (first.bus, first.device)
        state = self._devices.get(key)
        if state is None:
            state = self._devices[key] = _Device()
        if role == PIPE_COMMAND:
            return self._command_pipe(state, x)
        if role == PIPE_STATUS:
            return self._status_pipe(state, x)
        self._data(state, x, role == PIPE_DATA_IN)
        return []

    # -- command pipe ---------------------------------------------------------------

    def _command_pipe(self, state: _Device, x: Exchange) -> list[ScsiCommand]:
        data = x.data
        if not data:
            return []  # a transfer whose bytes were not captured (or never completed)
        iu_id = data[0]
        out: list[ScsiCommand] = []
        cmd = None
        if iu_id == IU_COMMAND:
            cmd = self._parse_command(x, data)
        elif iu_id == IU_TASK_MANAGEMENT:
            cmd = self._parse_tmf(state, x, data)
        if cmd is None:
            self.invalid += 1
            cmd = self._new(x, _tag(data) or 0, 0, bytes(data[:COMMAND_IU_LENGTH]),
                            CdbInfo(TMF_OPCODE, f"invalid_{IU_NAMES.get(iu_id, 'iu')}"))
            cmd.status = "invalid"
            cmd.completed_at = x.completed_at
            out.append(cmd)
            return out
        old = state.open.pop(cmd.tag, None)
        if old is not None:  # the tag was still open: its status will never come
            state.tmf.pop(old.tag, None)
            out.append(self._finish(state, old))
        if len(state.open) >= MAX_OPEN:
            oldest = state.open.pop(next(iter(state.open)))
            state.tmf.pop(oldest.tag, None)
            out.append(self._finish(state, oldest))
        state.open[cmd.tag] = cmd
        if cmd.info.opcode != TMF_OPCODE:
            state.recent.append(cmd)
        return out

    def _parse_command(self, x: Exchange, data: bytes) -> ScsiCommand | None:
        if len(data) < COMMAND_IU_LENGTH:
            return None
        extra = (data[6] >> 2) * 4
        if len(data) < COMMAND_IU_LENGTH + extra:
            return None
        # ``CommandIU.parse``, unpacked in one call (its IU ID is checked by the caller)
        tag, lun, cdb16 = _command_iu_fields(data)
        cdb = _cdb(cdb16, data[COMMAND_IU_LENGTH:COMMAND_IU_LENGTH + extra])
        return self._new(x, tag, _lun(lun), cdb, scsi.decode_cdb(cdb))

    def _parse_tmf(self, state: _Device, x: Exchange, data: bytes) -> ScsiCommand | None:
        if len(data) < TASK_MANAGEMENT_IU_LENGTH:
            return None
        iu = TaskManagementIU.parse(data[:TASK_MANAGEMENT_IU_LENGTH])
        function = iu.TASK_MANAGEMENT_FUNCTION
        name = TMF_NAMES.get(function, f"0x{function:02x}")
        cmd = self._new(x, iu.TAG, _lun(iu.LOGICAL_UNIT_NUMBER),
                        bytes(data[:TASK_MANAGEMENT_IU_LENGTH]),
                        CdbInfo(TMF_OPCODE, f"tmf_{name}"))
        state.tmf[iu.TAG] = (function, iu.TAG_OF_TASK_TO_BE_MANAGED)
        return cmd

    def _new(self, x: Exchange, tag: int, lun: int, cdb: bytes, info: CdbInfo) -> ScsiCommand:
        return ScsiCommand(
            self._next_seq(), x.first.bus, x.first.device, lun, tag, cdb, info, "none", 0,
            x.submitted_at if x.submitted_at is not None else x.completed_at, x.irp_id, x.seq)

    # -- status pipe ----------------------------------------------------------------

    def _status_pipe(self, state: _Device, x: Exchange) -> list[ScsiCommand]:
        data = x.data
        if not data:
            return []
        iu_id = data[0]
        tag = _tag(data)
        cmd = state.open.get(tag) if tag is not None else None
        if iu_id in (IU_READ_READY, IU_WRITE_READY) and len(data) >= READY_IU_LENGTH:
            if cmd is None:
                self.orphans += 1
            elif iu_id == IU_READ_READY:
                state.read_ready = tag
            else:
                state.write_ready = tag
            return []
        if iu_id == IU_SENSE and len(data) >= SENSE_IU_HEADER:
            if cmd is None or cmd.info.opcode == TMF_OPCODE:
                self.orphans += 1
                return []
            # ``SenseIUHeader.parse``, unpacked in one call (the IU ID is checked above)
            status, length = _sense_iu_fields(data)
            # the sense data is what was captured of LENGTH, never more
            sense = data[SENSE_IU_HEADER : SENSE_IU_HEADER + length]
            cmd.status = STATUS_NAMES.get(status, f"status_0x{status:02x}")
            if sense:
                cmd.sense = scsi.parse_sense(sense)
            return self._complete(state, cmd, x)
        if iu_id == IU_RESPONSE and len(data) >= RESPONSE_IU_LENGTH:
            if cmd is None:
                self.orphans += 1
                return []
            code = ResponseIU.parse(data[:RESPONSE_IU_LENGTH]).RESPONSE_CODE
            cmd.status = RESPONSE_NAMES.get(code, f"response_0x{code:02x}")
            out = self._complete(state, cmd, x)
            tmf = state.tmf.pop(cmd.tag, None)
            if tmf is not None and code in (RESPONSE_COMPLETE, RESPONSE_SUCCEEDED):
                out += self._apply_tmf(state, cmd, *tmf)
            return out
        # an IU that is not one, or cut short
        self.invalid += 1
        if cmd is None:
            return []
        cmd.status = "invalid"
        return self._complete(state, cmd, x)

    def _complete(self, state: _Device, cmd: ScsiCommand, x: Exchange) -> list[ScsiCommand]:
        cmd.completed_at = x.completed_at
        cmd.csw_seq = x.seq
        del state.open[cmd.tag]
        return [self._finish(state, cmd)]

    def _apply_tmf(self, state: _Device, tmf: ScsiCommand, function: int,
                   managed: int) -> list[ScsiCommand]:
        """The commands a task management function that succeeded ended."""
        if function == ABORT_TASK:
            ended = [c for c in state.open.values() if c.tag == managed]
        elif function in (ABORT_TASK_SET, CLEAR_TASK_SET, LOGICAL_UNIT_RESET):
            ended = [c for c in state.open.values() if c.lun == tmf.lun]
        elif function == I_T_NEXUS_RESET:
            ended = list(state.open.values())
        else:
            return []
        out = []
        for cmd in sorted(ended, key=lambda c: c.seq):
            del state.open[cmd.tag]
            state.tmf.pop(cmd.tag, None)
            cmd.status = "aborted"
            cmd.completed_at = tmf.completed_at
            out.append(self._finish(state, cmd))
        return out

    def _finish(self, state: _Device, cmd: ScsiCommand) -> ScsiCommand:
        if state.read_ready == cmd.tag:
            state.read_ready = None
        if state.write_ready == cmd.tag:
            state.write_ready = None
        if cmd.status not in ("missing", "aborted", "invalid") \
                and cmd.info.opcode != TMF_OPCODE:  # the device said it was done
            cmd.residue = cmd.expected_length - cmd.data_length
        if cmd.info.opcode == scsi.REQUEST_SENSE and cmd.status == "good" and cmd.data:
            cmd.sense = scsi.parse_sense(cmd.data)
        return cmd

    # -- data pipes -----------------------------------------------------------------

    def _data(self, state: _Device, x: Exchange, direction_in: bool) -> None:
        stream = x.first.stream_id
        if stream:  # a live record knows its stream, and the stream id is the tag
            cmd = state.open.get(stream)
            if cmd is None:
                if x.data or x.actual_length:
                    self.orphans += 1
                return
        else:
            ready = state.read_ready if direction_in else state.write_ready
            cmd = state.open.get(ready) if ready is not None else None
            if cmd is None:
                cmd = self._by_order(state, x)
        if cmd is None or cmd.info.opcode == TMF_OPCODE:
            if x.data or x.actual_length:
                self.orphans += 1
            return
        cmd.data_direction = "in" if direction_in else "out"
        data = x.data
        actual = x.actual_length
        if x.requested_length is not None:
            cmd.expected_length += x.requested_length
        else:  # USBPcap records no length for an IN submission: at least what came
            cmd.expected_length += actual if actual is not None else len(data)
        if data:
            cmd.data_parts.append(data)
        cmd.data_length += actual if actual is not None else len(data)
        cmd.data_truncated |= x.truncated
        cmd.data_stalled |= (x.complete is not None
                             and x.complete.urb_status == USBD_STATUS_STALL_PID)

    def _by_order(self, state: _Device, x: Exchange) -> ScsiCommand | None:
        """The command a data transfer was queued for, by submission order (streams):
        the first Command IU submitted after it, else the last open one before it."""
        owner: ScsiCommand | None
        after = [c for c in state.recent if c.cbw_seq > x.seq]
        if after:
            owner = min(after, key=lambda c: c.cbw_seq)
            if state.open.get(owner.tag) is not owner:
                return None  # its command has already ended: late data
        else:
            owner = next((c for c in reversed(state.recent) if state.open.get(c.tag) is c),
                         None)
            if owner is None:
                return None
        if sum(1 for c in state.open.values() if c.info.opcode != TMF_OPCODE) > 1:
            self.matched_by_order += 1
        return owner

    def notes(self, undecoded: list[tuple[int, int]]) -> list[str]:
        """What the stage could not know; ``undecoded``: devices that offer UAS but were
        never seen to select it."""
        notes = []
        if self.orphans:
            notes.append(f"{self.orphans} UAS transfers belonged to no open command (the "
                         "capture started or ended mid-command, or data came after status)")
        if self.invalid:
            notes.append(f"{self.invalid} UAS information units could not be parsed "
                         "(their commands have status 'invalid')")
        if self.matched_by_order:
            notes.append(f"{self.matched_by_order} UAS data transfers were matched to one of "
                         "several commands in flight by submission order: captures do not "
                         "record stream ids")
        for bus, device in undecoded:
            if (bus, device) not in self._devices:
                notes.append(f"device {bus}.{device} speaks UAS (USB Attached SCSI), but no "
                             "selection of its UAS setting (with its four pipes) was seen, so "
                             "its traffic is not decoded as UAS")
        return notes

    def flush(self) -> list[ScsiCommand]:
        """Commands still open: their Sense IU never came."""
        out: list[ScsiCommand] = []
        for state in self._devices.values():
            for cmd in state.open.values():
                out.append(self._finish(state, cmd))
            state.open.clear()
            state.tmf.clear()
            state.recent.clear()
        return sorted(out, key=lambda c: c.seq)
