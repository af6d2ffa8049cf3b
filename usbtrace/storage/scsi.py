"""SCSI commands (SPC-4, SBC-3, MMC for READ FORMAT CAPACITIES) and their data.

One registry maps an operation code to its CDB layout and to a function that
pulls out what a log needs (LBA, transfer length in blocks, allocation
length).  Multi-byte CDB fields are big-endian, as SCSI is.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from construct import (
    BitsInteger,
    BitStruct,
    Byte,
    Bytes,
    Flag,
    GreedyBytes,
    Int16ub,
    Int24ub,
    Int32ub,
    Int64ub,
    Padding,
    Struct,
)

# Operation codes
TEST_UNIT_READY = 0x00
REZERO_UNIT = 0x01
REQUEST_SENSE = 0x03
FORMAT_UNIT = 0x04
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SELECT_6 = 0x15
MODE_SENSE_6 = 0x1A
START_STOP_UNIT = 0x1B
SEND_DIAGNOSTIC = 0x1D
PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
READ_FORMAT_CAPACITIES = 0x23
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
VERIFY_10 = 0x2F
SYNCHRONIZE_CACHE_10 = 0x35
WRITE_BUFFER = 0x3B
READ_BUFFER = 0x3C
UNMAP = 0x42
READ_TOC = 0x43
GET_CONFIGURATION = 0x46
GET_EVENT_STATUS_NOTIFICATION = 0x4A  # MMC: a CD/DVD unit's media and power events
LOG_SENSE = 0x4D
MODE_SELECT_10 = 0x55
MODE_SENSE_10 = 0x5A
ATA_PASS_THROUGH_16 = 0x85
READ_16 = 0x88
WRITE_16 = 0x8A
VERIFY_16 = 0x8F
SYNCHRONIZE_CACHE_16 = 0x91
SERVICE_ACTION_IN_16 = 0x9E  # READ CAPACITY(16) is service action 0x10
REPORT_LUNS = 0xA0
ATA_PASS_THROUGH_12 = 0xA1
READ_12 = 0xA8
WRITE_12 = 0xAA
SA_READ_CAPACITY_16 = 0x10

# ---- CDB layouts ------------------------------------------------------------------

Cdb6Generic = Struct("operation_code" / Byte, "misc" / Bytes(3), "length" / Byte,
                     "control" / Byte)

# SBC-3 §5.15: READ(10); WRITE(10) §5.32 and VERIFY(10) §5.27 share the shape
Rw10Cdb = Struct(
    "operation_code" / Byte,
    "flags" / Byte,  # RDPROTECT/WRPROTECT, DPO, FUA, FUA_NV
    "logical_block_address" / Int32ub,
    "group_number" / Byte,
    "transfer_length" / Int16ub,
    "control" / Byte,
)
# SBC-3 §5.12 READ(6): 21-bit LBA, a length of 0 means 256 blocks
Rw6Cdb = BitStruct(
    "operation_code" / BitsInteger(8),
    Padding(3),
    "logical_block_address" / BitsInteger(21),
    "transfer_length" / BitsInteger(8),
    "control" / BitsInteger(8),
)
Rw12Cdb = Struct(
    "operation_code" / Byte, "flags" / Byte, "logical_block_address" / Int32ub,
    "transfer_length" / Int32ub, "group_number" / Byte, "control" / Byte,
)
Rw16Cdb = Struct(
    "operation_code" / Byte, "flags" / Byte, "logical_block_address" / Int64ub,
    "transfer_length" / Int32ub, "group_number" / Byte, "control" / Byte,
)
# SPC-4 §6.6 INQUIRY
InquiryCdb = Struct(
    "operation_code" / Byte,
    "evpd" / Byte,  # bit 0
    "page_code" / Byte,
    "allocation_length" / Int16ub,
    "control" / Byte,
)
# SPC-4 §6.39 REQUEST SENSE
RequestSenseCdb = Struct(
    "operation_code" / Byte, "desc" / Byte, Padding(2), "allocation_length" / Byte,
    "control" / Byte,
)
# SPC-4 §6.11 MODE SENSE(6), §6.12 MODE SENSE(10)
ModeSense6Cdb = Struct(
    "operation_code" / Byte, "dbd" / Byte, "pc_page_code" / Byte, "subpage_code" / Byte,
    "allocation_length" / Byte, "control" / Byte,
)
ModeSense10Cdb = Struct(
    "operation_code" / Byte, "llbaa_dbd" / Byte, "pc_page_code" / Byte,
    "subpage_code" / Byte, Padding(3), "allocation_length" / Int16ub, "control" / Byte,
)
# SBC-3 §5.16 READ CAPACITY(10), §5.16 READ CAPACITY(16)
ReadCapacity10Cdb = Struct(
    "operation_code" / Byte, "reserved" / Byte, "logical_block_address" / Int32ub,
    Padding(2), "pmi" / Byte, "control" / Byte,
)
ReadCapacity16Cdb = Struct(
    "operation_code" / Byte, "service_action" / Byte, "logical_block_address" / Int64ub,
    "allocation_length" / Int32ub, "pmi" / Byte, "control" / Byte,
)
# SBC-3 §5.25 START STOP UNIT; SPC-4 §6.13 PREVENT ALLOW MEDIUM REMOVAL
StartStopUnitCdb = Struct(
    "operation_code" / Byte, "immed" / Byte, Padding(1), "power_condition_modifier" / Byte,
    "power_condition_loej_start" / Byte, "control" / Byte,
)
PreventAllowCdb = Struct(
    "operation_code" / Byte, Padding(3), "prevent" / Byte, "control" / Byte,
)
# SBC-3 §5.22 SYNCHRONIZE CACHE(10)
SynchronizeCache10Cdb = Struct(
    "operation_code" / Byte, "flags" / Byte, "logical_block_address" / Int32ub,
    "group_number" / Byte, "number_of_logical_blocks" / Int16ub, "control" / Byte,
)
# MMC-6 READ FORMAT CAPACITIES (also in UFI)
ReadFormatCapacitiesCdb = Struct(
    "operation_code" / Byte, Padding(6), "allocation_length" / Int16ub, "control" / Byte,
)

# ---- response data ----------------------------------------------------------------

# SPC-4 §6.6.2 standard INQUIRY data (first 36 bytes)
StandardInquiryData = Struct(
    "peripheral" / BitStruct("qualifier" / BitsInteger(3), "device_type" / BitsInteger(5)),
    "rmb" / BitStruct("rmb" / Flag, "lu_cong" / Flag, Padding(6)),
    "version" / Byte,
    "response_data_format" / Byte,
    "additional_length" / Byte,
    "flags" / Bytes(3),
    "t10_vendor_identification" / Bytes(8),
    "product_identification" / Bytes(16),
    "product_revision_level" / Bytes(4),
)
# SPC-4 §7.8 VPD page header
VpdPageHeader = Struct(
    "peripheral" / Byte,
    "page_code" / Byte,
    "page_length" / Int16ub,
    "data" / Bytes(lambda ctx: ctx.page_length),
)
VPD_SUPPORTED_PAGES = 0x00
VPD_UNIT_SERIAL_NUMBER = 0x80
VPD_DEVICE_IDENTIFICATION = 0x83

ReadCapacity10Data = Struct("returned_logical_block_address" / Int32ub,
                            "logical_block_length_in_bytes" / Int32ub)
ReadCapacity16Data = Struct(
    "returned_logical_block_address" / Int64ub,
    "logical_block_length_in_bytes" / Int32ub,
    "protection" / Byte,
    "exponents" / Byte,
    "lowest_aligned_lba" / Int16ub,
    "reserved" / Bytes(16),
)
# SPC-4 §7.5.5 mode parameter headers
ModeParameterHeader6 = Struct(
    "mode_data_length" / Byte,
    "medium_type" / Byte,
    "device_specific_parameter" / Byte,  # bit 7: WP for direct-access devices
    "block_descriptor_length" / Byte,
)
ModeParameterHeader10 = Struct(
    "mode_data_length" / Int16ub,
    "medium_type" / Byte,
    "device_specific_parameter" / Byte,
    "longlba" / Byte,
    "reserved" / Byte,
    "block_descriptor_length" / Int16ub,
)
ModePage = Struct(
    "ps_spf_page_code" / Byte,
    "page_length" / Byte,
    "data" / Bytes(lambda ctx: ctx.page_length),
)
MODE_PAGE_CACHING = 0x08
MODE_PAGE_INFORMATIONAL_EXCEPTIONS = 0x1C
MODE_PAGE_ALL = 0x3F

# MMC-6 §6.24 READ FORMAT CAPACITIES data
CapacityListHeader = Struct(Padding(3), "capacity_list_length" / Byte)
CapacityDescriptor = Struct(
    "number_of_blocks" / Int32ub,
    "descriptor_type" / Byte,  # bits 1..0: 1 unformatted, 2 formatted, 3 no media
    "block_length" / Int24ub,
)

# SPC-4 §4.5.3 fixed format sense data
FixedSenseData = Struct(
    "response_code" / Byte,  # 0x70 current, 0x71 deferred; bit 7 VALID
    "obsolete" / Byte,
    "sense_key" / Byte,  # bits 3..0; FILEMARK, EOM, ILI in bits 7..5
    "information" / Int32ub,
    "additional_sense_length" / Byte,
    "command_specific_information" / Int32ub,
    "additional_sense_code" / Byte,
    "additional_sense_code_qualifier" / Byte,
    "field_replaceable_unit_code" / Byte,
    "sense_key_specific" / Bytes(3),
    "additional_sense_bytes" / GreedyBytes,
)
# SPC-4 §4.5.2 descriptor format sense data
DescriptorSenseData = Struct(
    "response_code" / Byte,  # 0x72 current, 0x73 deferred
    "sense_key" / Byte,
    "additional_sense_code" / Byte,
    "additional_sense_code_qualifier" / Byte,
    Padding(3),
    "additional_sense_length" / Byte,
    "sense_data_descriptors" / GreedyBytes,
)

SENSE_KEYS = {
    0x0: "no_sense", 0x1: "recovered_error", 0x2: "not_ready", 0x3: "medium_error",
    0x4: "hardware_error", 0x5: "illegal_request", 0x6: "unit_attention",
    0x7: "data_protect", 0x8: "blank_check", 0x9: "vendor_specific", 0xA: "copy_aborted",
    0xB: "aborted_command", 0xD: "volume_overflow", 0xE: "miscompare", 0xF: "completed",
}
NO_SENSE, RECOVERED_ERROR, NOT_READY, MEDIUM_ERROR, HARDWARE_ERROR = 0, 1, 2, 3, 4
ILLEGAL_REQUEST, UNIT_ATTENTION, DATA_PROTECT, ABORTED_COMMAND = 5, 6, 7, 0xB

# A selection of SPC-4 Annex D additional sense codes
ASC_NAMES = {
    (0x00, 0x00): "no additional sense information",
    (0x04, 0x00): "logical unit not ready, cause not reportable",
    (0x04, 0x01): "logical unit is in process of becoming ready",
    (0x04, 0x02): "logical unit not ready, initializing command required",
    (0x0C, 0x00): "write error",
    (0x11, 0x00): "unrecovered read error",
    (0x1A, 0x00): "parameter list length error",
    (0x20, 0x00): "invalid command operation code",
    (0x21, 0x00): "logical block address out of range",
    (0x24, 0x00): "invalid field in cdb",
    (0x25, 0x00): "logical unit not supported",
    (0x26, 0x00): "invalid field in parameter list",
    (0x27, 0x00): "write protected",
    (0x28, 0x00): "not ready to ready change, medium may have changed",
    (0x29, 0x00): "power on, reset, or bus device reset occurred",
    (0x3A, 0x00): "medium not present",
    (0x3A, 0x01): "medium not present - tray closed",
    (0x3A, 0x02): "medium not present - tray open",
    (0x47, 0x00): "scsi parity error",
    (0x53, 0x02): "medium removal prevented",
}

SENSE = struct.Struct(">BBBIBIBB")  # the fixed-format fields through ASCQ


@dataclass(frozen=True, slots=True)
class Sense:
    key: int
    asc: int
    ascq: int

    @property
    def key_name(self) -> str:
        return SENSE_KEYS.get(self.key, f"0x{self.key:x}")

    @property
    def description(self) -> str:
        text = ASC_NAMES.get((self.asc, self.ascq), f"asc 0x{self.asc:02x} ascq 0x{self.ascq:02x}")
        return f"{self.key_name}: {text}"


def build_fixed_sense(key: int, asc: int, ascq: int, information: int = 0) -> bytes:
    """18 bytes of current, fixed-format sense data."""
    valid = 0x80 if information else 0
    return SENSE.pack(0x70 | valid, 0, key, information, 10, 0, asc, ascq) + b"\0\0\0\0"


def parse_sense(data: bytes | bytearray | memoryview) -> Sense | None:
    """Sense key, ASC and ASCQ from fixed (70h/71h) or descriptor (72h/73h) sense data."""
    if len(data) < 3:
        return None
    code = data[0] & 0x7F
    if code in (0x70, 0x71):
        if len(data) < 14:
            return Sense(data[2] & 0x0F, 0, 0) if len(data) >= 3 else None
        return Sense(data[2] & 0x0F, data[12], data[13])
    if code in (0x72, 0x73) and len(data) >= 4:
        return Sense(data[1] & 0x0F, data[2], data[3])
    return None


# ---- the command registry ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CdbInfo:
    """What a log needs from a CDB."""

    opcode: int
    name: str
    lba: int | None = None
    blocks: int | None = None
    allocation_length: int | None = None


# CdbInfo(*values) at a third less cost, for a pass remaking one per command (a replay
# reading its commands back): a frozen dataclass's __init__ sets each field through
# object.__setattr__, these set the slots themselves
_new_object = object.__new__
_set_opcode = CdbInfo.__dict__["opcode"].__set__
_set_name = CdbInfo.__dict__["name"].__set__
_set_lba = CdbInfo.__dict__["lba"].__set__
_set_blocks = CdbInfo.__dict__["blocks"].__set__
_set_allocation_length = CdbInfo.__dict__["allocation_length"].__set__
CDB_INFO_FIELDS = ("opcode", "name", "lba", "blocks", "allocation_length")


def cdb_info(values: tuple[int, str, int | None, int | None, int | None]) -> CdbInfo:
    """``CdbInfo(*values)``, ``values`` in ``CDB_INFO_FIELDS`` order (its fields')."""
    info: CdbInfo = _new_object(CdbInfo)
    _set_opcode(info, values[0])
    _set_name(info, values[1])
    _set_lba(info, values[2])
    _set_blocks(info, values[3])
    _set_allocation_length(info, values[4])
    return info


@dataclass(frozen=True, slots=True)
class Command:
    opcode: int
    name: str
    layout: Any
    fields: Any  # (cdb bytes) -> CdbInfo


def _rw10(name: str) -> Any:
    u = struct.Struct(">xxIxH")

    def fields(cdb: bytes) -> CdbInfo:
        lba, n = u.unpack_from(cdb) if len(cdb) >= 9 else (None, None)
        return CdbInfo(cdb[0], name, lba, n)
    return fields


def _rw12(name: str) -> Any:
    u = struct.Struct(">xxII")

    def fields(cdb: bytes) -> CdbInfo:
        lba, n = u.unpack_from(cdb) if len(cdb) >= 10 else (None, None)
        return CdbInfo(cdb[0], name, lba, n)
    return fields


def _rw16(name: str) -> Any:
    u = struct.Struct(">xxQI")

    def fields(cdb: bytes) -> CdbInfo:
        lba, n = u.unpack_from(cdb) if len(cdb) >= 14 else (None, None)
        return CdbInfo(cdb[0], name, lba, n)
    return fields


def _rw6(name: str) -> Any:
    def fields(cdb: bytes) -> CdbInfo:
        if len(cdb) < 5:
            return CdbInfo(cdb[0], name)
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        return CdbInfo(cdb[0], name, lba, cdb[4] or 256)
    return fields


def _alloc(name: str, offset: int, size: int) -> Any:
    def fields(cdb: bytes) -> CdbInfo:
        if len(cdb) < offset + size:
            return CdbInfo(cdb[0], name)
        return CdbInfo(cdb[0], name, allocation_length=int.from_bytes(cdb[offset:offset + size],
                                                                      "big"))
    return fields


def _plain(name: str) -> Any:
    def fields(cdb: bytes) -> CdbInfo:
        return CdbInfo(cdb[0], name)
    return fields


def _sync10(cdb: bytes) -> CdbInfo:
    if len(cdb) < 9:
        return CdbInfo(cdb[0], "synchronize_cache_10")
    lba, n = struct.unpack_from(">xxIxH", cdb)
    return CdbInfo(cdb[0], "synchronize_cache_10", lba, n)


def _sai16(cdb: bytes) -> CdbInfo:
    if len(cdb) >= 14 and cdb[1] & 0x1F == SA_READ_CAPACITY_16:
        return CdbInfo(cdb[0], "read_capacity_16",
                       allocation_length=int.from_bytes(cdb[10:14], "big"))
    return CdbInfo(cdb[0], "service_action_in_16")


COMMANDS: dict[int, Command] = {c.opcode: c for c in [
    Command(TEST_UNIT_READY, "test_unit_ready", Cdb6Generic, _plain("test_unit_ready")),
    Command(REZERO_UNIT, "rezero_unit", Cdb6Generic, _plain("rezero_unit")),
    Command(REQUEST_SENSE, "request_sense", RequestSenseCdb, _alloc("request_sense", 4, 1)),
    Command(FORMAT_UNIT, "format_unit", Cdb6Generic, _plain("format_unit")),
    Command(READ_6, "read_6", Rw6Cdb, _rw6("read_6")),
    Command(WRITE_6, "write_6", Rw6Cdb, _rw6("write_6")),
    Command(INQUIRY, "inquiry", InquiryCdb, _alloc("inquiry", 3, 2)),
    Command(MODE_SELECT_6, "mode_select_6", Cdb6Generic, _alloc("mode_select_6", 4, 1)),
    Command(MODE_SENSE_6, "mode_sense_6", ModeSense6Cdb, _alloc("mode_sense_6", 4, 1)),
    Command(START_STOP_UNIT, "start_stop_unit", StartStopUnitCdb, _plain("start_stop_unit")),
    Command(SEND_DIAGNOSTIC, "send_diagnostic", Cdb6Generic, _plain("send_diagnostic")),
    Command(PREVENT_ALLOW_MEDIUM_REMOVAL, "prevent_allow_medium_removal", PreventAllowCdb,
            _plain("prevent_allow_medium_removal")),
    Command(READ_FORMAT_CAPACITIES, "read_format_capacities", ReadFormatCapacitiesCdb,
            _alloc("read_format_capacities", 7, 2)),
    Command(READ_CAPACITY_10, "read_capacity_10", ReadCapacity10Cdb, _plain("read_capacity_10")),
    Command(READ_10, "read_10", Rw10Cdb, _rw10("read_10")),
    Command(WRITE_10, "write_10", Rw10Cdb, _rw10("write_10")),
    Command(VERIFY_10, "verify_10", Rw10Cdb, _rw10("verify_10")),
    Command(SYNCHRONIZE_CACHE_10, "synchronize_cache_10", SynchronizeCache10Cdb, _sync10),
    Command(WRITE_BUFFER, "write_buffer", None, _plain("write_buffer")),
    Command(READ_BUFFER, "read_buffer", None, _plain("read_buffer")),
    Command(UNMAP, "unmap", None, _plain("unmap")),
    Command(READ_TOC, "read_toc", None, _alloc("read_toc", 7, 2)),
    Command(GET_CONFIGURATION, "get_configuration", None, _alloc("get_configuration", 7, 2)),
    Command(GET_EVENT_STATUS_NOTIFICATION, "get_event_status_notification", None,
            _alloc("get_event_status_notification", 7, 2)),
    Command(LOG_SENSE, "log_sense", None, _alloc("log_sense", 7, 2)),
    Command(MODE_SELECT_10, "mode_select_10", None, _alloc("mode_select_10", 7, 2)),
    Command(MODE_SENSE_10, "mode_sense_10", ModeSense10Cdb, _alloc("mode_sense_10", 7, 2)),
    Command(ATA_PASS_THROUGH_16, "ata_pass_through_16", None, _plain("ata_pass_through_16")),
    Command(READ_16, "read_16", Rw16Cdb, _rw16("read_16")),
    Command(WRITE_16, "write_16", Rw16Cdb, _rw16("write_16")),
    Command(VERIFY_16, "verify_16", Rw16Cdb, _rw16("verify_16")),
    Command(SYNCHRONIZE_CACHE_16, "synchronize_cache_16", None, _rw16("synchronize_cache_16")),
    Command(SERVICE_ACTION_IN_16, "service_action_in_16", ReadCapacity16Cdb, _sai16),
    Command(REPORT_LUNS, "report_luns", None, _alloc("report_luns", 6, 4)),
    Command(ATA_PASS_THROUGH_12, "ata_pass_through_12", None, _plain("ata_pass_through_12")),
    Command(READ_12, "read_12", Rw12Cdb, _rw12("read_12")),
    Command(WRITE_12, "write_12", Rw12Cdb, _rw12("write_12")),
]}

READS = frozenset({READ_6, READ_10, READ_12, READ_16})
WRITES = frozenset({WRITE_6, WRITE_10, WRITE_12, WRITE_16})


def decode_cdb(cdb: bytes) -> CdbInfo:
    """Name, LBA and length of a CDB; unknown opcodes are named by their hex value."""
    if not cdb:
        return CdbInfo(-1, "empty_cdb")
    command = COMMANDS.get(cdb[0])
    if command is None:
        return CdbInfo(cdb[0], f"opcode_0x{cdb[0]:02x}")
    return command.fields(cdb)  # type: ignore[no-any-return]
