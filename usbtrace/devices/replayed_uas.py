"""The device side of a UAS recording, for device replay.

A recording whose host selected a UAS alternate setting is replayed against a
device that speaks UAS too, so the stack replays through UASPStor as it was
recorded.  The UAS protocol itself is the simulated stick's
(:class:`~usbtrace.devices.uas.UasDevice`: IUs, tags, Ready IUs or streams);
its logical unit is the recording: each Command IU's CDB is answered as
:class:`~usbtrace.devices.replayed.ReplayedDevice` answers a CBW (the replayed
command; else the same CDB, a recent retry, the same opcode; else made up),
the OUT data is checked against the recorded data, and a recorded CHECK
CONDITION comes back as a Sense IU with the recorded sense data.
"""

from __future__ import annotations

from usbtrace.decode.uas import (
    PIPE_COMMAND,
    PIPE_DATA_IN,
    PIPE_DATA_OUT,
    PIPE_STATUS,
    UAS_PROTOCOL,
    max_streams,
    pipe_usage,
)
from usbtrace.devices.base import TransferResult
from usbtrace.devices.replayed import ReplayedDevice
from usbtrace.devices.scsi_target import IN, NONE, OUT, Plan
from usbtrace.devices.uas import NAK, UasDevice
from usbtrace.replay.recording import Recording
from usbtrace.replay.report import Report, first_difference
from usbtrace.storage import bot, scsi
from usbtrace.storage.scsi import Sense
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb.urb import USBD_STATUS_STALL_PID, USBD_STATUS_SUCCESS

MAX_ZEROS = 0xFFFF * 512  # data a capture cut, stood in for by zeros, at most


def _uas_setting(config: bytes | None) -> tuple[int, int, bool] | None:
    """(interface, alternate setting, streams offered) of the UAS setting in ``config``."""
    if not config:
        return None
    settings = [(key, pipes) for key, (protocol, pipes) in pipe_usage(config).items()
                if protocol == UAS_PROTOCOL]
    if not settings:
        return None
    (number, alternate), pipes = settings[0]
    status = pipes.get(PIPE_STATUS)
    streams = status is not None and max_streams(config, number, alternate, status) > 0
    return number, alternate, streams


def offers_uas(recording: Recording) -> bool:
    return _uas_setting(recording.descriptors.get((d.CONFIGURATION, 0, 0))) is not None


class RecordedLun:
    """A logical unit that answers from the recording (what ``UasDevice`` asks a
    :class:`~usbtrace.devices.scsi_target.ScsiTarget`: a plan per CDB)."""

    def __init__(self, device: ReplayedUasDevice) -> None:
        self.device = device
        self.sense = Sense(0, 0, 0)

    def plan(self, cdb: bytes) -> Plan:
        device = self.device
        cmd, replayed = device._pick(bot.Cbw(0, 0, 0, 0, len(cdb), cdb))
        if cmd is None:
            made_up = device._made_up(cdb)
            if made_up is not None:
                return Plan(IN, len(made_up), made_up)
            if cdb[:1] == bytes([scsi.TEST_UNIT_READY]):
                return Plan(NONE)
            return Plan(NONE, sense=Sense(scsi.ILLEGAL_REQUEST, 0x20, 0))
        if replayed:
            device.served = True
            if cmd.data_truncated:
                device.truncated_count += 1
                if len(device.truncated) < 12:
                    device.truncated.append((device.expected or 0) + 1)
        if cmd.status != "good":
            sense = cmd.sense
            return Plan(NONE, sense=Sense(sense.key, sense.asc, sense.ascq) if sense else
                        Sense(scsi.ABORTED_COMMAND, 0, 0))
        if cmd.data_direction == "in":
            zeros = min(max(cmd.data_length - len(cmd.data), 0), MAX_ZEROS)
            data = bytes(cmd.data) + bytes(zeros)
            return Plan(IN, len(data), data) if data else Plan(NONE)
        if cmd.data_direction == "out" and cmd.data_length:
            recorded = bytes(cmd.data)

            def compare(got: memoryview) -> Sense | None:
                if replayed:
                    device.report.compared_bytes += len(recorded)
                    taken = bytes(got[: len(recorded)])
                    if taken != recorded:
                        device._diverge("data_out", recorded, taken,
                                        offset=first_difference(recorded, taken))
                return None

            return Plan(OUT, cmd.data_length, sink=compare)
        return Plan(NONE)


