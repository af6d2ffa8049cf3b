"""The SCSI target over a disk image: every supported command and its errors."""

from __future__ import annotations

import struct

import pytest

from usbtrace.devices.image import DiskImage
from usbtrace.devices.scsi_target import IN, NONE, OUT, ScsiTarget
from usbtrace.storage import scsi


@pytest.fixture
def target() -> ScsiTarget:
    return ScsiTarget(DiskImage.in_memory(2048 * 512))


def sense_of(target: ScsiTarget) -> tuple[int, int, int]:
    plan = target.plan(bytes([scsi.REQUEST_SENSE, 0, 0, 0, 18, 0]))
    s = scsi.parse_sense(bytes(plan.data))  # type: ignore[arg-type]
    assert s is not None
    return s.key, s.asc, s.ascq


def test_inquiry_standard_and_vpd_pages(target: ScsiTarget) -> None:
    std = target.plan(bytes([0x12, 0, 0, 0, 36, 0]))
    parsed = scsi.StandardInquiryData.parse(bytes(std.data))  # type: ignore[arg-type]
    assert parsed.rmb.rmb and parsed.t10_vendor_identification == b"USBTRACE"
    pages = target.plan(bytes([0x12, 1, 0x00, 0, 255, 0]))
    assert scsi.VpdPageHeader.parse(bytes(pages.data)).data == b"\x00\x80"  # type: ignore[arg-type]
    serial = target.plan(bytes([0x12, 1, 0x80, 0, 255, 0]))
    assert bytes(serial.data)[4:] == b"UT0000000001"  # type: ignore[arg-type]
    bad = target.plan(bytes([0x12, 1, 0x99, 0, 255, 0]))
    assert not bad.good and sense_of(target) == (5, 0x24, 0)


def test_allocation_length_limits_the_reply(target: ScsiTarget) -> None:
    assert target.plan(bytes([0x12, 0, 0, 0, 5, 0])).length == 5


def test_read_capacity_10_and_16(target: ScsiTarget) -> None:
    rc = target.plan(bytes([0x25]) + bytes(9))
    assert struct.unpack(">II", rc.data) == (2047, 512)  # type: ignore[arg-type]
    rc16 = target.plan(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))
    assert rc16.length == 32 and struct.unpack_from(">QI", rc16.data) == (2047, 512)  # type: ignore[arg-type]


@pytest.mark.parametrize("cdb", [
    struct.pack(">BBIBHB", 0x28, 0, 10, 0, 2, 0),
    struct.pack(">BBQIBB", 0x88, 0, 10, 2, 0, 0),
    bytes([0x08, 0, 0, 10, 2, 0]),
])
def test_reads_of_each_size(target: ScsiTarget, cdb: bytes) -> None:
    target.image.view[10 * 512 : 12 * 512] = b"\x5A" * 1024
    plan = target.plan(cdb)
    assert plan.direction == IN and bytes(plan.data) == b"\x5A" * 1024  # type: ignore[arg-type]


def test_write_then_verify_with_bytchk(target: ScsiTarget) -> None:
    plan = target.plan(struct.pack(">BBQIBB", 0x8A, 0, 5, 1, 0, 0))
    assert plan.direction == OUT and plan.length == 512
    assert plan.sink(memoryview(b"\x11" * 512)) is None  # type: ignore[misc]
    same = target.plan(struct.pack(">BBIBHB", 0x2F, 0x02, 5, 0, 1, 0))
    assert same.sink(memoryview(b"\x11" * 512)) is None  # type: ignore[misc]
    diff = target.plan(struct.pack(">BBIBHB", 0x2F, 0x02, 5, 0, 1, 0))
    assert diff.sink(memoryview(b"\x22" * 512)).key == 0xE  # type: ignore[misc, union-attr]


def test_lba_out_of_range(target: ScsiTarget) -> None:
    assert not target.plan(struct.pack(">BBIBHB", 0x28, 0, 2047, 0, 2, 0)).good
    assert sense_of(target) == (5, 0x21, 0)


def test_mode_sense_reports_write_protect(target: ScsiTarget) -> None:
    plain = target.plan(bytes([0x1A, 0, 0x3F, 0, 192, 0]))
    assert bytes(plain.data)[2] & 0x80 == 0  # type: ignore[arg-type]
    target.faults.write_protected = True
    wp = target.plan(bytes([0x1A, 0, 0x3F, 0, 192, 0]))
    assert bytes(wp.data)[2] & 0x80  # type: ignore[arg-type]
    ten = target.plan(bytes([0x5A, 0, 0x08, 0, 0, 0, 0, 0, 255, 0]))
    assert scsi.ModeParameterHeader10.parse(bytes(ten.data)).device_specific_parameter == 0x80  # type: ignore[arg-type]
    write = target.plan(struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0))
    assert not write.good and sense_of(target) == (7, 0x27, 0)


def test_prevent_allow_start_stop_and_eject(target: ScsiTarget) -> None:
    assert target.plan(bytes([0x1E, 0, 0, 0, 1, 0])).good
    refused = target.plan(bytes([0x1B, 0, 0, 0, 0x02, 0]))  # eject while prevented
    assert sense_of(target) == (5, 0x53, 0x02) and not refused.good
    target.plan(bytes([0x1E, 0, 0, 0, 0, 0]))
    assert target.plan(bytes([0x1B, 0, 0, 0, 0x02, 0])).good
    assert not target.plan(bytes(6)).good  # TEST UNIT READY after eject
    assert sense_of(target) == (2, 0x3A, 0)


