"""Host replay of a UAS recording: the recorded host's IUs, sent to a target that
speaks UAS, answers compared.

The target is configured and its UAS alternate setting selected, as the host did.
Then each recorded command goes out as a Command IU under its recorded tag (a
recorded task management function as its Task Management IU), one at a time:
without streams the target's Read Ready / Write Ready IU opens the data phase;
with streams (a SuperSpeed target whose companions offer them) the data and the
status move on the tag's stream.  The IN data, the Sense IU's status and sense,
or the Response IU's code are compared with the recording.
"""

from __future__ import annotations

from collections.abc import Callable

from construct import ConstructError

from usbtrace.decode.bot import ScsiCommand
from usbtrace.decode.uas import (
    IU_READ_READY,
    IU_RESPONSE,
    IU_SENSE,
    IU_WRITE_READY,
    PIPE_COMMAND,
    PIPE_DATA_IN,
    PIPE_DATA_OUT,
    PIPE_STATUS,
    RESPONSE_NAMES,
    SENSE_IU_HEADER,
    STATUS_NAMES,
    TMF_OPCODE,
    UAS_PROTOCOL,
    build_command_iu,
    max_streams,
    pipe_usage,
)
from usbtrace.devices.base import DeviceBackend, read_configuration
from usbtrace.errors import DeviceError
from usbtrace.replay.recording import Recording
from usbtrace.replay.report import Divergence, Report, describe, first_difference
from usbtrace.replay.timing import Clock, Schedule
from usbtrace.storage import scsi
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb.urb import USBD_STATUS_PENDING, USBD_STATUS_SUCCESS

MAX_UNRECORDED = 0xFFFF * 512  # as the Bulk-Only host replay: never a buffer from a length
STATUS_BUFFER = SENSE_IU_HEADER + 96
MAX_IUS = 4  # status IUs one command may bring (Ready, then Sense), with room to spare


def _configure(target: DeviceBackend) -> tuple[dict[int, int], bool]:
    """SET_CONFIGURATION, SET_INTERFACE to the UAS setting; its pipes and whether the
    target offers streams (and can use them: SuperSpeed)."""
    try:
        config = read_configuration(target)
        tree = d.configuration_tree(config)
        settings = pipe_usage(config)
    except ConstructError as e:
        raise DeviceError(f"the target's configuration descriptor is malformed: {e}") from None
    if "configuration" not in tree:
        raise DeviceError("the target has no configuration descriptor")
    uas = [(key, pipes) for key, (protocol, pipes) in settings.items()
           if protocol == UAS_PROTOCOL and len(pipes) == 4]
    if not uas:
        raise DeviceError("the recording speaks UAS, and the target has no UAS interface")
    (number, alternate), pipes = uas[0]
    value = tree["configuration"].bConfigurationValue
    target.control(std.build_setup(0x00, std.SET_CONFIGURATION, value, 0, 0), bytearray())
    result = target.control(std.build_setup(0x01, std.SET_INTERFACE, alternate, number, 0),
                            bytearray())
    if result.status != USBD_STATUS_SUCCESS:
        raise DeviceError("the target refused its UAS alternate setting")
    streams = max_streams(config, number, alternate, pipes[PIPE_STATUS]) > 0 \
        and target.speed.name == "super"
    return pipes, streams


def replay_host_uas(recording: Recording, target: DeviceBackend, report: Report,
                    speed: float | None = None, max_gap: float | None = None,
                    clock: Clock | None = None) -> None:
    pipes, streams = _configure(target)
    schedule = Schedule(speed, max_gap, clock) if speed else None
    if schedule is not None:
        report.timing = schedule.timing
    for index, cmd in enumerate(recording.commands(), 1):
        if schedule is not None:
            schedule.wait(cmd.submitted_at, index)
            while schedule.notes:
                report.note(schedule.notes.pop(0))
        _replay_one(target, pipes, streams, cmd, index, report)
        report.replayed += 1


MAX_CDB = 16 + 63 * 4  # the CDB field and ADDITIONAL CDB BYTES (a 6-bit count of dwords)


