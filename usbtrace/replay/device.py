"""Device replay: the whole stack, top to bottom, against the recorded device.

Each recorded command is issued from the top — ReadFile/WriteFile where it is
a READ(10)/WRITE(10) the disk driver would send as one SRB, SCSI pass-through
otherwise — and runs down through the disk class driver, usbstor and the
tracer to a :class:`~usbtrace.devices.replayed.ReplayedDevice` that answers
with the recording.  The device checks what reaches it (the CBW, OUT data,
the Bulk-Only phases); this side checks what comes back to the caller (IN
data, success or failure).  A driver that changes anything on the way shows.

Commands stream from the recording one at a time.  A buffer is never sized
from a recorded length field alone: a command whose CBW asks for more than
``MAX_UNRECORDED`` bytes beyond what the recording holds is not issued, and
the report says so.
"""

from __future__ import annotations

from usbtrace.decode.bot import ScsiCommand
from usbtrace.devices.replayed import ReplayedDevice
from usbtrace.errors import UsbtraceError
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.replay.recording import Recording
from usbtrace.replay.report import Divergence, Report, describe, first_difference
from usbtrace.storage import ioctl as io
from usbtrace.storage import scsi
from usbtrace.wdm.sched import BugCheck, Deadlock
from usbtrace.wdm.win32 import NtStatusError, Win32

MAX_SRB = 0x10000
# The largest buffer made for a command beyond its recorded data: READ(10)'s largest
# transfer (65535 blocks).  Real commands stay far below; a CBW claiming gigabytes with
# a few bytes recorded is a malformed recording, not a reason to allocate gigabytes.
MAX_UNRECORDED = 0xFFFF * 512


def replay_device(recording: Recording, report: Report, machine_hook=None) -> None:  # type: ignore[no-untyped-def]
    from usbtrace.devices.replayed_uas import ReplayedUasDevice, offers_uas

    # a recording whose host selected UAS replays to a device that speaks it (UASPStor)
    device = ReplayedUasDevice(recording, report) if recording.uas is not None and \
        offers_uas(recording) else ReplayedDevice(recording, report)
    machine = Machine(device)
    if machine_hook is not None:
        machine_hook(machine)
    try:
        machine.start()
    except (UsbtraceError, BugCheck, Deadlock) as e:
        report.add(Divergence(0, "(stack start-up)", "start", "the stack starts", str(e)))
        return
    win32 = machine.win32
    try:
        handle = win32.CreateFile(DISK_PATH)
        _, disk_size = win32.DeviceIoControl(handle, io.IOCTL_DISK_GET_LENGTH_INFO, None, 8)
    except NtStatusError as e:
        report.add(Divergence(0, "(stack start-up)", "disk", "a disk to open", str(e)))
        machine.stop()
        return
    skipped: list[int] = []
    skipped_count = 0
    try:
        for index, cmd in enumerate(recording.commands()):
            if cmd.info.opcode < 0:  # a UAS task management function: the host's own
                report.replayed += 1
                continue
            if not _bounded(cmd):
                skipped_count += 1
                if len(skipped) < 12:
                    skipped.append(index + 1)
                report.replayed += 1
                continue
            device.expect(index, cmd)
            try:
                _issue(win32, handle, disk_size, cmd, index + 1, report)
            except (UsbtraceError, BugCheck, Deadlock) as e:
                report.add(Divergence(index + 1, describe(cmd), "stack", "the command completes",
                                      f"{type(e).__name__}: {e}"))
                report.replayed += 1
                return
            if not device.served:
                report.add(Divergence(index + 1, describe(cmd), "device",
                                      "the command reaches the device",
                                      "it never did", "the stack changed or dropped it"))
            report.replayed += 1
        device.expect(None)
        if device.truncated_count:
            report.notes.append(f"commands {_some(device.truncated, device.truncated_count)}: "
                                "the capture cut their data short; only the captured bytes "
                                "were compared, the rest served as zeros")
        if skipped_count:
            report.notes.append(f"commands {_some(skipped, skipped_count)}: the CBW asks for "
                                f"more than {MAX_UNRECORDED} bytes beyond the data recorded; "
                                "not issued")
    finally:
        try:
            machine.stop()
        except (UsbtraceError, BugCheck, Deadlock) as e:
            report.notes.append(f"stack tear-down failed: {e}")


