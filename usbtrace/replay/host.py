"""Host replay: the recorded host's side, sent to a target device, answers compared.

Each recorded command goes to the target as the host sent it — its CBW (tag
included), its OUT data — and the target's IN data, CSW status and residue are
compared with the recording.  This is Bulk-Only on the target's own bulk
endpoints, below any driver stack, like usbrply's generated scripts but
checking every answer.  A target is any device backend: the simulated stick
over an image, or (once connected) hardware through pyusb.

Commands stream from the recording.  The IN buffer is the CBW's transfer length
only up to the recorded data plus ``MAX_UNRECORDED``: a recording claiming
gigabytes is not a reason to allocate them (a target sending more than that
shows as a divergence at the CSW).
"""

from __future__ import annotations

from construct import ConstructError

from usbtrace.decode.bot import ScsiCommand
from usbtrace.devices.base import DeviceBackend, read_configuration
from usbtrace.errors import DeviceError
from usbtrace.replay.device import MAX_UNRECORDED
from usbtrace.replay.recording import Recording
from usbtrace.replay.report import Divergence, Report, describe, first_difference
from usbtrace.replay.timing import Clock, Schedule
from usbtrace.storage import bot
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb.urb import USBD_STATUS_STALL_PID, USBD_STATUS_SUCCESS

STATUS_CODES = {"good": 0, "check_condition": 1, "phase_error": 2}
_CBW_PACK_INTO = bot.CBW.pack_into
_CSW_UNPACK = bot.CSW.unpack


def _endpoints(target: DeviceBackend) -> tuple[int, int, int]:
    """Configure the target; its Bulk-Only interface number and bulk IN/OUT endpoints."""
    try:
        tree = d.configuration_tree(read_configuration(target))
    except ConstructError as e:
        raise DeviceError(f"the target's configuration descriptor is malformed: {e}") from None
    if "configuration" not in tree:
        raise DeviceError("the target has no configuration descriptor")
    value = tree["configuration"].bConfigurationValue
    target.control(std.build_setup(0x00, std.SET_CONFIGURATION, value, 0, 0), bytearray())
    for entry in tree["interfaces"]:
        i = entry["interface"]
        kind = tuple(getattr(i, f, None) for f in ("bInterfaceClass", "bInterfaceSubClass",
                                                    "bInterfaceProtocol"))
        if kind == (8, 6, 0x50) and hasattr(i, "bInterfaceNumber"):
            eps = {e.bEndpointAddress & 0x80: e.bEndpointAddress for e in entry["endpoints"]
                   if getattr(e, "bmAttributes", 0) & 3 == 2 and hasattr(e, "bEndpointAddress")}
            if 0x80 in eps and 0 in eps:
                return i.bInterfaceNumber, eps[0x80], eps[0]
    raise DeviceError("the target has no Bulk-Only mass-storage interface")


def replay_host(recording: Recording, target: DeviceBackend, report: Report,
                speed: float | None = None, max_gap: float | None = None,
                clock: Clock | None = None) -> None:
    """Send each recorded command to ``target`` and compare its answers.  With
    ``speed``, each goes out at its recorded offset / speed from the first (see
    ``usbtrace.replay.timing``), and ``report.timing`` says how well that was kept."""
    if recording.uas is not None:  # the host spoke UAS: so does the replay
        from usbtrace.replay.host_uas import replay_host_uas

        replay_host_uas(recording, target, report, speed, max_gap, clock)
        return
    interface, in_ep, out_ep = _endpoints(target)
    schedule = Schedule(speed, max_gap, clock) if speed else None
    if schedule is not None:
        report.timing = schedule.timing
    buffers = _Buffers()
    for index, cmd in enumerate(recording.commands(), 1):
        if schedule is not None:
            schedule.wait(cmd.submitted_at, index)
            while schedule.notes:  # a malformed timestamp (or NaN): not a hang
                report.note(schedule.notes.pop(0))
        _replay_command(target, interface, in_ep, out_ep, index, cmd, report, buffers)


class _Buffers:
    """The buffers a replay's transfers go through, made once for all its commands (a
    transfer is over when its call returns, and a target copies what it keeps): the
    CBW's, the CSW's, and the latest IN data buffer, kept for a command of its size."""

    __slots__ = ("cbw", "csw", "data_in")

    def __init__(self) -> None:
        self.cbw = bytearray(bot.CBW_LENGTH)
        self.csw = bytearray(bot.CSW_LENGTH)
        self.data_in = bytearray()


