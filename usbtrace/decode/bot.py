"""Stage 2: Bulk-Only Transport exchanges -> SCSI commands.

Per device (bus, address), a command starts at a valid CBW on a bulk OUT
endpoint, collects its data phase, and ends at the CSW whose tag matches.
The signature decides what a transfer is, never its length alone: a 31-byte
data-in reply is data, and OUT data that the command still expects is data
even if it happens to look like a CBW.  Robust to what real captures hold:

* a new CBW while a command still waits for its CSW: the old one ends with
  status ``missing``; so does one open when a Bulk-Only reset arrives or the
  capture ends;
* a CSW that is not valid (not 13 bytes, no "USBS" signature) where only the
  CSW can come, or one with another command's tag: status ``invalid``, which
  says the device answered wrongly, not that the answer was never seen;
* stalls (the data phase ends, the CSW follows after CLEAR_FEATURE);
* truncated payloads (``data_truncated``), short data and residues as sent;
* CHECK CONDITION followed by REQUEST SENSE: the sense key, ASC and ASCQ are
  copied onto the failed command;
* composite devices: once a CBW and its CSW show the Bulk-Only pipes, bulk
  traffic on the device's other endpoints (a modem's serial port) is left alone;
  SET_CONFIGURATION (another device at the address, say) makes them learnt anew.

Transfers are taken in capture order of the record that carries their bytes
(see ``decode.pairing``): a bulk OUT transfer at its submission, before its
completion is known.  Its bytes count at the length submitted until
``completed`` brings the completion (the length the device took, a stall); in
a capture that holds no OUT completions they stay at the length submitted.

Sans-I/O: ``take(exchange, sealed)`` returns the commands it finished.
"""

from __future__ import annotations

import struct
from collections.abc import Container
from dataclasses import dataclass, field

from usbtrace.decode.pairing import Exchange
from usbtrace.records import BULK, CONTROL
from usbtrace.storage import bot, scsi
from usbtrace.storage.scsi import CdbInfo, Sense
from usbtrace.usb.urb import USBD_STATUS_STALL_PID

STATUS_NAMES = bot.CSW_STATUS_NAMES


@dataclass(slots=True)
class ScsiCommand:
    seq: int
    bus: int | None
    device: int | None
    lun: int
    tag: int
    cdb: bytes
    info: CdbInfo
    data_direction: str  # "in", "out", "none"
    expected_length: int
    submitted_at: float | None
    irp_id: int
    cbw_seq: int
    residue: int | None = None
    status: str = "missing"
    sense: Sense | None = None
    completed_at: float | None = None
    data_parts: list[bytes] = field(default_factory=list)
    data_length: int = 0
    data_truncated: bool = False
    data_stalled: bool = False
    csw_seq: int | None = None
    # OUT transfers counted at their submission, by exchange seq: the length counted
    unconfirmed: dict[int, int] = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return b"".join(self.data_parts)


@dataclass(slots=True)
class _DeviceState:
    command: ScsiCommand | None = None
    awaiting_sense: ScsiCommand | None = None
    commands: int = 0  # CBWs seen: only then is a stray transfer a Bulk-Only orphan
    # the Bulk-Only pipes, once traffic shows them: the CBW's OUT endpoint, and the IN
    # endpoint of a CSW that carried the open command's tag; other bulk pipes of the
    # device (a composite device's other functions) are not Bulk-Only traffic
    out_pipe: int | None = None
    in_pipe: int | None = None
    strays: int = 0  # bulk transfers with bytes that belonged to no command


# A CBW's bytes up to and including the CDB's opcode: signature, tag, transfer length,
# flags, LUN, CB length (BOT 1.0 §5.1), then CBWCB[0]
CUT_CBW_KNOWN = 16


def _cut_cbw(x: Exchange) -> bot.Cbw | None:
    """The CBW of a 31-byte OUT transfer that the capture cut short (a snapshot length,
    tcpdump -s or Wireshark's packet limit: only the first bytes of every record are
    kept), when the bytes kept reach the CDB's opcode: its tag, direction and length
    keep the decoder in step with the data and the CSW, which fit in any snapshot that
    holds this much.  The CDB is what was kept of it, so the rest (the LBA, the blocks)
    is unknown rather than guessed; ``data_truncated`` says so."""
    data = x.data
    if x.requested_length != bot.CBW_LENGTH or len(data) < CUT_CBW_KNOWN or \
            data[:4] != b"USBC":
        return None
    tag, length, flags, lun, cb_len = struct.unpack_from("<IIBBB", data, 4)
    if not 1 <= cb_len & 0x1F <= 16:
        return None
    return bot.Cbw(tag, length, flags, lun, cb_len, bytes(data[15 : 15 + (cb_len & 0x1F)]))


