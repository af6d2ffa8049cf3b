"""The IUs of the data path are packed with ``struct`` (``decode.uas``): each packing must
give the bytes the ``construct`` layout builds for the same fields, and whatever it does
not take (a CDB over 16 bytes, a field out of range) must still be built by the layout."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from construct import ConstructError
from hypothesis import given
from hypothesis import strategies as st

from usbtrace.decode import uas

TAGS = st.integers(0, 0xFFFF)


def _command_by_layout(tag: int, cdb: bytes, lun: int, priority: int,
                       attribute: int) -> bytes:
    return uas.CommandIU.build({
        "Reserved1": 0, "TAG": tag,
        "prio_attr": {"Reserved": False, "COMMAND_PRIORITY": priority,
                      "TASK_ATTRIBUTE": attribute},
        "Reserved5": 0, "add_cdb": {"ADDITIONAL_CDB_LENGTH": 0, "Reserved": 0},
        "Reserved7": 0, "LOGICAL_UNIT_NUMBER": uas.build_lun(lun),
        "CDB": cdb.ljust(16, b"\0"), "ADDITIONAL_CDB_BYTES": b""})


@given(TAGS, st.binary(min_size=0, max_size=16), st.integers(0, 0x3FFF),
       st.integers(0, 15), st.integers(0, 7))
def test_a_command_iu_packs_as_its_layout_builds(tag: int, cdb: bytes, lun: int,
                                                  priority: int, attribute: int) -> None:
    packed = uas.build_command_iu(tag, cdb, lun, priority, attribute)
    assert packed == _command_by_layout(tag, cdb, lun, priority, attribute)
    parsed = uas.CommandIU.parse(packed)
    assert (parsed.TAG, parsed.prio_attr.COMMAND_PRIORITY, parsed.prio_attr.TASK_ATTRIBUTE,
            parsed.CDB) == (tag, priority, attribute, cdb.ljust(16, b"\0"))


def test_a_long_cdb_still_goes_on_as_additional_cdb_bytes() -> None:
    """SPC's variable-length CDBs (32 bytes) are past the packing: the layout builds them."""
    cdb = bytes(range(1, 33))
    iu = uas.build_command_iu(5, cdb)
    parsed = uas.CommandIU.parse(iu)
    assert len(iu) == uas.COMMAND_IU_LENGTH + 16
    assert parsed.add_cdb.ADDITIONAL_CDB_LENGTH == 4
    assert parsed.CDB + parsed.ADDITIONAL_CDB_BYTES == cdb


@given(TAGS, st.sampled_from(sorted(uas.STATUS_NAMES)), st.binary(max_size=252),
       st.integers(0, 0xFFFF))
def test_a_sense_iu_packs_as_its_layout_builds(tag: int, status: int, sense: bytes,
                                               qualifier: int) -> None:
    assert uas.build_sense_iu(tag, status, sense, qualifier) == uas.SenseIU.build({
        "Reserved1": 0, "TAG": tag, "STATUS_QUALIFIER": qualifier, "STATUS": status,
        "Reserved7": bytes(7), "LENGTH": len(sense), "SENSE_DATA": sense})


@given(st.sampled_from([uas.IU_READ_READY, uas.IU_WRITE_READY]), TAGS)
def test_a_ready_iu_packs_as_its_layout_builds(iu_id: int, tag: int) -> None:
    layout = uas.ReadReadyIU if iu_id == uas.IU_READ_READY else uas.WriteReadyIU
    assert uas.build_ready_iu(iu_id, tag) == layout.build({"Reserved1": 0, "TAG": tag})


@pytest.mark.parametrize("build", [
    lambda: uas.build_command_iu(0x10000, bytes(10)),
    lambda: uas.build_command_iu(1, bytes(10), priority=16),
    lambda: uas.build_sense_iu(-1, 0),
    lambda: uas.build_ready_iu(uas.IU_READ_READY, 0x10000),
])
def test_a_field_out_of_range_is_refused_as_the_layout_refuses_it(
        build: Callable[[], bytes]) -> None:
    """Out of range, the packing steps aside and ``construct`` refuses the field, as it
    did before there was a packing: no value is cut to fit in silence."""
    with pytest.raises(ConstructError, match="building"):
        build()


@given(TAGS, st.binary(min_size=8, max_size=8), st.binary(min_size=16, max_size=16),
       st.integers(0, 255), st.integers(0, 63), st.binary(max_size=64))
def test_the_decoder_reads_a_command_iu_as_its_layout_parses_it(
        tag: int, lun: bytes, cdb: bytes, prio: int, dwords: int, tail: bytes) -> None:
    """What ``UasDecoder`` unpacks of a Command IU (tag, LUN, CDB; then its additional
    CDB bytes, sliced as ADDITIONAL CDB LENGTH says) is what ``CommandIU.parse`` reads,
    whatever the reserved bits hold."""
    head = bytes([uas.IU_COMMAND, 0xA5]) + tag.to_bytes(2, "big") + \
        bytes([prio, 0x5A, dwords << 2 | 3, 0xFF]) + lun + cdb
    data = head + bytes(dwords * 4) + tail
    parsed = uas.CommandIU.parse(data)
    assert uas._command_iu_fields(data) == (parsed.TAG, parsed.LOGICAL_UNIT_NUMBER,
                                            parsed.CDB)
    extra = (data[6] >> 2) * 4
    assert data[uas.COMMAND_IU_LENGTH:uas.COMMAND_IU_LENGTH + extra] == \
        parsed.ADDITIONAL_CDB_BYTES


@given(TAGS, st.integers(0, 0xFFFF), st.integers(0, 255), st.binary(min_size=7, max_size=7),
       st.integers(0, 0xFFFF), st.binary(max_size=32))
def test_the_decoder_reads_a_sense_iu_as_its_layout_parses_it(
        tag: int, qualifier: int, status: int, reserved: bytes, length: int,
        sense: bytes) -> None:
    data = bytes([uas.IU_SENSE, 0]) + tag.to_bytes(2, "big") + \
        qualifier.to_bytes(2, "big") + bytes([status]) + reserved + \
        length.to_bytes(2, "big") + sense
    head = uas.SenseIUHeader.parse(data[:uas.SENSE_IU_HEADER])
    assert uas._sense_iu_fields(data) == (head.STATUS, head.LENGTH)