def _some(first: list[int], count: int) -> str:
    """'3, 9, 12' or '3, 9, ... and 40 more'."""
    shown = ", ".join(map(str, first))
    return shown + (f" and {count - len(first)} more" if count > len(first) else "")


def _bounded(cmd: ScsiCommand) -> bool:
    """Whether replaying ``cmd`` needs a buffer no bigger than its recorded data allows."""
    return cmd.expected_length <= len(cmd.data) + MAX_UNRECORDED


def _issue(win32: Win32, handle: int, disk_size: int, cmd: ScsiCommand, number: int,
           report: Report) -> None:
    info = cmd.info
    length = cmd.expected_length
    recorded_ok = cmd.status == "good"
    as_file_io = (info.opcode in (scsi.READ_10, scsi.WRITE_10) and recorded_ok and
                  len(cmd.cdb) == 10 and  # what the disk driver builds; else pass-through
                  info.blocks and length == info.blocks * 512 and length <= MAX_SRB and
                  info.lba is not None and (info.lba * 512 + length) <= disk_size and
                  cmd.data_direction == ("in" if info.opcode == scsi.READ_10 else "out"))
    # the data sent (OUT) or the buffer filled (IN): bounded, see _bounded; a write
    # of a payload recorded whole sends the recorded bytes as they are, without copies
    out = b""
    buffer: bytearray | None = None
    if cmd.data_direction != "out":
        buffer = bytearray(length)
    else:
        out = bytes(cmd.data[:length])  # no copy when it is bytes already
        if len(out) < length:
            out += bytes(length - len(out))
        if not as_file_io:
            buffer = bytearray(out)
    ok = True
    if as_file_io:
        assert info.lba is not None
        try:
            if info.opcode == scsi.READ_10:
                assert buffer is not None
                win32.ReadFile(handle, buffer, info.lba * 512)
            else:
                win32.WriteFile(handle, out, info.lba * 512)
        except NtStatusError as e:
            ok = False
            report.add(Divergence(number, describe(cmd), "status", "success", str(e)))
    else:
        direction = {"in": io.SCSI_IOCTL_DATA_IN, "out": io.SCSI_IOCTL_DATA_OUT}.get(
            cmd.data_direction, io.SCSI_IOCTL_DATA_UNSPECIFIED)
        assert buffer is not None
        sptd = io.ScsiPassThroughDirect(bytes(cmd.cdb), direction, length, buffer, Lun=cmd.lun)
        try:
            win32.DeviceIoControl(handle, io.IOCTL_SCSI_PASS_THROUGH_DIRECT, sptd)
        except NtStatusError as e:
            if cmd.status in ("good", "check_condition"):
                report.add(Divergence(number, describe(cmd), "status", cmd.status, str(e)))
            return
        if cmd.status in ("good", "check_condition"):
            expected = 0 if cmd.status == "good" else 2
            if sptd.ScsiStatus != expected:
                report.add(Divergence(number, describe(cmd), "scsi status", cmd.status,
                                      "good" if sptd.ScsiStatus == 0 else "check_condition"))
                ok = False
    if ok and cmd.data_direction == "in" and recorded_ok:
        assert buffer is not None
        recorded = cmd.data
        report.compared_bytes += len(recorded)
        same = buffer == recorded if len(buffer) == len(recorded) else \
            buffer[: len(recorded)] == recorded
        if not same:
            got = bytes(buffer[: len(recorded)])
            report.add(Divergence(number, describe(cmd), "data_in at the top", recorded, got,
                                  offset=first_difference(recorded, got)))