def _replay_command(target: DeviceBackend, interface: int, in_ep: int, out_ep: int,
                    index: int, cmd: ScsiCommand, report: Report, buffers: _Buffers) -> None:
    """One command's CBW, data and CSW, each answer compared with the recording."""
    direction = cmd.data_direction
    length = cmd.expected_length
    if direction == "out" and cmd.data_truncated:
        _diverge(report, index, cmd, "recording", "the OUT data",
                 f"{len(cmd.data)} of {cmd.data_length} bytes",
                 "the capture cut this command's data short: it cannot be sent again")
        report.replayed += 1
        return
    cbw = buffers.cbw
    cdb = cmd.cdb  # bot.build_cbw, into the replay's buffer ("16s" pads the CDB)
    _CBW_PACK_INTO(cbw, 0, bot.CBW_SIGNATURE, cmd.tag, length,
                   bot.CBW_FLAGS_DATA_IN if direction == "in" else 0, cmd.lun, len(cdb), cdb)
    result = target.bulk_out(out_ep, cbw)
    urbs = 1
    if result.status != USBD_STATUS_SUCCESS:
        report.urbs += urbs
        _diverge(report, index, cmd, "cbw", "accepted", f"USBD status 0x{result.status:08x}")
        _recover(target, interface, in_ep, out_ep)
        report.replayed += 1
        return
    if length and direction == "out":
        parts = cmd.data_parts  # cmd.data, inline: one part is the bytes themselves
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        # the recorded bytes as they are: the target copies what it keeps
        result = target.bulk_out(out_ep, memoryview(data)[:length] if len(data) > length
                                 else memoryview(data))
        urbs += 1
        if result.status == USBD_STATUS_STALL_PID:
            target.clear_halt(out_ep)
    elif length and direction == "in":
        parts = cmd.data_parts  # cmd.data, inline
        recorded = parts[0] if len(parts) == 1 else b"".join(parts)
        size = min(length, len(recorded) + MAX_UNRECORDED)
        buffer = buffers.data_in
        if len(buffer) != size:
            buffer = buffers.data_in = bytearray(size)
        result = target.bulk_in(in_ep, buffer)
        urbs += 1
        if result.status == USBD_STATUS_STALL_PID:
            target.clear_halt(in_ep)
        report.compared_bytes += len(recorded)
        actual = result.actual
        if actual == size == len(recorded):  # the usual: compared in place
            same = buffer == recorded
        else:  # only what this transfer filled: the buffer may hold an earlier command's
            got = buffer[:actual]
            if cmd.data_truncated:
                del got[len(recorded):]
            same = got == recorded
        if not same:
            got = buffer[:actual]
            if cmd.data_truncated:
                del got[len(recorded):]
            seen = bytes(got)
            _diverge(report, index, cmd, "data_in", recorded, seen,
                     offset=first_difference(recorded, seen),
                     note="compared the captured part only" if cmd.data_truncated else "")
    csw_buffer = buffers.csw
    result = target.bulk_in(in_ep, csw_buffer)
    urbs += 1
    if result.status == USBD_STATUS_STALL_PID:
        target.clear_halt(in_ep)
        result = target.bulk_in(in_ep, csw_buffer)
        urbs += 1
    report.urbs += urbs
    report.replayed += 1
    status = cmd.status
    if status == "missing":
        return  # nothing recorded to compare with
    # bot.parse_csw, inline: a CSW is 13 bytes with the "USBS" signature
    actual = result.actual
    if actual == bot.CSW_LENGTH:
        signature, tag, residue, csw_status = _CSW_UNPACK(csw_buffer)
    if actual != bot.CSW_LENGTH or signature != bot.CSW_SIGNATURE:
        _diverge(report, index, cmd, "csw", "a CSW", bytes(csw_buffer[:actual]))
        _recover(target, interface, in_ep, out_ep)
        return
    if tag != cmd.tag:
        _diverge(report, index, cmd, "csw tag", cmd.tag, tag)
    if csw_status != STATUS_CODES.get(status, -1):
        _diverge(report, index, cmd, "csw status", status,
                 bot.CSW_STATUS_NAMES.get(csw_status, csw_status))
    if cmd.residue is not None and residue != cmd.residue:
        _diverge(report, index, cmd, "residue", cmd.residue, residue)


def _diverge(report: Report, index: int, cmd: ScsiCommand, field: str, expected: object,
             actual: object, note: str = "", offset: int | None = None) -> None:
    """A divergence of command ``index`` (a function, not a closure made per command)."""
    report.add(Divergence(index, describe(cmd), field, expected, actual, note, offset))


def _recover(target: DeviceBackend, interface: int, in_ep: int, out_ep: int) -> None:
    """Reset Recovery (BOT §5.3.4), so the next command starts clean."""
    target.control(std.build_setup(0x21, std.BULK_ONLY_MASS_STORAGE_RESET, 0, interface, 0),
                   bytearray())
    target.clear_halt(in_ep)
    target.clear_halt(out_ep)
