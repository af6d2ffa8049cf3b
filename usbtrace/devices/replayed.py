"""A device backend that plays the device's side of a recording.

The replayer tells it which recorded command it is issuing (``expect``).  When
the stack's CBW for that command arrives, the device checks it against the
recorded CBW (CDB, direction, length, LUN), takes the OUT data and checks it,
and answers with the recorded IN data and CSW (with the stack's tag: tags
are the host's to choose).  Commands the stack sends of its own accord —
start-up INQUIRY and READ CAPACITY, automatic REQUEST SENSE, retries — are
answered from the recording too: the same CDB if it was recorded, else the
same opcode, else TEST UNIT READY passes and anything else fails with
ILLEGAL REQUEST.  Anything out of order (an OUT transfer where a CSW was due,
a missing data phase) is a divergence.

Control requests are answered from recorded control exchanges; descriptors a
recording lacks (no enumeration captured) are made up from what it shows (the
bulk endpoints it used, VID:PID if known) and the report says so.

Memory does not grow with the recording: the device holds the command being
replayed, the last few (for retries), and the survey's bounded indexes; IN
data is the recorded bytes, then zeros counted, never a buffer sized from a
recorded length field.
"""

from __future__ import annotations

from collections import deque

from construct import ConstructError

from usbtrace.decode.bot import ScsiCommand
from usbtrace.devices.base import DeviceBackend, SuccessResults, TransferResult
from usbtrace.errors import UsbtraceError
from usbtrace.replay.recording import Recording
from usbtrace.replay.report import Divergence, Report, describe, first_difference
from usbtrace.storage import bot, scsi
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb.speed import SPEEDS
from usbtrace.usb.urb import (
    USBD_STATUS_STALL_PID,
    USBD_STATUS_SUCCESS,
    USBD_STATUS_TIMEOUT,
)

STATUS_CODES = {"good": 0, "check_condition": 1, "phase_error": 2, "missing": 2}
RECENT = 16  # commands kept to answer the stack's retries
RC16_LENGTH = 32


def _single_interface(config: bytes, entry: dict) -> bytes:  # type: ignore[type-arg]
    """A configuration descriptor holding one interface (and its endpoints) of ``config``."""
    i = entry["interface"]
    pos, keep, out = 9, False, b""
    while pos + 2 <= len(config):
        length, kind = config[pos], config[pos + 1]
        if length < 2 or pos + length > len(config):
            break  # a malformed descriptor ends the walk
        if kind == d.INTERFACE and length >= 4:  # every alternate setting of it (UAS: 1)
            keep = config[pos + 2] == i.bInterfaceNumber
        if keep:
            out += config[pos : pos + length]
        pos += length
    body = out
    header = bytearray(config[:9])
    header[2:4] = (9 + len(body)).to_bytes(2, "little")
    header[4] = 1
    return bytes(header) + body