class BotDecoder:
    def __init__(self) -> None:
        self._devices: dict[tuple[int | None, int | None], _DeviceState] = {}
        self._seq = 0
        # OUT transfers of open commands whose completion may still come, by exchange seq
        self._unconfirmed: dict[int, ScsiCommand] = {}

    def orphans(self, storage: Container[tuple[int | None, int | None]] = ()) -> int:
        """CSWs or data with no command (capture started mid-command), on devices that
        sent a CBW or that ``storage`` names (their descriptors say mass storage): a
        network adapter's or a camera's bulk traffic is none of Bulk-Only's business."""
        return sum(s.strays for key, s in self._devices.items() if s.commands or key in storage)

    def undecoded(self, described: Container[tuple[int | None, int | None]] = ()
                  ) -> dict[tuple[int | None, int | None], int]:
        """Bulk transfers with bytes, by device, on devices that sent no CBW and whose
        descriptors ``described`` does not hold: nothing in the capture says what they
        carry (a capture that began after enumeration, of a UAS device or another
        class), so nothing was decoded from them, and the session must say so."""
        return {key: s.strays for key, s in self._devices.items()
                if s.strays and not s.commands and key not in described}

    def take(self, x: Exchange, sealed: bool) -> list[ScsiCommand]:
        """One step from ``Pairer.feed``: an exchange at the record that carries its
        bytes, or the later completion of one already taken."""
        if sealed and x.early:
            return self.completed(x)
        return self.feed(x)

    def completed(self, x: Exchange) -> list[ScsiCommand]:
        """The completion (or the certainty that none will come) of a bulk OUT transfer
        already fed at its submission: correct the length counted and note a stall."""
        cmd = self._unconfirmed.pop(x.seq, None)
        if cmd is None:
            return []
        counted = cmd.unconfirmed.pop(x.seq, 0)
        if x.complete is not None:
            if x.actual_length is not None:
                cmd.data_length += x.actual_length - counted
            cmd.data_stalled |= x.complete.urb_status == USBD_STATUS_STALL_PID
        return []

    def feed(self, x: Exchange) -> list[ScsiCommand]:
        first = x.first
        kind = first.transfer_type
        if kind == BULK:
            return self.bulk(x)
        if kind == CONTROL and first.setup and len(first.setup) >= 2:
            setup = first.setup
            if setup[0] == 0x00 and setup[1] == 0x09:  # SET_CONFIGURATION: pipes anew
                state = self._devices.get((first.bus, first.device))
                if state is not None:
                    state.out_pipe = state.in_pipe = None
            # Bulk-Only Mass Storage Reset: an open command will never see its CSW
            if setup[0] == 0x21 and setup[1] == 0xFF:
                state = self._devices.get((first.bus, first.device))
                if state is not None and state.command is not None:
                    out = self._end(state, state.command)
                    state.command = None
                    return out
        return []

    def bulk(self, x: Exchange) -> list[ScsiCommand]:
        """``feed`` for a bulk transfer (most of them: the writer calls it at once)."""
        first = x.first
        key = (first.bus, first.device)
        state = self._devices.get(key)
        if state is None:
            state = self._devices[key] = _DeviceState()
        cmd = state.command
        data = x.data
        stalled = x.complete is not None and x.complete.urb_status == USBD_STATUS_STALL_PID
        out: list[ScsiCommand] = []
        endpoint = first.endpoint
        if not x.direction_in:
            # another interface's pipe (a modem's serial port beside the storage)
            foreign = state.out_pipe is not None and endpoint != state.out_pipe
            wants_out = (not foreign and cmd is not None and cmd.data_direction == "out"
                         and cmd.data_length < cmd.expected_length and cmd.csw_seq is None)
            if not wants_out and (len(data) == bot.CBW_LENGTH or x.truncated):
                cbw = bot.parse_cbw(data) if len(data) == bot.CBW_LENGTH else _cut_cbw(x)
                if cbw is not None:
                    if cmd is not None:
                        out += self._end(state, cmd)
                    if endpoint != state.out_pipe:  # a new pipe pair: learn its IN anew
                        state.out_pipe, state.in_pipe = endpoint, None
                    state.command = self._start(x, cbw)
                    state.command.data_truncated = x.truncated
                    return out
            if foreign:
                return out
            if cmd is not None and cmd.data_direction == "out":
                self._add_data(cmd, x, stalled)
            elif data:
                state.strays += 1
            return out
        # IN
        # None unless 13 bytes with the "USBS" signature (most IN transfers are data: no call)
        csw = bot.parse_csw(data) if len(data) == bot.CSW_LENGTH else None
        if state.in_pipe is not None and endpoint != state.in_pipe and not (
                cmd is not None and csw is not None and csw.tag == cmd.tag):
            return out  # another interface's pipe
        if cmd is None:
            if data:
                state.strays += 1
            return out
        if csw is not None and csw.tag == cmd.tag:
            state.in_pipe = endpoint  # the pipe the device answers on, from now on
            cmd.residue = csw.residue
            cmd.status = STATUS_NAMES.get(csw.status, f"0x{csw.status:02x}")
            return self._finish(state, cmd, x)
        if csw is not None or (self._awaits_csw(cmd) and self._csw_attempt(x, stalled)):
            # BOT §6.3: a CSW that is not valid (length, signature) or not meaningful
            # (another command's tag) where this command's CSW belongs
            cmd.status = "invalid"
            return self._finish(state, cmd, x)
        if cmd.data_direction == "in":
            self._add_data(cmd, x, stalled)
        elif data:
            state.strays += 1
        return out

    @staticmethod
    def _awaits_csw(cmd: ScsiCommand) -> bool:
        """True once nothing but the CSW can come on the bulk IN pipe."""
        return cmd.data_direction != "in" or cmd.data_stalled or \
            cmd.data_length >= cmd.expected_length

    @staticmethod
    def _csw_attempt(x: Exchange, stalled: bool) -> bool:
        """An IN transfer that delivered bytes we can judge: a stalled or empty read is
        retried by the host (BOT §6.7.2), and one whose bytes the capture lost is unknown."""
        return x.complete is not None and not stalled and not x.truncated and bool(x.data)

    def _finish(self, state: _DeviceState, cmd: ScsiCommand, x: Exchange) -> list[ScsiCommand]:
        """End ``cmd`` at the CSW transfer ``x``."""
        cmd.completed_at = x.completed_at
        cmd.csw_seq = x.seq
        state.command = None
        return self._end(state, cmd)

    def _start(self, x: Exchange, cbw: bot.Cbw) -> ScsiCommand:
        self._seq += 1
        first = x.first
        state = self._devices.get((first.bus, first.device))
        if state is not None:
            state.commands += 1
        direction = "none" if cbw.data_transfer_length == 0 else ("in" if cbw.data_in else "out")
        return ScsiCommand(
            self._seq, first.bus, first.device, cbw.lun & 0x0F, cbw.tag, cbw.cdb,
            scsi.decode_cdb(cbw.cdb), direction, cbw.data_transfer_length,
            x.submitted_at if x.submitted_at is not None else x.completed_at, x.irp_id, x.seq,
        )

    def _add_data(self, cmd: ScsiCommand, x: Exchange, stalled: bool) -> None:
        data = x.data
        if data:
            cmd.data_parts.append(data)
        if x.complete is None and x.early:
            # an OUT transfer at its submission: the length asked for, until its completion
            counted = x.requested_length if x.requested_length is not None else len(data)
            cmd.unconfirmed[x.seq] = counted
            self._unconfirmed[x.seq] = cmd
        else:
            actual = x.actual_length
            counted = actual if actual is not None else len(data)
        cmd.data_length += counted
        cmd.data_truncated |= x.truncated
        cmd.data_stalled |= stalled

    def _end(self, state: _DeviceState, cmd: ScsiCommand) -> list[ScsiCommand]:
        """Emit ``cmd``, holding a CHECK CONDITION back until its REQUEST SENSE."""
        for seq in cmd.unconfirmed:  # a completion after the command ended changes nothing
            self._unconfirmed.pop(seq, None)
        cmd.unconfirmed.clear()
        out: list[ScsiCommand] = []
        held = state.awaiting_sense
        if held is not None:
            state.awaiting_sense = None
            if cmd.info.opcode == scsi.REQUEST_SENSE and cmd.status == "good":
                held.sense = scsi.parse_sense(cmd.data)
            out.append(held)
        if cmd.info.opcode == scsi.REQUEST_SENSE and cmd.status == "good" and cmd.data:
            cmd.sense = scsi.parse_sense(cmd.data)
        if cmd.status == "check_condition":
            state.awaiting_sense = cmd
        else:
            out.append(cmd)
        return out

    def flush(self) -> list[ScsiCommand]:
        out: list[ScsiCommand] = []
        for state in self._devices.values():
            if state.command is not None:
                out += self._end(state, state.command)
                state.command = None
            if state.awaiting_sense is not None:
                out.append(state.awaiting_sense)
                state.awaiting_sense = None
        return sorted(out, key=lambda c: c.seq)
