"""A SCSI direct-access logical unit over a disk image (SPC-4 / SBC-3).

Each opcode has a handler in ``ScsiTarget.HANDLERS``.  A handler does not move
data itself: it returns a :class:`Plan` that says what the device intends —
no data, n bytes in (and which), or n bytes out (and where they go) — because
the Bulk-Only layer must compare that intent with the host's expectation
(BOT §6.7, the thirteen cases) before any data moves.

Every CDB is checked before a handler reads it: an empty or unknown operation
code is CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE; a
CDB shorter than its group's length (SPC-4 §4.2.5.1) or a field out of bounds
is INVALID FIELD IN CDB; blocks past the end are LOGICAL BLOCK ADDRESS OUT OF
RANGE.  Whatever a host sends, the answer is a status, never an exception.

Faults (media errors, not ready, write protect) are injected here; stalls and
disconnects belong to the USB layer above.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from usbtrace.devices.image import DiskImage
from usbtrace.storage import scsi
from usbtrace.storage.scsi import Sense

NONE, IN, OUT = 0, 1, 2

RC10 = struct.Struct(">II")
RC16 = struct.Struct(">QIBB2x16x")


def _rw6(cdb: bytes) -> tuple[int, int]:
    """SBC-3 §5.12 READ(6)/WRITE(6): a 21-bit LBA; a length of 0 means 256 blocks."""
    return ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3], cdb[4] or 256


# (LBA, blocks) of a READ, WRITE or VERIFY CDB, as ``scsi.decode_cdb`` reads them but
# without making a CdbInfo: plan() has checked the CDB's length for its group, so
# each unpacks whole (``test_scsi_target`` holds them to ``decode_cdb``)
TRANSFER_FIELDS: dict[int, Callable[[bytes], tuple[int, int]]] = {
    scsi.READ_6: _rw6,
    scsi.WRITE_6: _rw6,
    scsi.READ_10: struct.Struct(">xxIxH").unpack_from,
    scsi.WRITE_10: struct.Struct(">xxIxH").unpack_from,
    scsi.VERIFY_10: struct.Struct(">xxIxH").unpack_from,
    scsi.READ_12: struct.Struct(">xxII").unpack_from,
    scsi.WRITE_12: struct.Struct(">xxII").unpack_from,
    scsi.READ_16: struct.Struct(">xxQI").unpack_from,
    scsi.WRITE_16: struct.Struct(">xxQI").unpack_from,
}

# SPC-4 §4.2.5.1: the operation code's group fixes the CDB's length
GROUP_CDB_LENGTH = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}
# The most blocks one READ/WRITE/VERIFY may move (READ(10)'s own limit): a command asking
# for more (READ(16) can ask for 2^32 blocks) fails with INVALID FIELD IN CDB, as SBC-3
# §5.15 has it for a transfer length above the device's maximum, instead of the device
# setting aside terabytes for it.
MAX_TRANSFER_BLOCKS = 0xFFFF

INVALID_COMMAND_OPERATION_CODE = 0x20
LBA_OUT_OF_RANGE = 0x21
INVALID_FIELD_IN_CDB = 0x24
# answered even when not ready (SPC-4 §5.9); and what runs with no medium present
ALWAYS_ANSWERED = frozenset({scsi.INQUIRY, scsi.REQUEST_SENSE})
WITHOUT_MEDIUM = frozenset({scsi.START_STOP_UNIT, scsi.PREVENT_ALLOW_MEDIUM_REMOVAL,
                            scsi.READ_FORMAT_CAPACITIES})


NO_SENSE = Sense(0, 0, 0)  # frozen: one for every good command (a frozen init is slow)


@dataclass(slots=True)
class Plan:
    direction: int
    length: int = 0
    data: bytes | memoryview | None = None  # what an IN phase sends
    sink: Callable[[memoryview], Sense | None] | None = None  # takes an OUT phase's data
    sense: Sense | None = None  # set: CHECK CONDITION

    @property
    def good(self) -> bool:
        return self.sense is None


def _check(key: int, asc: int, ascq: int = 0) -> Plan:
    return Plan(NONE, sense=Sense(key, asc, ascq))


@dataclass
class MediaFaults:
    """Faults of the medium, switched on by tests and the CLI."""

    bad_lbas: set[int] = field(default_factory=set)
    not_ready: bool = False
    write_protected: bool = False
    unit_attention: bool = False


@dataclass
class Identity:
    vendor: str = "USBTRACE"
    product: str = "Simulated Stick"
    revision: str = "1.00"
    serial: str = "UT0000000001"


class ScsiTarget:
    """One logical unit: decode a CDB, check it, and plan the command."""

    def __init__(self, image: DiskImage, identity: Identity | None = None) -> None:
        self.image = image
        self.identity = identity or Identity()
        self.faults = MediaFaults()
        self.sense = Sense(0, 0, 0)  # reported by the next REQUEST SENSE
        self.prevent_removal = False
        self.ejected = False
        self.commands = 0

    # ---- entry point ------------------------------------------------------------

    def plan(self, cdb: bytes) -> Plan:
        """Plan the command in ``cdb``; remember its sense for REQUEST SENSE."""
        self.commands += 1
        opcode = cdb[0] if cdb else None
        handler = self.HANDLERS.get(opcode) if opcode is not None else None
        faults = self.faults
        if opcode is None or handler is None:
            plan = _check(scsi.ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE)
        elif len(cdb) < GROUP_CDB_LENGTH.get(opcode >> 5, 16):
            plan = _check(scsi.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)  # cut short
        elif opcode in ALWAYS_ANSWERED:
            plan = handler(self, cdb)  # answer even when not ready (SPC-4 §5.9)
        elif faults.unit_attention:
            faults.unit_attention = False
            plan = _check(scsi.UNIT_ATTENTION, 0x28)
        elif (faults.not_ready or self.ejected) and opcode not in WITHOUT_MEDIUM:
            plan = _check(scsi.NOT_READY, 0x3A)  # medium not present
        else:
            plan = handler(self, cdb)
        sense = plan.sense
        if opcode != scsi.REQUEST_SENSE or sense is not None:  # a bad REQUEST SENSE too
            self.sense = sense or NO_SENSE
        return plan

    # ---- helpers -----------------------------------------------------------------

    def _range(self, lba: int, blocks: int) -> Plan | None:
        if lba + blocks > self.image.block_count or blocks > MAX_TRANSFER_BLOCKS:
            return self._out_of_range(lba, blocks)
        return None

    def _out_of_range(self, lba: int, blocks: int) -> Plan:
        """What ``_range`` answers for blocks past the end or more than one command moves."""
        if lba + blocks > self.image.block_count:
            return _check(scsi.ILLEGAL_REQUEST, LBA_OUT_OF_RANGE)
        return _check(scsi.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)

    def _bad(self, lba: int, blocks: int) -> int | None:
        bad = self.faults.bad_lbas
        if bad:
            for b in bad:
                if lba <= b < lba + blocks:
                    return b
        return None

    def _in(self, cdb_alloc: int, data: bytes) -> Plan:
        n = min(cdb_alloc, len(data))
        return Plan(IN, n, data[:n])

    # ---- handlers ----------------------------------------------------------------

    def _test_unit_ready(self, cdb: bytes) -> Plan:
        return Plan(NONE)

    def _request_sense(self, cdb: bytes) -> Plan:
        sense, self.sense = self.sense, Sense(0, 0, 0)
        if self.faults.not_ready or self.ejected:
            sense = Sense(scsi.NOT_READY, 0x3A, 0)
        if cdb[1] & 1:  # DESC: descriptor format
            data = bytes([0x72, sense.key, sense.asc, sense.ascq, 0, 0, 0, 0])
        else:
            data = scsi.build_fixed_sense(sense.key, sense.asc, sense.ascq)
        return self._in(cdb[4], data)

    def _inquiry(self, cdb: bytes) -> Plan:
        evpd, page, alloc = cdb[1] & 1, cdb[2], int.from_bytes(cdb[3:5], "big")
        if not evpd:
            if page:
                return _check(scsi.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
            ident = self.identity
            data = (
                bytes([0x00, 0x80, 0x04, 0x02, 31, 0, 0, 0])
                + ident.vendor.encode("ascii").ljust(8)[:8]
                + ident.product.encode("ascii").ljust(16)[:16]
                + ident.revision.encode("ascii").ljust(4)[:4]
            )
            return self._in(alloc, data)
        if page == scsi.VPD_SUPPORTED_PAGES:
            pages = bytes([scsi.VPD_SUPPORTED_PAGES, scsi.VPD_UNIT_SERIAL_NUMBER])
            return self._in(alloc, bytes([0, 0, 0, len(pages)]) + pages)
        if page == scsi.VPD_UNIT_SERIAL_NUMBER:
            serial = self.identity.serial.encode("ascii")
            return self._in(alloc, bytes([0, 0x80, 0, len(serial)]) + serial)
        return _check(scsi.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)

    def _read_capacity_10(self, cdb: bytes) -> Plan:
        if not cdb[8] & 1 and any(cdb[2:6]):  # SBC-3 §5.16: an LBA needs PMI
            return _check(scsi.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
        # SBC-3 §5.16.2: a last LBA that does not fit 32 bits reads FFFFFFFFh, which
        # sends the host to READ CAPACITY(16)
        last = min(self.image.block_count - 1, 0xFFFFFFFF)
        return Plan(IN, 8, RC10.pack(last, self.image.block_size))

    def _service_action_in_16(self, cdb: bytes) -> Plan:
        if cdb[1] & 0x1F != scsi.SA_READ_CAPACITY_16:
            return _check(scsi.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
        data = RC16.pack(self.image.block_count - 1, self.image.block_size, 0, 0)
        return self._in(int.from_bytes(cdb[10:14], "big"), data)

    # _read and _write run for nearly every command: the checks of _range and _bad are
    # made inline, and a function called only for an answer other than "fine"

    def _read(self, cdb: bytes) -> Plan:
        lba, blocks = TRANSFER_FIELDS[cdb[0]](cdb)
        image = self.image
        if lba + blocks > image.block_count or blocks > MAX_TRANSFER_BLOCKS:
            return self._out_of_range(lba, blocks)
        if self.faults.bad_lbas and self._bad(lba, blocks) is not None:
            return _check(scsi.MEDIUM_ERROR, 0x11)  # unrecovered read error
        if not blocks:
            return Plan(NONE)  # SBC-3: a transfer length of 0 is no error
        bs = image.block_size
        return Plan(IN, blocks * bs, image.read(lba * bs, blocks * bs))

    def _write(self, cdb: bytes) -> Plan:
        lba, blocks = TRANSFER_FIELDS[cdb[0]](cdb)
        image = self.image
        if lba + blocks > image.block_count or blocks > MAX_TRANSFER_BLOCKS:
            return self._out_of_range(lba, blocks)
        if self.faults.write_protected:
            return _check(scsi.DATA_PROTECT, 0x27)
        if not blocks:
            return Plan(NONE)
        bs = image.block_size
        bad = self._bad(lba, blocks) if self.faults.bad_lbas else None

        def sink(data: memoryview) -> Sense | None:
            image.write(lba * bs, data[: blocks * bs])
            return Sense(scsi.MEDIUM_ERROR, 0x0C, 0) if bad is not None else None

        return Plan(OUT, blocks * bs, sink=sink)

    def _verify_10(self, cdb: bytes) -> Plan:
        lba, blocks = TRANSFER_FIELDS[cdb[0]](cdb)
        err = self._range(lba, blocks)
        if err:
            return err
        if self._bad(lba, blocks) is not None:
            return _check(scsi.MEDIUM_ERROR, 0x11)
        if not cdb[1] & 0x02 or not blocks:  # BYTCHK 0: medium check only
            return Plan(NONE)
        bs = self.image.block_size
        stored = self.image.read(lba * bs, blocks * bs)

        def compare(data: memoryview) -> Sense | None:
            return None if data == stored[: len(data)] else Sense(0xE, 0x1D, 0)

        return Plan(OUT, blocks * bs, sink=compare)

    def _mode_pages(self, page: int) -> bytes | None:
        caching = bytes([0x08, 0x12]) + bytes(18)  # WCE=0, RCD=0
        exceptions = bytes([0x1C, 0x0A]) + bytes(10)
        if page == scsi.MODE_PAGE_ALL:
            return caching + exceptions
        if page == scsi.MODE_PAGE_CACHING:
            return caching
        if page == scsi.MODE_PAGE_INFORMATIONAL_EXCEPTIONS:
            return exceptions
        return None

    def _mode_sense_6(self, cdb: bytes) -> Plan:
        pages = self._mode_pages(cdb[2] & 0x3F)
        if pages is None:
            return _check(scsi.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
        wp = 0x80 if self.faults.write_protected else 0
        header = bytes([3 + len(pages), 0, wp, 0])
        return self._in(cdb[4], header + pages)

    def _mode_sense_10(self, cdb: bytes) -> Plan:
        pages = self._mode_pages(cdb[2] & 0x3F)
        if pages is None:
            return _check(scsi.ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
        wp = 0x80 if self.faults.write_protected else 0
        header = struct.pack(">HBBBBH", 6 + len(pages), 0, wp, 0, 0, 0)
        return self._in(int.from_bytes(cdb[7:9], "big"), header + pages)

    def _prevent_allow(self, cdb: bytes) -> Plan:
        self.prevent_removal = bool(cdb[4] & 0x03)
        return Plan(NONE)

    def _start_stop_unit(self, cdb: bytes) -> Plan:
        loej, start = cdb[4] & 0x02, cdb[4] & 0x01
        if loej:
            if not start and self.prevent_removal:
                return _check(scsi.ILLEGAL_REQUEST, 0x53, 0x02)  # medium removal prevented
            self.ejected = not start
        return Plan(NONE)

    def _synchronize_cache_10(self, cdb: bytes) -> Plan:
        info = scsi.decode_cdb(cdb)
        return self._range(info.lba or 0, 0) or Plan(NONE)  # 0 blocks: to the end

    def _read_format_capacities(self, cdb: bytes) -> Plan:
        blocks, bs = min(self.image.block_count, 0xFFFFFFFF), self.image.block_size
        kind = 0x03 if (self.ejected or self.faults.not_ready) else 0x02
        # the block count field has 4 bytes: a larger medium reports the most it can
        current = struct.pack(">IB", min(blocks, 0xFFFFFFFF), kind) + bs.to_bytes(3, "big")
        formattable = struct.pack(">IB", min(blocks, 0xFFFFFFFF), 0) + bs.to_bytes(3, "big")
        data = bytes([0, 0, 0, 16]) + current + formattable
        return self._in(int.from_bytes(cdb[7:9], "big"), data)

    HANDLERS: dict[int, Callable[[ScsiTarget, bytes], Plan]] = {
        scsi.TEST_UNIT_READY: _test_unit_ready,
        scsi.REQUEST_SENSE: _request_sense,
        scsi.INQUIRY: _inquiry,
        scsi.READ_CAPACITY_10: _read_capacity_10,
        scsi.SERVICE_ACTION_IN_16: _service_action_in_16,
        scsi.READ_6: _read,
        scsi.READ_10: _read,
        scsi.READ_12: _read,
        scsi.READ_16: _read,
        scsi.WRITE_6: _write,
        scsi.WRITE_10: _write,
        scsi.WRITE_12: _write,
        scsi.WRITE_16: _write,
        scsi.VERIFY_10: _verify_10,
        scsi.MODE_SENSE_6: _mode_sense_6,
        scsi.MODE_SENSE_10: _mode_sense_10,
        scsi.PREVENT_ALLOW_MEDIUM_REMOVAL: _prevent_allow,
        scsi.START_STOP_UNIT: _start_stop_unit,
        scsi.SYNCHRONIZE_CACHE_10: _synchronize_cache_10,
        scsi.READ_FORMAT_CAPACITIES: _read_format_capacities,
    }
