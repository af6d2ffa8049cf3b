"""The shortcuts of the simulated stick and of host replay agree with the general code.

The stick unpacks a CBW's fields itself, reads a READ/WRITE/VERIFY CDB's LBA and length
without ``decode_cdb``, and takes a data-out phase that arrives whole without copying
it; the spill remakes each ``CdbInfo`` without its constructor; host replay reuses its
buffers.  Each is held here to what it stands in for.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usbtrace.devices.base import RESULTS_KEPT, TransferResult
from usbtrace.devices.image import DiskImage
from usbtrace.devices.scsi_target import GROUP_CDB_LENGTH, TRANSFER_FIELDS
from usbtrace.devices.simulated import BULK_IN, BULK_OUT, SimulatedStick
from usbtrace.records import BULK, COMPLETE, SUBMIT, Event
from usbtrace.replay.host import replay_host
from usbtrace.replay.recording import from_events
from usbtrace.replay.report import Report
from usbtrace.storage import bot, scsi
from usbtrace.usb.urb import USBD_STATUS_SUCCESS

PATTERN = bytes(range(256)) * 2  # LBA 0 of the images below


@given(st.sampled_from(sorted(TRANSFER_FIELDS)), st.binary(min_size=15, max_size=15))
def test_transfer_fields_read_what_decode_cdb_reads(opcode: int, rest: bytes) -> None:
    # SBC-3 §5.12 (READ(6): 21-bit LBA, 0 blocks means 256), §5.15, §5.16, §5.17, §5.27
    cdb = bytes([opcode]) + rest[: GROUP_CDB_LENGTH[opcode >> 5] - 1]
    info = scsi.decode_cdb(cdb)
    assert TRANSFER_FIELDS[opcode](cdb) == (info.lba, info.blocks)


def test_every_read_write_and_verify_of_the_target_has_its_fields() -> None:
    from usbtrace.devices.scsi_target import ScsiTarget

    moving = {op for op, handler in ScsiTarget.HANDLERS.items()
              if handler in (ScsiTarget._read, ScsiTarget._write, ScsiTarget._verify_10)}
    assert moving == set(TRANSFER_FIELDS)


@given(st.integers(0, 255), st.text(max_size=20),
       *(st.one_of(st.none(), st.integers(0, 1 << 64)) for _ in range(3)))
def test_cdb_info_is_the_constructor(opcode: int, name: str, lba: int | None,
                                     blocks: int | None, allocation: int | None) -> None:
    values = (opcode, name, lba, blocks, allocation)
    made, built = scsi.cdb_info(values), scsi.CdbInfo(*values)
    assert type(made) is scsi.CdbInfo
    assert made == built and hash(made) == hash(built)
    assert dataclasses.astuple(made) == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.lba = 1  # type: ignore[misc]


def test_cdb_info_fields_are_the_dataclass_fields() -> None:
    assert scsi.CDB_INFO_FIELDS == tuple(f.name for f in dataclasses.fields(scsi.CdbInfo))


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.booleans(),
       st.integers(0, 15), st.binary(min_size=1, max_size=16))
def test_cbw_built_three_ways_alike(tag: int, length: int, data_in: bool, lun: int,
                                   cdb: bytes) -> None:
    built = bot.build_cbw(tag, length, data_in, lun, cdb)
    assert built == bot.CommandBlockWrapper.build(dict(
        dCBWTag=tag, dCBWDataTransferLength=length, bmCBWFlags=0x80 if data_in else 0,
        bCBWLUN=lun, bCBWCBLength=len(cdb), CBWCB=cdb.ljust(16, b"\0")))
    buffer = bytearray(b"\xff" * bot.CBW_LENGTH)  # as host replay packs it
    bot.CBW.pack_into(buffer, 0, bot.CBW_SIGNATURE, tag, length, 0x80 if data_in else 0, lun,
                      len(cdb), cdb)
    assert buffer == built
    cbw = bot.parse_cbw(buffer)
    assert type(cbw) is bot.Cbw
    assert cbw == bot.Cbw(tag, length, 0x80 if data_in else 0, lun, len(cdb), cdb)
    csw = bot.parse_csw(bot.build_csw(tag, length, 1))
    assert type(csw) is bot.Csw and csw == bot.Csw(tag, length, 1)


def _stick() -> SimulatedStick:
    return SimulatedStick(DiskImage.in_memory(1 << 20))


def _write_lba_2(stick: SimulatedStick, pieces: list[bytearray]) -> bot.Csw | None:
    cdb = bytes([scsi.WRITE_10, 0, 0, 0, 0, 2, 0, 0, 1, 0])  # LBA 2, 1 block
    cbw = bytearray(bot.build_cbw(9, 512, False, 0, cdb))
    assert stick.bulk_out(BULK_OUT, cbw).status == USBD_STATUS_SUCCESS
    for piece in pieces:
        assert stick.bulk_out(BULK_OUT, piece).status == USBD_STATUS_SUCCESS
    csw = bytearray(bot.CSW_LENGTH)
    stick.bulk_in(BULK_IN, csw)
    return bot.parse_csw(csw)


def test_a_data_out_phase_whole_or_in_pieces_writes_the_same() -> None:
    whole, split = _stick(), _stick()
    data = bytearray(PATTERN)
    assert _write_lba_2(whole, [data]) == bot.Csw(9, 0, 0)
    data[:] = bytes(512)  # the host's buffer, used again: the stick kept its own copy
    assert _write_lba_2(split, [bytearray(PATTERN[:100]), bytearray(PATTERN[100:])]) == \
        bot.Csw(9, 0, 0)
    assert bytes(whole.image.read(1024, 512)) == bytes(split.image.read(1024, 512)) == PATTERN
    assert whole.bot.history[-1] == split.bot.history[-1] == "case12"


def _read_lba_0_twice(device: int = 2, start: float = 0.0) -> list[Event]:
    """Two READ(10)s of LBA 0, both answered with PATTERN, as a capture holds them."""
    events: list[Event] = []
    cdb = bytes([scsi.READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    ts, irp = start, 0x1000 + device * 0x100
    for tag in (1, 2):
        for endpoint, data in ((0x02, bot.build_cbw(tag, 512, True, 0, cdb)),
                               (0x81, PATTERN), (0x81, bot.build_csw(tag, 0, 0))):
            ts, irp = ts + 0.001, irp + 8
            out = endpoint == 0x02
            common = dict(bus=1, device=device, endpoint=endpoint, transfer_type=BULK)
            events.append(Event(SUBMIT, ts, irp, length=len(data), data=data if out else b"",
                                **common))  # type: ignore[arg-type]
            events.append(Event(COMPLETE, ts + 0.0005, irp, length=len(data),
                                urb_status=USBD_STATUS_SUCCESS, data=b"" if out else data,
                                **common))  # type: ignore[arg-type]
    return events


class _ShortSecondRead(SimulatedStick):
    """Sends only half of the second data-in phase (then the rest where the CSW goes)."""

    def __init__(self) -> None:
        super().__init__(DiskImage.in_memory(1 << 20))
        self.image.write(0, PATTERN)
        self.data_phases = 0

    def bulk_in(self, endpoint: int, buffer: bytearray | memoryview) -> TransferResult:
        if len(buffer) == len(PATTERN):
            self.data_phases += 1
            if self.data_phases == 2:
                return super().bulk_in(endpoint, memoryview(buffer)[:256])
        return super().bulk_in(endpoint, buffer)


def test_host_replay_compares_what_a_transfer_filled_not_what_a_buffer_held() -> None:
    # the buffer the first read filled is used again: its second half still holds the
    # same bytes, but the target sent only the first half of them this time
    recording = from_events("short", _read_lba_0_twice())
    report = Report("short", "host", commands=recording.count)
    replay_host(recording, _ShortSecondRead(), report)
    assert report.replayed == 2
    assert [(d.index, d.field) for d in report.divergences][:1] == [(2, "data_in")]


def test_host_replay_of_the_same_reads_answered_in_full_is_identical() -> None:
    recording = from_events("full", _read_lba_0_twice())
    report = Report("full", "host", commands=recording.count)
    stick = SimulatedStick(DiskImage.in_memory(1 << 20))
    stick.image.write(0, PATTERN)
    replay_host(recording, stick, report)
    assert report.identical and report.replayed == 2 and report.urbs == 6, report.text()
    assert report.compared_bytes == 2 * len(PATTERN)


def test_read_6_of_zero_blocks_means_256() -> None:
    cdb = bytes([scsi.READ_6, 0x01, 0x02, 0x03, 0, 0])
    assert TRANSFER_FIELDS[scsi.READ_6](cdb) == (0x010203, 256)


def test_bulk_results_are_the_computed_ones_and_kept_bounded() -> None:
    stick = _stick()
    stick.image.write(0, PATTERN)
    cdb = bytes([scsi.READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    for _ in range(2):  # the second time from what the first kept
        results = [stick.bulk_out(BULK_OUT, bytearray(bot.build_cbw(3, 512, True, 0, cdb))),
                   stick.bulk_in(BULK_IN, bytearray(512)),
                   stick.bulk_in(BULK_IN, bytearray(bot.CSW_LENGTH))]
        assert results == [TransferResult(USBD_STATUS_SUCCESS, n, stick.speed.transfer_ns(n))
                           for n in (bot.CBW_LENGTH, 512, bot.CSW_LENGTH)]
    for n in range(1, 3 * RESULTS_KEPT):
        got = stick._results[n]
        assert got == TransferResult(USBD_STATUS_SUCCESS, n, stick.speed.transfer_ns(n))
        assert len(stick._results) <= RESULTS_KEPT


def test_the_spill_streams_one_device_whole_and_filters_two() -> None:
    alone = from_events("alone", _read_lba_0_twice())
    assert alone.spill.devices == {(1, 2): 2}
    assert [c.tag for c in alone.commands()] == [1, 2]
    # a second device's commands after the first's: kept too, and passed over
    mixed = from_events("mixed", _read_lba_0_twice() + _read_lba_0_twice(device=3, start=1.0))
    assert mixed.device == (1, 2) and mixed.spill.devices == {(1, 2): 2, (1, 3): 2}
    assert [(c.device, c.tag) for c in mixed.commands()] == [(2, 1), (2, 2)]