def test_synchronize_cache_and_read_format_capacities(target: ScsiTarget) -> None:
    assert target.plan(bytes([0x35]) + bytes(9)).direction == NONE
    rfc = target.plan(bytes([0x23, 0, 0, 0, 0, 0, 0, 0, 252, 0]))
    header = scsi.CapacityListHeader.parse(bytes(rfc.data))  # type: ignore[arg-type]
    current = scsi.CapacityDescriptor.parse(bytes(rfc.data)[4:12])  # type: ignore[arg-type]
    assert header.capacity_list_length == 16
    assert (current.number_of_blocks, current.descriptor_type, current.block_length) == \
        (2048, 2, 512)


def test_unknown_opcode_is_invalid_command_operation_code(target: ScsiTarget) -> None:
    assert not target.plan(bytes([0xEE]) + bytes(9)).good
    assert sense_of(target) == (5, 0x20, 0)


def test_not_ready_and_media_error(target: ScsiTarget) -> None:
    target.faults.not_ready = True
    assert not target.plan(bytes(6)).good
    assert sense_of(target) == (2, 0x3A, 0)
    target.faults.not_ready = False
    target.faults.bad_lbas.add(100)
    assert not target.plan(struct.pack(">BBIBHB", 0x28, 0, 99, 0, 4, 0)).good
    assert sense_of(target) == (3, 0x11, 0)
    assert target.plan(struct.pack(">BBIBHB", 0x28, 0, 101, 0, 4, 0)).good


# ---- every CDB is checked: a status, never an exception -----------------------------------


@pytest.mark.parametrize("cdb, asc", [
    (b"", 0x20),  # no operation code at all
    (bytes([0xC5]) + bytes(9), 0x20),  # vendor-specific, unsupported
    (bytes([0x28]), 0x24),  # READ(10) cut to its opcode
    (bytes([0x28, 0, 0, 0, 0, 1]), 0x24),  # READ(10) in 6 bytes
    (bytes([0x88]) + bytes(9), 0x24),  # READ(16) in 10 bytes
    (bytes([0x12, 0, 0]), 0x24),  # INQUIRY in 3 bytes
    (bytes([0x03]), 0x24),  # REQUEST SENSE in 1 byte
    (bytes([0x5A, 0, 0x3F]), 0x24),  # MODE SENSE(10) in 3 bytes
    (bytes([0x9E, 0x10]), 0x24),  # READ CAPACITY(16) in 2 bytes
    (bytes([0x1B]), 0x24),  # START STOP UNIT in 1 byte
])
def test_short_or_unknown_cdb_is_check_condition(target: ScsiTarget, cdb: bytes,
                                                 asc: int) -> None:
    plan = target.plan(cdb)
    assert not plan.good and plan.direction == NONE
    assert sense_of(target) == (scsi.ILLEGAL_REQUEST, asc, 0)


@pytest.mark.parametrize("cdb", [
    struct.pack(">BBQIBB", 0x88, 0, 2048, 1, 0, 0),  # READ(16) one past the end
    struct.pack(">BBQIBB", 0x88, 0, (1 << 64) - 1, 1, 0, 0),  # READ(16) at the last LBA
    struct.pack(">BBQIBB", 0x8A, 0, (1 << 64) - 1, 0xFFFFFFFF, 0, 0),  # WRITE(16)
    struct.pack(">BBIIBB", 0xA8, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0, 0),  # READ(12)
    struct.pack(">BBIBHB", 0x2F, 0x02, 2047, 0, 2, 0),  # VERIFY(10) over the end
    struct.pack(">BBIBHB", 0x35, 0, 4096, 0, 0, 0),  # SYNCHRONIZE CACHE(10) past the end
])
def test_lba_out_of_range_in_every_form(target: ScsiTarget, cdb: bytes) -> None:
    plan = target.plan(cdb)
    assert not plan.good and plan.length == 0
    assert sense_of(target) == (scsi.ILLEGAL_REQUEST, 0x21, 0)


def test_a_transfer_above_the_maximum_is_invalid_field(target: ScsiTarget) -> None:
    big = ScsiTarget(DiskImage.in_memory(4 << 40))  # 2^33 blocks: 2^32 - 1 of them fit
    plan = big.plan(struct.pack(">BBQIBB", 0x88, 0, 0, 0xFFFFFFFF, 0, 0))  # 2 TiB in one READ
    assert not plan.good and plan.length == 0
    assert sense_of(big) == (scsi.ILLEGAL_REQUEST, 0x24, 0)


def test_zero_blocks_is_no_data_and_no_error(target: ScsiTarget) -> None:
    plan = target.plan(struct.pack(">BBIBHB", 0x28, 0, 5, 0, 0, 0))
    assert plan.good and plan.direction == NONE and plan.length == 0


def test_read_capacity_10_lba_without_pmi_is_invalid_field(target: ScsiTarget) -> None:
    assert not target.plan(bytes([0x25, 0, 0, 0, 0, 8, 0, 0, 0, 0])).good
    assert sense_of(target) == (scsi.ILLEGAL_REQUEST, 0x24, 0)


def test_capacity_beyond_32_bits_sends_the_host_to_read_capacity_16() -> None:
    target = ScsiTarget(DiskImage.in_memory(4 << 40))  # 2^33 blocks
    rc = target.plan(bytes([0x25]) + bytes(9))
    assert struct.unpack(">II", rc.data) == (0xFFFFFFFF, 512)  # type: ignore[arg-type]
    rc16 = target.plan(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))
    assert struct.unpack_from(">Q", rc16.data)[0] == (1 << 33) - 1  # type: ignore[arg-type]
    rfc = target.plan(bytes([0x23]) + bytes(6) + b"\x00\xfc\x00")
    assert rfc.good and bytes(rfc.data)[4:8] == b"\xff\xff\xff\xff"  # type: ignore[arg-type]