def _replay_one(target: DeviceBackend, pipes: dict[int, int], streams: bool, cmd: ScsiCommand,
                index: int, report: Report) -> None:
    def diverge(field: str, expected: object, actual: object, note: str = "",
                offset: int | None = None) -> None:
        report.add(Divergence(index, describe(cmd), field, expected, actual, note, offset))

    if cmd.data_direction == "out" and cmd.data_truncated:
        diverge("recording", "the OUT data", f"{len(cmd.data)} of {cmd.data_length} bytes",
                "the capture cut this command's data short: it cannot be sent again")
        return
    tmf = cmd.info.opcode == TMF_OPCODE
    if not tmf and not (0 <= cmd.tag <= 0xFFFF and len(cmd.cdb) <= MAX_CDB):
        diverge("recording", f"a Command IU's tag (16 bits) and CDB (at most {MAX_CDB} bytes)",
                f"tag 0x{cmd.tag:x}, a CDB of {len(cmd.cdb)} bytes",
                "not a UAS command (a Bulk-Only CBW's tag has 32 bits): it cannot be sent "
                "as a Command IU")
        return
    iu = bytes(cmd.cdb) if tmf else build_command_iu(cmd.tag, bytes(cmd.cdb), cmd.lun)
    result = target.stream_out(pipes[PIPE_COMMAND], 0, bytearray(iu))
    report.urbs += 1
    if result.status != USBD_STATUS_SUCCESS:
        diverge("command iu", "accepted", f"USBD status 0x{result.status:08x}")
        return
    stream = cmd.tag if streams else 0
    got_data: bytes | None = None
    if streams and not tmf:
        got_data = _data_phase(target, pipes, stream, cmd, report)
    for _ in range(MAX_IUS):
        buffer = bytearray(STATUS_BUFFER)
        result = target.stream_in(pipes[PIPE_STATUS], stream, buffer)
        if result.status == USBD_STATUS_PENDING:
            diverge("status", "an IU", "none: the target sent nothing")
            return
        report.urbs += 1
        answer = bytes(buffer[: result.actual])
        iu_id = answer[0] if answer else -1
        if iu_id in (IU_READ_READY, IU_WRITE_READY) and not streams:
            got_data = _data_phase(target, pipes, 0, cmd, report)
            continue
        _compare_answer(cmd, answer, got_data, diverge, report)
        return
    diverge("status", "a Sense IU or Response IU", "only Ready IUs")


def _data_phase(target: DeviceBackend, pipes: dict[int, int], stream: int,
                cmd: ScsiCommand, report: Report) -> bytes | None:
    """The command's data: sent (OUT), or taken (IN); None when there was none to move
    (the target NAKed it: a command that failed before its data)."""
    if cmd.data_direction == "out" and cmd.data_length:
        result = target.stream_out(pipes[PIPE_DATA_OUT], stream, bytearray(cmd.data))
        if result.status != USBD_STATUS_PENDING:
            report.urbs += 1
        return None
    if cmd.data_direction != "in" or not cmd.expected_length:
        return None
    buffer = bytearray(min(cmd.expected_length, len(cmd.data) + MAX_UNRECORDED))
    result = target.stream_in(pipes[PIPE_DATA_IN], stream, buffer)
    if result.status == USBD_STATUS_PENDING:
        return None
    report.urbs += 1
    return bytes(buffer[: result.actual])


def _compare_answer(cmd: ScsiCommand, answer: bytes, got_data: bytes | None,
                    diverge: Callable[..., None], report: Report) -> None:
    tag = int.from_bytes(answer[2:4], "big") if len(answer) >= 4 else None
    if tag != cmd.tag:
        diverge("tag", cmd.tag, tag)
    iu_id = answer[0] if answer else -1
    if iu_id == IU_RESPONSE and len(answer) >= 8:
        status = RESPONSE_NAMES.get(answer[7], f"response_0x{answer[7]:02x}")
        if cmd.status != status:
            diverge("response", cmd.status, status)
        return
    if iu_id != IU_SENSE or len(answer) < SENSE_IU_HEADER:
        diverge("status", "a Sense IU", answer)
        return
    status = STATUS_NAMES.get(answer[6], f"status_0x{answer[6]:02x}")
    if cmd.status != "missing" and status != cmd.status:
        diverge("status", cmd.status, status)
    length = int.from_bytes(answer[14:16], "big")
    sense = scsi.parse_sense(answer[SENSE_IU_HEADER: SENSE_IU_HEADER + length]) \
        if length else None
    recorded = cmd.sense if cmd.status == "check_condition" else None
    if recorded is not None and (sense is None or (sense.key, sense.asc, sense.ascq) !=
                                 (recorded.key, recorded.asc, recorded.ascq)):
        diverge("sense", recorded, sense)
    if cmd.data_direction == "in" and cmd.data:
        data = got_data or b""
        if cmd.data_truncated:
            data = data[: len(cmd.data)]
        report.compared_bytes += len(cmd.data)
        if data != cmd.data:
            diverge("data_in", cmd.data, data, offset=first_difference(cmd.data, data))