class ReplayedDevice(DeviceBackend):
    def __init__(self, recording: Recording, report: Report, speed: str = "high") -> None:
        self.recording = recording
        self.report = report
        self.speed = SPEEDS[speed]
        self._results = SuccessResults(self.speed)  # a successful bulk transfer's, by length
        self.connected = True
        self.expected: int | None = None  # the replayed command's index, from 0
        self.current: ScsiCommand | None = None  # and the command
        self.served = False  # whether its CBW reached the device
        self.recent: deque[ScsiCommand] = deque(maxlen=RECENT)
        self.truncated: list[int] = []  # the first replayed commands the capture cut
        self.truncated_count = 0
        self.in_ep = recording.endpoints.get("in", 0x81)
        self.out_ep = recording.endpoints.get("out", 0x02)
        self.state = "command"
        self._tag = 0
        self._in = b""  # recorded IN data still to send
        self._in_zeros = 0  # then this many zeros (data the capture did not keep)
        self._csw = b""
        self._out_expected = 0
        self._out_taken = 0
        self._out = bytearray()  # the OUT data, kept up to the recorded length
        self._compare_out: tuple[bytes, bool] | None = None
        self._stall_in_after_data = False
        self.halted: set[int] = set()
        self._descriptors = self._collect_descriptors()

    # ---- descriptors -------------------------------------------------------------------

    def _collect_descriptors(self) -> dict[tuple[int, int, int], bytes]:
        found = dict(self.recording.descriptors)
        config = found.get((d.CONFIGURATION, 0, 0))
        if config is not None and len(config) >= 9 and \
                len(config) >= int.from_bytes(config[2:4], "little"):
            try:
                tree = d.configuration_tree(config)
            except (UsbtraceError, ConstructError) as e:
                self.report.note(f"the recorded configuration descriptor is malformed ({e}): "
                                 "it was made up instead")
                del found[(d.CONFIGURATION, 0, 0)]
                config = None
                tree = {"interfaces": []}
            # a short interface descriptor parses as a generic one, without these fields
            storage = [e for e in tree["interfaces"]
                       if getattr(e["interface"], "bInterfaceClass", None) == 8 and
                       hasattr(e["interface"], "bAlternateSetting")]
            if config is not None and not storage:
                self.report.note("the recorded configuration descriptor shows no "
                                 "mass-storage interface: it was made up instead")
                del found[(d.CONFIGURATION, 0, 0)]
                config = None
            numbers = {getattr(e["interface"], "bInterfaceNumber", None)
                       for e in tree["interfaces"]}
            if config is not None and storage and len(numbers) > 1:
                # a composite device: Windows puts usbccgp above it and gives each
                # function its own PDO; the model presents the mass-storage one alone
                self.report.notes.append("composite device: only its mass-storage interface "
                                         "is presented to the stack")
                found[(d.CONFIGURATION, 0, 0)] = _single_interface(config, storage[0])
                config = found[(d.CONFIGURATION, 0, 0)]
        device = found.get((d.DEVICE, 0, 0))
        if device is None or len(device) < 18 or config is None or len(config) < 9 or \
                len(config) < int.from_bytes(config[2:4], "little"):
            self.report.notes.append("the recording has no full enumeration: descriptors "
                                     "were made up from the bulk endpoints it used")
            ident = next(iter(self.recording.identity.devices.values()), None)
            vid = ident.vid if ident and ident.vid is not None else 0x1209
            pid = ident.pid if ident and ident.pid is not None else 0x0001
            found[(d.DEVICE, 0, 0)] = d.DeviceDescriptor.build(dict(
                bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0, bDeviceProtocol=0,
                bMaxPacketSize0=64, idVendor=vid, idProduct=pid, bcdDevice=0x0100,
                iManufacturer=0, iProduct=0, iSerialNumber=0, bNumConfigurations=1))
            body = d.InterfaceDescriptor.build(dict(
                bInterfaceNumber=0, bAlternateSetting=0, bNumEndpoints=2, bInterfaceClass=8,
                bInterfaceSubClass=6, bInterfaceProtocol=0x50, iInterface=0))
            for ep in (self.in_ep, self.out_ep):
                body += d.EndpointDescriptor.build(dict(bEndpointAddress=ep, bmAttributes=2,
                                                        wMaxPacketSize=512, bInterval=0))
            found[(d.CONFIGURATION, 0, 0)] = d.ConfigurationDescriptor.build(dict(
                bDescriptorType=2, wTotalLength=9 + len(body), bNumInterfaces=1,
                bConfigurationValue=1, iConfiguration=0, bmAttributes=0x80, bMaxPower=50)) + body
        return found

    def control(self, setup: bytes, buffer: bytearray | memoryview) -> TransferResult:
        bm, req, value, index, length = std.SETUP.unpack(setup)
        reply: bytes | None = b""
        if bm == 0x80 and req == std.GET_DESCRIPTOR:
            kind, idx = value >> 8, value & 0xFF
            reply = self._descriptors.get((kind, idx, index))
            if reply is None and kind == d.STRING:
                reply = self._descriptors.get((kind, idx, 0x0409)) or \
                    next((v for (k, i, _), v in self._descriptors.items()
                          if k == kind and i == idx), None)
        elif bm == 0xA1 and req == std.GET_MAX_LUN:
            reply = self.recording.max_lun
        elif bm == 0x21 and req == std.BULK_ONLY_MASS_STORAGE_RESET:
            self.state = "command"
        elif bm == 0x02 and req == std.CLEAR_FEATURE:
            self.halted.discard(index & 0xFF)
        if reply is None:
            return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
        n = min(len(reply), length, len(buffer)) if bm & 0x80 else length
        if bm & 0x80:
            buffer[:n] = reply[:n]
        return TransferResult(USBD_STATUS_SUCCESS, n, self.speed.transfer_ns(n))

    def clear_halt(self, endpoint: int) -> TransferResult:
        self.halted.discard(endpoint)
        return TransferResult(USBD_STATUS_SUCCESS, 0, self.speed.latency_ns)

    # ---- Bulk-Only ---------------------------------------------------------------------

    def expect(self, index: int | None, cmd: ScsiCommand | None = None) -> None:
        """The replayer is about to issue command ``index`` (``cmd``); None: no more."""
        if self.current is not None:
            self.recent.append(self.current)
        self.expected, self.current, self.served = index, cmd, False

    def _diverge(self, field: str, expected: object, actual: object, note: str = "",
                 offset: int | None = None) -> None:
        index = self.expected if self.expected is not None else -1
        cmd = self.current
        self.report.add(Divergence(index + 1, describe(cmd) if cmd else "(stack's own)",
                                   field, expected, actual, note, offset))

    def bulk_out(self, endpoint: int, data: bytearray | memoryview) -> TransferResult:
        self.report.urbs += 1
        ok = self._results[len(data)]
        if endpoint in self.halted:
            return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
        if self.state == "data_out":
            keep = len(self._compare_out[0]) if self._compare_out is not None else 0
            if len(self._out) < keep:
                self._out += data[: keep - len(self._out)]
            self._out_taken += len(data)
            if self._out_taken >= self._out_expected:
                self._finish_out()
            return ok
        if self.state != "command":
            self._diverge("sequence", f"the {self.state.replace('_', ' ')} phase",
                          "an OUT transfer", "the stack skipped a Bulk-Only phase")
            self.state = "command"
        cbw = bot.parse_cbw(data)
        if cbw is None:
            self._diverge("cbw", "a valid CBW", bytes(data))
            self.halted.update((self.in_ep, self.out_ep))
            return ok
        self._command(cbw)
        return ok

    def _pick(self, cbw: bot.Cbw) -> tuple[ScsiCommand | None, bool]:
        """The recorded command that answers ``cbw``, and whether it is the replayed one:
        the replayed command; else the first recorded with the same CDB; else a recent
        one (a retry); else the first good one of the same opcode."""
        cmd = self.current
        if cmd is not None and not self.served and bytes(cmd.cdb) == cbw.cdb:
            return cmd, True
        survey = self.recording.survey
        found = survey.by_cdb.get(cbw.cdb)
        if found is not None:
            return found, False
        for old in reversed(self.recent):
            if bytes(old.cdb) == cbw.cdb:
                return old, False
        if cbw.cdb:
            return survey.by_opcode.get(cbw.cdb[0]), False
        return None, False

    def _made_up(self, cdb: bytes) -> bytes | None:
        """INQUIRY and READ CAPACITY for a stack that needs them to start, when the
        recording never asked; the report says so.  The capacity covers the highest
        block the recording touched; READ CAPACITY(10) says FFFFFFFFh when the last LBA
        does not fit 32 bits (SBC-3 §5.16.2), and READ CAPACITY(16) then tells."""
        if len(cdb) >= 6 and cdb[0] == scsi.INQUIRY and not cdb[1] & 1:
            self._note("INQUIRY")
            return bytes([0, 0x80, 4, 2, 31, 0, 0, 0]) + b"REPLAY  " + b"recorded device " + \
                b"1.00"
        capacity10 = len(cdb) >= 10 and cdb[0] == scsi.READ_CAPACITY_10
        capacity16 = len(cdb) >= 16 and cdb[0] == scsi.SERVICE_ACTION_IN_16 and \
            cdb[1] & 0x1F == scsi.SA_READ_CAPACITY_16
        if capacity10 or capacity16:
            blocks = max(self.recording.survey.highest_block, 2048)
            last = min(blocks, 1 << 64) - 1
            self._note("READ CAPACITY (from the highest block the recording touched)")
            if capacity10:
                return min(last, 0xFFFFFFFF).to_bytes(4, "big") + (512).to_bytes(4, "big")
            return last.to_bytes(8, "big") + (512).to_bytes(4, "big") + bytes(RC16_LENGTH - 12)
        return None

    def _note(self, what: str) -> None:
        note = f"the recording has no {what}: the stack's was answered with made-up data"
        if note not in self.report.notes:
            self.report.notes.append(note)

    def _command(self, cbw: bot.Cbw) -> None:
        self._tag = cbw.tag
        cmd, replayed = self._pick(cbw)
        length = cbw.data_transfer_length
        data_in = cbw.flags & bot.CBW_FLAGS_DATA_IN != 0  # cbw.data_in
        host_in = data_in and length > 0
        if cmd is None:
            made_up = self._made_up(cbw.cdb)
            if made_up is not None:
                data = made_up[: cbw.data_transfer_length]
                self._respond(cbw, data, cbw.data_transfer_length - len(data), 0, host_in)
                return
            # nothing recorded answers this: TEST UNIT READY passes, the rest fail
            ok = cbw.cdb[:1] == bytes([scsi.TEST_UNIT_READY])
            self._respond(cbw, b"", cbw.data_transfer_length, 0 if ok else 1, host_in)
            return
        if replayed:
            self.served = True
            direction = "none" if not length else "in" if data_in else "out"
            if cmd.expected_length != length or cmd.data_direction != direction or \
                    cmd.lun != cbw.lun:
                self._diverge("cbw (direction, length, lun)",
                              (cmd.data_direction, cmd.expected_length, cmd.lun),
                              (direction, length, cbw.lun))
        status = STATUS_CODES.get(cmd.status, 2)
        # a CSW field holds 32 bits: a recording that says more is clamped, not fatal
        residue = cmd.residue or 0
        if residue < 0:
            residue = 0
        elif residue > 0xFFFFFFFF:
            residue = 0xFFFFFFFF
        if cmd.data_truncated and replayed:
            self.truncated_count += 1
            if len(self.truncated) < 12:
                self.truncated.append((self.expected or 0) + 1)
        if host_in or length == 0:
            recorded_in = cmd.data_direction == "in"
            data = cmd.data[:length] if recorded_in else b""
            zeros = 0
            if recorded_in and len(data) < cmd.data_length:
                # the capture cut the data: zeros stand in, counted, up to what the host
                # asked for (a recorded length field may claim anything)
                zeros = max(min(cmd.data_length, length) - len(data), 0)
            if not replayed:  # the stack's own CBW: the residue is of its length
                residue = length - len(data) - zeros if host_in else 0
            self._stall_in_after_data = cmd.data_stalled
            self._respond(cbw, data, residue, status, host_in, zeros)
            return
        # the stack sends data: take it, then check it against the recorded data
        self.state = "data_out"
        self._out = bytearray()
        self._out_taken = 0
        self._out_expected = cbw.data_transfer_length
        self._compare_out = (cmd.data, replayed) if cmd.data_direction == "out" else None
        if not replayed:
            residue = min(residue, cbw.data_transfer_length)
        self._csw = bot.build_csw(cbw.tag, residue, status)

    def _respond(self, cbw: bot.Cbw, data: bytes, residue: int, status: int,
                 host_in: bool, zeros: int = 0) -> None:
        if residue < 0:  # a CSW field holds 32 bits
            residue = 0
        elif residue > 0xFFFFFFFF:
            residue = 0xFFFFFFFF
        self._csw = bot.build_csw(cbw.tag, residue, status)
        if host_in:
            self._in, self._in_zeros = data, zeros
            self.state = "data_in"
        else:
            self.state = "status"

    def _finish_out(self) -> None:
        if self._compare_out is not None:
            recorded, replayed = self._compare_out
            if replayed:
                out = self._out
                self.report.compared_bytes += len(recorded)
                # compared in place; copied only to say how they differ
                if (out if len(out) == len(recorded) else out[: len(recorded)]) != recorded:
                    got = bytes(out[: len(recorded)])
                    self._diverge("data_out", recorded, got,
                                  offset=first_difference(recorded, got))
        self.state = "status"

    def bulk_in(self, endpoint: int, buffer: bytearray | memoryview) -> TransferResult:
        self.report.urbs += 1
        if endpoint in self.halted:
            return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
        state = self.state
        if state == "data_in":
            pending = self._in
            size = len(buffer)
            if len(pending) <= size:  # the rest of the recorded data, whole
                n = len(pending)
                buffer[:n] = pending
                self._in = b""
            else:
                n = size
                buffer[:] = pending[:n]
                self._in = pending[n:]
            if not self._in and self._in_zeros and n < len(buffer):
                z = min(len(buffer) - n, self._in_zeros)
                buffer[n : n + z] = bytes(z)
                self._in_zeros -= z
                n += z
            if not self._in and not self._in_zeros:
                self.state = "status"
                if self._stall_in_after_data and n < len(buffer):
                    self.halted.add(endpoint)
                    return TransferResult(USBD_STATUS_STALL_PID, n, self.speed.transfer_ns(n))
            return self._results[n]
        if state == "status":
            n = min(len(buffer), len(self._csw))
            buffer[:n] = self._csw[:n]
            self.state = "command"
            return self._results[n]
        self._diverge("sequence", "a CBW first", "an IN transfer",
                      "the stack read with no command outstanding")
        return TransferResult(USBD_STATUS_TIMEOUT, 0, self.speed.latency_ns)