class ReplayedUasDevice(ReplayedDevice):
    """The recorded device, alternate setting 0 Bulk-Only as recorded, the UAS setting
    answered by :class:`UasDevice` over the recording."""

    def __init__(self, recording: Recording, report: Report) -> None:
        setting = _uas_setting(recording.descriptors.get((d.CONFIGURATION, 0, 0)))
        assert setting is not None, "not a UAS recording"
        self.uas_interface, self.uas_alternate, streams = setting
        super().__init__(recording, report, speed="super" if streams else "high")
        self.uas = UasDevice([RecordedLun(self)], streams)  # type: ignore[list-item]
        self.alternate_setting = 0
        # pipe id -> endpoint, from the descriptors the stack will read: none when they had
        # to be made up (a malformed recorded configuration), and the stack speaks Bulk-Only
        usage = pipe_usage(self._descriptors.get((d.CONFIGURATION, 0, 0)) or b"")
        self.pipes = usage.get((self.uas_interface, self.uas_alternate), (0, {}))[1]

    def control(self, setup: bytes, buffer: bytearray | memoryview) -> TransferResult:
        bm, req, value, index, _ = std.SETUP.unpack(setup)
        if bm == 0x01 and req == std.SET_INTERFACE and index == self.uas_interface:
            if value not in (0, self.uas_alternate):
                return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
            self.alternate_setting = value
            self.uas.reset()
            return TransferResult(USBD_STATUS_SUCCESS, 0, self.speed.latency_ns)
        if bm == 0x00 and req == std.SET_CONFIGURATION:
            self.alternate_setting = 0
        if bm == 0x02 and req == std.CLEAR_FEATURE:
            self.uas.clear_halt(index & 0xFF)
        return super().control(setup, buffer)

    def _uas_active(self) -> bool:
        return self.alternate_setting == self.uas_alternate != 0

    def stream_out(self, endpoint: int, stream: int,
                   data: bytearray | memoryview) -> TransferResult:
        if not self._uas_active():
            return super().bulk_out(endpoint, data)
        self.report.urbs += 1
        if endpoint == self.pipes.get(PIPE_COMMAND):
            status = self.uas.command_out(data)
        elif endpoint == self.pipes.get(PIPE_DATA_OUT):
            status = self.uas.data_out(data, stream)
        else:
            status = USBD_STATUS_STALL_PID
        if status == NAK:
            self.report.urbs -= 1  # tried again later: counted then
        n = len(data) if status == USBD_STATUS_SUCCESS else 0
        return TransferResult(status, n, self.speed.transfer_ns(n))

    def stream_in(self, endpoint: int, stream: int,
                  buffer: bytearray | memoryview) -> TransferResult:
        if not self._uas_active():
            return super().bulk_in(endpoint, buffer)
        if endpoint == self.pipes.get(PIPE_STATUS):
            status, n = self.uas.status_in(buffer, stream)
        elif endpoint == self.pipes.get(PIPE_DATA_IN):
            status, n = self.uas.data_in(buffer, stream)
        else:
            status, n = USBD_STATUS_STALL_PID, 0
        if status != NAK:
            self.report.urbs += 1
        return TransferResult(status, n, self.speed.transfer_ns(n))

    def bulk_out(self, endpoint: int, data: bytearray | memoryview) -> TransferResult:
        if self._uas_active():
            return self.stream_out(endpoint, 0, data)
        return super().bulk_out(endpoint, data)

    def bulk_in(self, endpoint: int, buffer: bytearray | memoryview) -> TransferResult:
        if self._uas_active():
            return self.stream_in(endpoint, 0, buffer)
        return super().bulk_in(endpoint, buffer)
