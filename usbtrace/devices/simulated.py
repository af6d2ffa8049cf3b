"""The simulated USB flash drive: descriptors, control requests, Bulk-Only Transport, UAS.

Layers, bottom up: a :class:`~usbtrace.devices.scsi_target.ScsiTarget` over a
disk image per LUN; :class:`BulkOnlyDevice`, the device side of BOT 1.0 as a
state machine (``BOT_TRANSITIONS``) that checks each CBW for validity and
meaning (§6.2) and resolves the host/device expectation cases (§6.7); and
:class:`SimulatedStick`, the USB device with its chapter-9 requests and its
fault injection (stalls, disconnect mid-transfer).  With ``protocol="uas"`` the
interface has a second alternate setting, USB Attached SCSI
(:mod:`usbtrace.devices.uas`), as real UAS sticks have: setting 0 is Bulk-Only
for hosts without UAS, setting 1 has four bulk endpoints, each followed by its
Pipe Usage descriptor (UAS r04 §5.3.3), and with ``streams`` their SuperSpeed
companions offer 32 streams (MaxStreams 5).

The stick's VID:PID is 1209:0001, the pid.codes identifier reserved for tests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from usbtrace.devices.base import DeviceBackend, SuccessResults, TransferResult, make_result
from usbtrace.devices.faults import Fault
from usbtrace.devices.image import DiskImage
from usbtrace.devices.scsi_target import IN, NONE, OUT, Identity, Plan, ScsiTarget
from usbtrace.devices.uas import UAS_COMMAND, UAS_DATA_IN, UAS_DATA_OUT, UAS_STATUS, UasDevice
from usbtrace.errors import InputError
from usbtrace.storage import bot, scsi
from usbtrace.storage.scsi import Sense
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb.speed import SPEEDS, Speed
from usbtrace.usb.urb import (
    USBD_STATUS_DEVICE_GONE,
    USBD_STATUS_STALL_PID,
    USBD_STATUS_SUCCESS,
    USBD_STATUS_TIMEOUT,
)

VID, PID = 0x1209, 0x0001
BULK_IN, BULK_OUT = 0x81, 0x02
PROTOCOLS = ("bot", "uas")
BOT_ONLY_FAULTS = ("stall-in", "stall-out", "invalid-csw", "phase-error")
UAS_MAX_STREAMS = 5  # SuperSpeed companion bmAttributes MaxStreams: 2**5 streams
PIPE_USAGE = 0x24  # UAS r04 §5.3.3: the Pipe Usage descriptor's bDescriptorType
# (pipe id, endpoint) of the UAS alternate setting, in descriptor order
UAS_PIPES = ((1, UAS_COMMAND), (2, UAS_STATUS), (3, UAS_DATA_IN), (4, UAS_DATA_OUT))

# BOT device states and the events that move them (BOT 1.0 §5.3, §6)
BOT_TRANSITIONS: dict[tuple[str, str], str] = {
    ("command", "cbw_data_in"): "data_in",
    ("command", "cbw_data_out"): "data_out",
    ("command", "cbw_no_data"): "status",
    ("command", "cbw_invalid"): "reset_needed",
    ("data_in", "data_done"): "status",
    ("data_out", "data_done"): "status",
    ("status", "csw_sent"): "command",
    ("command", "reset"): "command",
    ("data_in", "reset"): "command",
    ("data_out", "reset"): "command",
    ("status", "reset"): "command",
    ("reset_needed", "reset"): "command",
}

HISTORY = 1024  # events a device remembers
_CBW_UNPACK = bot.CBW.unpack
_CSW_PACK = bot.CSW.pack
CASE_NAMES = tuple(f"case{n}" for n in range(14))  # BOT §6.7's cases 1..13, by number


class BulkOnlyDevice:
    """The device side of Bulk-Only Transport for one interface."""

    def __init__(self, luns: list[ScsiTarget], max_packet: int) -> None:
        self.luns = luns
        self.max_packet = max_packet
        self.state = "command"
        self.halted: set[int] = set()
        # the latest cases seen, for tests and logs: a stick may serve millions of commands
        self.history: deque[str] = deque(maxlen=HISTORY)
        self.commands = 0  # CBWs received, counted from 1
        self.on_command: Callable[[int, int], None] | None = None  # (number, LUN), per CBW
        self.csw_fault: str | None = None  # "invalid-csw" / "phase-error": this command's CSW
        self._csw = b""
        self._in_data: memoryview | bytes = b""
        self._in_pos = 0
        self._out_expected = 0
        self._out_buffer = bytearray()
        self._out_plan: Plan | None = None
        self._out_len = 0
        self._tag = 0
        self._lun = 0
        self._host_len = 0
        self._residue = 0
        self._status = 0

    def _move(self, event: str) -> None:
        self.state = BOT_TRANSITIONS[(self.state, event)]

    def _finish(self, residue: int, status: int) -> None:
        fault, self.csw_fault = self.csw_fault, None
        if fault == "phase-error":
            status = bot.CSW_STATUS_PHASE_ERROR
        self._csw = _CSW_PACK(bot.CSW_SIGNATURE, self._tag, residue, status)  # build_csw
        if fault == "invalid-csw":
            self._csw = b"USBX" + self._csw[4:]  # not "USBS": not valid (§6.3.1)

    # ---- bulk OUT: CBW or data-out ---------------------------------------------------

    def bulk_out(self, data: bytes | bytearray | memoryview) -> int:
        """Take an OUT transfer; returns a USBD status."""
        if BULK_OUT in self.halted or self.state == "reset_needed":
            return USBD_STATUS_STALL_PID
        if self.state == "command":
            self._command(data)
            return USBD_STATUS_SUCCESS
        if self.state == "data_out":
            received = self._out_buffer
            if not received and len(data) >= self._out_expected:
                self._complete_out(data)  # the whole phase in one transfer: not copied
            else:
                received += data
                if len(received) >= self._out_expected:
                    self._complete_out(received)
            return USBD_STATUS_SUCCESS
        # OUT data while the device wants to send: a phase error; stall the pipe.
        self.halted.add(BULK_OUT)
        return USBD_STATUS_STALL_PID

    def _command(self, data: bytes | bytearray | memoryview) -> None:
        # bot.parse_cbw and bot.cbw_meaningful on the unpacked fields: no Cbw made
        if len(data) == bot.CBW_LENGTH:
            sig, tag, host_len, flags, lun, cb_length, cb = _CBW_UNPACK(data)
        else:
            sig = None
        if sig != bot.CBW_SIGNATURE:
            # §6.6.1: not valid -> stall both pipes until Reset Recovery
            self.history.append("invalid_cbw")
            self.halted.update((BULK_IN, BULK_OUT))
            self._move("cbw_invalid")
            return
        luns = self.luns
        self._tag = tag
        self._lun = lun if lun < len(luns) else 0
        self.commands += 1
        self.csw_fault = None
        if self.on_command is not None:
            self.on_command(self.commands, self._lun)
        self._host_len = host_len
        host_dir = NONE if host_len == 0 else (IN if flags & bot.CBW_FLAGS_DATA_IN else OUT)
        if not bot.fields_meaningful(flags, lun, cb_length, len(luns) - 1):
            self.history.append("not_meaningful")
            plan = Plan(NONE, sense=Sense(scsi.ILLEGAL_REQUEST,
                                          0x25 if lun >= len(luns) else 0x24, 0))
            if lun < len(luns):
                luns[lun].sense = plan.sense  # type: ignore[assignment]
        else:
            plan = luns[lun].plan(cb[: cb_length & 0x1F])  # the CDB: 1..16 bytes
        dev_dir = plan.direction if plan.length else NONE
        dev_len = plan.length
        status = bot.CSW_STATUS_PASSED if plan.sense is None else bot.CSW_STATUS_FAILED

        if host_dir == NONE:
            if dev_dir == NONE:  # case 1
                self._case(1, 0, status, "cbw_no_data")
            else:  # cases 2, 3
                self._case(2 if dev_dir == IN else 3, 0, bot.CSW_STATUS_PHASE_ERROR, "cbw_no_data")
        elif host_dir == IN:
            if dev_dir == NONE:  # case 4: stall IN, report everything as residue
                self.halted.add(BULK_IN)
                self._case(4, host_len, status, "cbw_no_data")
            elif dev_dir == IN:
                assert plan.data is not None
                if dev_len <= host_len:  # cases 5, 6
                    self._in_data, self._in_pos = plan.data, 0
                    self._case(6 if dev_len == host_len else 5, host_len - dev_len, status,
                               "cbw_data_in")
                else:  # case 7: send what the host wants, then phase error
                    self._in_data, self._in_pos = plan.data[:host_len], 0
                    self._case(7, 0, bot.CSW_STATUS_PHASE_ERROR, "cbw_data_in")
            else:  # case 8
                self.halted.add(BULK_IN)
                self._case(8, 0, bot.CSW_STATUS_PHASE_ERROR, "cbw_no_data")
        else:  # host OUT
            if dev_dir == NONE:  # case 9: stall OUT
                self.halted.add(BULK_OUT)
                self._case(9, host_len, status, "cbw_no_data")
            elif dev_dir == IN:  # case 10
                self.halted.add(BULK_OUT)
                self._case(10, 0, bot.CSW_STATUS_PHASE_ERROR, "cbw_no_data")
            else:  # cases 11, 12, 13: receive the host's bytes
                self._out_expected = host_len
                if self._out_buffer:  # a phase a reset cut short left bytes behind
                    self._out_buffer = bytearray()
                self._out_plan = plan
                self._out_len = dev_len
                case = 12 if dev_len == host_len else (11 if dev_len < host_len else 13)
                self._case(case, max(host_len - dev_len, 0), status, "cbw_data_out")

    def _case(self, case: int, residue: int, status: int, event: str) -> None:
        self.history.append(CASE_NAMES[case])
        self._residue, self._status = residue, status
        self.state = BOT_TRANSITIONS[(self.state, event)]  # _move, inline
        if event == "cbw_no_data":
            self._finish(residue, status)

    def _complete_out(self, received: bytes | bytearray | memoryview) -> None:
        """The data-out phase is complete: ``received`` holds it (and maybe more)."""
        plan = self._out_plan
        assert plan is not None and plan.sink is not None
        status = self._status
        if self._out_len <= self._out_expected:
            sense = plan.sink(memoryview(received).cast("B")[: self._out_len])
            if sense is not None:
                status = bot.CSW_STATUS_FAILED
                self.luns[self._lun].sense = sense
        else:
            status = bot.CSW_STATUS_PHASE_ERROR
        self._out_plan = None
        if self._out_buffer:
            self._out_buffer = bytearray()
        self._finish(self._residue, status)
        self._move("data_done")

    # ---- bulk IN: data-in or CSW -----------------------------------------------------

    def bulk_in(self, buffer: bytearray | memoryview) -> tuple[int, int]:
        """Fill ``buffer``; returns (USBD status, bytes)."""
        if BULK_IN in self.halted or self.state == "reset_needed":
            return USBD_STATUS_STALL_PID, 0
        state = self.state
        if state == "data_in":
            data, pos = self._in_data, self._in_pos
            n = min(len(buffer), len(data) - pos)
            buffer[:n] = data[pos : pos + n]
            self._in_pos = pos + n
            if self._in_pos >= len(data):
                self._in_data = b""
                self._finish(self._residue, self._status)
                self.state = BOT_TRANSITIONS[("data_in", "data_done")]  # _move, inline
            return USBD_STATUS_SUCCESS, n
        if state == "status":
            csw = self._csw
            n = min(len(buffer), len(csw))
            buffer[:n] = csw[:n]
            self.state = BOT_TRANSITIONS[("status", "csw_sent")]  # _move, inline
            return USBD_STATUS_SUCCESS, n
        # Nothing to send: the device NAKs until the host gives up.
        return USBD_STATUS_TIMEOUT, 0

    def halt(self, endpoint: int) -> None:
        """The device stalls ``endpoint`` on its own, as on an error inside a transfer.

        A device that stalls the pipe of its data phase has ended that phase
        (BOT 1.0 §6.7.2, §6.7.3): once the host clears the halt it reads the
        CSW, which reports the untransferred bytes as residue and a failed
        command; REQUEST SENSE then says ABORTED COMMAND, DATA PHASE ERROR, so
        the host may try the command again.
        """
        self.halted.add(endpoint)
        if endpoint == BULK_IN and self.state == "data_in":
            residue = self._host_len - self._in_pos
            self._in_data = b""
        elif endpoint == BULK_OUT and self.state == "data_out":
            residue = self._host_len - len(self._out_buffer)
            self._out_plan = None  # what arrived so far is not written
            self._out_buffer = bytearray()
        else:
            return  # no data phase to end: the halt stalls the next transfer only
        self.history.append("data_stalled")
        self.luns[self._lun].sense = Sense(scsi.ABORTED_COMMAND, 0x4B, 0)  # DATA PHASE ERROR
        self._finish(residue, bot.CSW_STATUS_FAILED)
        self._move("data_done")

    def clear_halt(self, endpoint: int) -> None:
        self.halted.discard(endpoint)

    def reset(self) -> None:
        """Bulk-Only Mass Storage Reset (§3.1): ready for a CBW; halts stay (§5.3.4)."""
        self.history.append("reset")
        self._in_data = b""
        self._out_plan = None
        self._move("reset")


@dataclass
class UsbFaults:
    """Faults of the USB side: stalls and disconnects."""

    stall_next: dict[int, int] = field(default_factory=dict)  # endpoint -> how many
    disconnect_after_bytes: int | None = None  # unplug once this many bulk bytes moved
    bulk_bytes: int = 0


class SimulatedStick(DeviceBackend):
    """A USB flash drive: one configuration, one BOT interface, two bulk endpoints; with
    ``protocol="uas"`` a UAS alternate setting besides (``streams``: SuperSpeed streams)."""

    def __init__(
        self,
        image: DiskImage,
        speed: str = "super",
        identity: Identity | None = None,
        luns: int = 1,
        protocol: str = "bot",
        streams: bool = False,
    ) -> None:
        if speed not in SPEEDS:
            raise ValueError(f"speed must be one of {', '.join(SPEEDS)}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if streams and (protocol != "uas" or speed != "super"):
            raise ValueError("bulk streams need the UAS protocol at super speed")
        self.speed: Speed = SPEEDS[speed]
        self.protocol = protocol
        self.alternate_setting = 0  # 0: Bulk-Only; 1: UAS (SET_INTERFACE chooses)
        self.image = image
        self.identity = identity or Identity()
        self.targets = [ScsiTarget(image, self.identity) for _ in range(luns)]
        self.bot = BulkOnlyDevice(self.targets, self.speed.bulk_max_packet)
        self.uas = UasDevice(self.targets, streams) if protocol == "uas" else None
        self.faults = UsbFaults()
        self.injected: list[Fault] = []  # what ``inject`` armed, by command number
        self._undo: list[Callable[[], None]] = []  # ends the one-off faults of a command
        self._results = SuccessResults(self.speed)  # successful bulk results, by length
        self.address = 0
        self.configuration = 0
        self.connected = True
        self.on_disconnect: Callable[[], None] | None = None
        self.strings = {1: "usbtrace", 2: self.identity.product, 3: self.identity.serial}
        self.remote_wakeup = False  # bmAttributes bit 5: it can signal resume when asleep

    # ---- fault injection -------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Arm ``fault``: bad sectors now, everything else at the commands it names."""
        if self.uas is not None and fault.kind in BOT_ONLY_FAULTS:
            raise InputError(f"--fault {fault.kind} is a Bulk-Only fault (a stall or a CSW); "
                             "a UAS stick takes media faults and disconnect only")
        if fault.kind == "media-error":
            last = fault.first if fault.last is None else fault.last
            for target in self.targets:
                target.faults.bad_lbas.update(range(fault.first, last + 1))
            return
        self.injected.append(fault)
        # each CBW calls _on_command from now on: until a fault is armed, none needs to
        self.bot.on_command = self._on_command
        if self.uas is not None:
            self.uas.on_command = self._on_command

    def _on_command(self, number: int, lun: int) -> None:
        """A CBW arrived: end the last command's one-off faults, arm this one's."""
        if not self.injected and not self._undo:  # no fault armed (every CBW asks)
            return
        for undo in self._undo:
            undo()
        self._undo.clear()
        media = self.targets[lun].faults
        for fault in self.injected:
            if not fault.hits(number):
                continue
            kind = fault.kind
            if kind == "stall-in":
                self.faults.stall_next[BULK_IN] = 1
            elif kind == "stall-out":
                self.faults.stall_next[BULK_OUT] = 1
            elif kind in ("invalid-csw", "phase-error"):
                self.bot.csw_fault = kind
            elif kind == "disconnect":
                self.faults.disconnect_after_bytes = self.faults.bulk_bytes
            elif kind == "unit-attention":
                media.unit_attention = True  # reported once, by the next command that may
            elif kind == "not-ready" and not media.not_ready:
                media.not_ready = True
                if not fault.persistent:
                    self._undo.append(partial(setattr, media, "not_ready", False))
            elif kind == "write-protect" and not media.write_protected:
                media.write_protected = True
                if not fault.persistent:
                    self._undo.append(partial(setattr, media, "write_protected", False))

    # ---- descriptors -------------------------------------------------------------------

    def device_descriptor(self) -> bytes:
        return d.DeviceDescriptor.build(dict(
            bcdUSB=self.speed.bcd_usb, bDeviceClass=0, bDeviceSubClass=0, bDeviceProtocol=0,
            bMaxPacketSize0=9 if self.speed.name == "super" else 64,
            idVendor=VID, idProduct=PID, bcdDevice=0x0100,
            iManufacturer=1, iProduct=2, iSerialNumber=3, bNumConfigurations=1,
        ))

    def configuration_descriptor(self) -> bytes:
        mps = self.speed.bulk_max_packet
        ss = self.speed.name == "super"
        interface = d.InterfaceDescriptor.build(dict(
            bInterfaceNumber=0, bAlternateSetting=0, bNumEndpoints=2,
            bInterfaceClass=0x08, bInterfaceSubClass=0x06, bInterfaceProtocol=0x50,
            iInterface=0,
        ))
        body = interface
        for address in (BULK_IN, BULK_OUT):
            body += d.EndpointDescriptor.build(dict(
                bEndpointAddress=address, bmAttributes=2, wMaxPacketSize=mps, bInterval=0))
            if ss:
                body += d.SuperSpeedEndpointCompanionDescriptor.build(dict(
                    bMaxBurst=15, bmAttributes=0, wBytesPerInterval=0))
        if self.uas is not None:
            body += self._uas_setting_descriptors()
        header = d.ConfigurationDescriptor.build(dict(
            bDescriptorType=d.CONFIGURATION, wTotalLength=9 + len(body), bNumInterfaces=1,
            bConfigurationValue=1, iConfiguration=0,
            bmAttributes=0x80 | (0x20 if self.remote_wakeup else 0), bMaxPower=50,
        ))
        return header + body

    def _uas_setting_descriptors(self) -> bytes:
        """Alternate setting 1: UAS (class 8, subclass 6, protocol 0x62), four bulk
        endpoints, each followed (after its SuperSpeed companion) by a Pipe Usage
        descriptor: command 1, status 2, data-in 3, data-out 4 (UAS r04 §5.3.3)."""
        assert self.uas is not None
        ss = self.speed.name == "super"
        body = d.InterfaceDescriptor.build(dict(
            bInterfaceNumber=0, bAlternateSetting=1, bNumEndpoints=4,
            bInterfaceClass=0x08, bInterfaceSubClass=0x06, bInterfaceProtocol=0x62,
            iInterface=0,
        ))
        for pipe_id, address in UAS_PIPES:
            body += d.EndpointDescriptor.build(dict(
                bEndpointAddress=address, bmAttributes=2, wMaxPacketSize=self.speed.bulk_max_packet,
                bInterval=0))
            if ss:
                streams = UAS_MAX_STREAMS if self.uas.streams and pipe_id != 1 else 0
                body += d.SuperSpeedEndpointCompanionDescriptor.build(dict(
                    bMaxBurst=15 if pipe_id > 2 else 0, bmAttributes=streams,
                    wBytesPerInterval=0))
            body += bytes([4, PIPE_USAGE, pipe_id, 0])
        return body

    def bos_descriptor(self) -> bytes:
        usb2 = bytes([7, d.DEVICE_CAPABILITY, 2]) + (0x02).to_bytes(4, "little")
        ss = bytes([10, d.DEVICE_CAPABILITY, 3, 0, 0x0E, 0x00, 1, 10, 0xFF, 0x07])
        caps = usb2 + ss
        return d.BosDescriptor.build(dict(wTotalLength=5 + len(caps), bNumDeviceCaps=2)) + caps

    def _get_descriptor(self, value: int, index: int) -> bytes | None:
        kind, idx = value >> 8, value & 0xFF
        if kind == d.DEVICE:
            return self.device_descriptor()
        if kind == d.CONFIGURATION and idx == 0:
            return self.configuration_descriptor()
        if kind == d.STRING:
            if idx == 0:
                return d.build_langids(0x0409)
            text = self.strings.get(idx)
            return d.build_string(text) if text is not None else None
        if kind == d.DEVICE_QUALIFIER and self.speed.name == "high":
            return d.DeviceQualifierDescriptor.build(dict(
                bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0, bDeviceProtocol=0,
                bMaxPacketSize0=64, bNumConfigurations=1, bReserved=0))
        if kind == d.BOS and self.speed.bcd_usb >= 0x0210:
            return self.bos_descriptor()
        return None  # STALL: a full-speed-only device has no qualifier, etc.

    # ---- DeviceBackend -------------------------------------------------------------------

    def _gone(self) -> TransferResult:
        return TransferResult(USBD_STATUS_DEVICE_GONE, 0, self.speed.latency_ns)

    def control(self, setup: bytes, buffer: bytearray | memoryview) -> TransferResult:
        if not self.connected:
            return self._gone()
        bm, req, value, index, length = std.SETUP.unpack(setup)
        kind, recipient = (bm >> 5) & 3, bm & 0x1F
        reply: bytes | None = b""
        if kind == 0:
            if req == std.GET_DESCRIPTOR:
                reply = self._get_descriptor(value, index)
            elif req == std.SET_ADDRESS:
                self.address = value & 0x7F
            elif req == std.SET_CONFIGURATION:
                if value not in (0, 1):
                    reply = None
                self.configuration = value
                self.alternate_setting = 0  # USB 2.0 §9.1.1.5: every interface to setting 0
            elif req == std.GET_CONFIGURATION:
                reply = bytes([self.configuration])
            elif req == std.GET_STATUS:
                halted = recipient == 2 and index in self._halted()
                reply = bytes([1 if halted else 0, 0])
            elif req == std.CLEAR_FEATURE and recipient == 2 and value == std.ENDPOINT_HALT:
                if self._uas_active():
                    assert self.uas is not None
                    self.uas.clear_halt(index & 0xFF)
                else:
                    self.bot.clear_halt(index & 0xFF)
            elif req == std.SET_FEATURE and recipient == 2 and value == std.ENDPOINT_HALT:
                self._halted().add(index & 0xFF)
            elif req in (std.GET_INTERFACE,):
                reply = bytes([self.alternate_setting])
            elif req == std.SET_INTERFACE:
                if index != 0 or value > (1 if self.uas is not None else 0):
                    reply = None  # no such interface or setting: STALL
                else:
                    self.alternate_setting = value
                    if self.uas is not None:
                        self.uas.reset()  # a new setting starts with no tasks
            elif req in (std.SET_SEL, std.SET_ISOCH_DELAY,
                         std.SET_FEATURE, std.CLEAR_FEATURE):
                pass
            else:
                reply = None
        elif kind == 1 and recipient == 1 and index == 0:
            if req == std.BULK_ONLY_MASS_STORAGE_RESET and length == 0 and value == 0:
                self.bot.reset()
            elif req == std.GET_MAX_LUN and length == 1:
                reply = bytes([len(self.targets) - 1])
            else:
                reply = None
        else:
            reply = None
        if reply is None:
            return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
        if bm & 0x80:
            n = min(len(reply), length, len(buffer))
            buffer[:n] = reply[:n]
        else:
            n = length
        return TransferResult(USBD_STATUS_SUCCESS, n, self.speed.transfer_ns(n))

    def _bulk_fault(self, endpoint: int, length: int) -> TransferResult | None:
        faults = self.faults
        if faults.stall_next.get(endpoint):
            faults.stall_next[endpoint] -= 1
            self.bot.halt(endpoint)
        limit = faults.disconnect_after_bytes
        if limit is not None and faults.bulk_bytes + length > limit:
            self.unplug()
            return self._gone()
        faults.bulk_bytes += length
        return None

    def _uas_active(self) -> bool:
        return self.uas is not None and self.alternate_setting == 1

    def _halted(self) -> set[int]:
        return self.uas.halted if self.uas is not None and self._uas_active() else \
            self.bot.halted

    def stream_out(self, endpoint: int, stream: int,
                   data: bytearray | memoryview) -> TransferResult:
        if not self.connected:
            return self._gone()
        uas = self.uas
        if uas is None or not self._uas_active() or endpoint not in (UAS_COMMAND, UAS_DATA_OUT):
            return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
        fault = self._bulk_fault(endpoint, len(data))
        if fault is not None:
            return fault
        if endpoint == UAS_COMMAND:
            status = uas.command_out(data)
        else:
            status = uas.data_out(data, stream)
        n = len(data) if status == USBD_STATUS_SUCCESS else 0
        return TransferResult(status, n, self.speed.transfer_ns(n))

    def stream_in(self, endpoint: int, stream: int,
                  buffer: bytearray | memoryview) -> TransferResult:
        if not self.connected:
            return self._gone()
        uas = self.uas
        if uas is None or not self._uas_active() or endpoint not in (UAS_STATUS, UAS_DATA_IN):
            return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
        if endpoint == UAS_STATUS:
            status, n = uas.status_in(buffer, stream)
        else:
            status, n = uas.data_in(buffer, stream)
        if n:
            fault = self._bulk_fault(endpoint, n)
            if fault is not None:
                return fault
        return TransferResult(status, n, self.speed.transfer_ns(n))

    # The two bulk entry points run for every URB of a recording or a replay: the checks
    # of _uas_active and _bulk_fault are made inline, and the fault path is entered only
    # when a fault is armed (every transfer's bytes are still counted); the result is
    # made without TransferResult's Python-level __new__ and the duration without a
    # call (the same expression as Speed.transfer_ns, so the same nanoseconds), and a
    # successful transfer's is made once for each length (``SuccessResults``).

    def bulk_out(self, endpoint: int, data: bytearray | memoryview) -> TransferResult:
        if self.uas is not None and self.alternate_setting == 1:  # _uas_active
            return self.stream_out(endpoint, 0, data)
        if not self.connected:
            return self._gone()
        if endpoint != BULK_OUT:
            return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
        faults = self.faults
        if faults.stall_next or faults.disconnect_after_bytes is not None:
            fault = self._bulk_fault(endpoint, len(data))
            if fault is not None:
                return fault
        else:
            faults.bulk_bytes += len(data)
        status = self.bot.bulk_out(data)
        if status == USBD_STATUS_SUCCESS:
            return self._results[len(data)]
        speed = self.speed  # Speed.transfer_ns, inline
        return make_result((status, 0, speed.latency_ns))

    def bulk_in(self, endpoint: int, buffer: bytearray | memoryview) -> TransferResult:
        if self.uas is not None and self.alternate_setting == 1:  # _uas_active
            return self.stream_in(endpoint, 0, buffer)
        if not self.connected:
            return self._gone()
        if endpoint != BULK_IN:
            return TransferResult(USBD_STATUS_STALL_PID, 0, self.speed.latency_ns)
        faults = self.faults
        if faults.stall_next or faults.disconnect_after_bytes is not None:
            fault = self._bulk_fault(endpoint, len(buffer))
            if fault is not None:
                return fault
        else:
            faults.bulk_bytes += len(buffer)
        status, n = self.bot.bulk_in(buffer)
        if status == USBD_STATUS_SUCCESS:
            return self._results[n]
        speed = self.speed  # Speed.transfer_ns, inline
        return make_result((status, n, speed.latency_ns + int(n * 1e9 / speed.bytes_per_second)))

    def clear_halt(self, endpoint: int) -> TransferResult:
        setup = std.build_setup(0x02, std.CLEAR_FEATURE, std.ENDPOINT_HALT, endpoint, 0)
        return self.control(setup, bytearray())

    def reset_port(self) -> None:
        self.address = 0
        self.configuration = 0
        self.alternate_setting = 0
        if self.uas is not None:
            self.uas.reset()
        self.bot.halted.clear()
        if self.bot.state != "command":
            self.bot.reset()

    def unplug(self) -> None:
        """Pull the stick out: every transfer from now on fails with DEVICE_GONE."""
        if self.connected:
            self.connected = False
            if self.on_disconnect is not None:
                self.on_disconnect()

    def close(self) -> None:
        self.image.close()
