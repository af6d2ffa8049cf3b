"""UAS decoding: IU layouts, streams, USB 2 Read/Write Ready, task management, bad IUs."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from usbtrace.decode import uas
from usbtrace.decode.bot import ScsiCommand
from usbtrace.decode.identity import IdentityTracker
from usbtrace.decode.pairing import Exchange
from usbtrace.records import BULK, COMPLETE, CONTROL, SUBMIT, Event
from usbtrace.storage import bot, scsi
from usbtrace.store.database import Database
from usbtrace.store.writer import SessionWriter
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std

PIPES = uas.UasPipes(command=0x04, status=0x83, data_in=0x81, data_out=0x02)
READ_10 = bytes([0x28, 0, 0, 0, 0, 0x10, 0, 0, 1, 0])
WRITE_10 = bytes([0x2A, 0, 0, 0, 0, 0x20, 0, 0, 2, 0])
INQUIRY = bytes([0x12, 0, 0, 0, 36, 0])
NOT_READY = scsi.build_fixed_sense(0x02, 0x04, 0x01)


def exchange(seq: int, endpoint: int, data: bytes = b"", requested: int | None = None,
             actual: int | None = None, completed: bool = True, bus: int = 1,
             device: int = 4) -> Exchange:
    """One bulk transfer, submitted as number ``seq`` (exchange seqs are submission order)."""
    direction_in = bool(endpoint & 0x80)
    if requested is None:
        requested = len(data) if not direction_in else 1024
    submit = Event(SUBMIT, seq * 0.001, 1000 + seq, bus=bus, device=device, endpoint=endpoint,
                   transfer_type=BULK, length=requested, data=b"" if direction_in else data)
    complete = None
    if completed:
        complete = Event(COMPLETE, seq * 0.001 + 0.0005, 1000 + seq, bus=bus, device=device,
                         endpoint=endpoint, transfer_type=BULK, urb_status=0,
                         length=len(data) if actual is None else actual,
                         data=data if direction_in else b"")
    return Exchange(seq, 1000 + seq, "capture", submit, complete).seal()


def feed_all(decoder: uas.UasDecoder, exchanges: list[Exchange]) -> list[ScsiCommand]:
    out: list[ScsiCommand] = []
    for x in exchanges:
        out += decoder.feed(x, PIPES)
    return out + decoder.flush()


# ---- layouts -----------------------------------------------------------------------


@pytest.mark.parametrize("iu, layout, fields", [
    (uas.build_command_iu(0x1F, INQUIRY), uas.CommandIU,
     {"IU_ID": 1, "TAG": 0x1F, "CDB": INQUIRY.ljust(16, b"\0")}),
    (uas.build_command_iu(7, bytes(range(1, 33)), lun=300, priority=5, task_attribute=2),
     uas.CommandIU, {"TAG": 7, "ADDITIONAL_CDB_BYTES": bytes(range(17, 33))}),
    (uas.build_sense_iu(0x1F, 0x02, NOT_READY, qualifier=0x1234), uas.SenseIU,
     {"IU_ID": 3, "STATUS": 2, "STATUS_QUALIFIER": 0x1234, "LENGTH": 18,
      "SENSE_DATA": NOT_READY}),
    (uas.build_response_iu(9, 0x0A, b"\x01\x02\x03"), uas.ResponseIU,
     {"IU_ID": 4, "TAG": 9, "RESPONSE_CODE": 0x0A,
      "ADDITIONAL_RESPONSE_INFORMATION": b"\x01\x02\x03"}),
    (uas.build_task_management_iu(9, uas.ABORT_TASK, managed_tag=3, lun=2),
     uas.TaskManagementIU, {"IU_ID": 5, "TAG": 9, "TASK_MANAGEMENT_FUNCTION": 1,
                            "TAG_OF_TASK_TO_BE_MANAGED": 3}),
    (uas.build_ready_iu(uas.IU_READ_READY, 0x1234), uas.ReadReadyIU, {"IU_ID": 6, "TAG": 0x1234}),
    (uas.build_ready_iu(uas.IU_WRITE_READY, 2), uas.WriteReadyIU, {"IU_ID": 7, "TAG": 2}),
])
def test_iu_layouts_round_trip(iu: bytes, layout: object, fields: dict[str, object]) -> None:
    parsed = layout.parse(iu)  # type: ignore[attr-defined]
    for name, value in fields.items():
        assert parsed[name] == value, name
    assert layout.build(parsed) == iu  # type: ignore[attr-defined]


def test_iu_sizes_are_the_specification_s() -> None:
    assert len(uas.build_command_iu(1, INQUIRY)) == 32
    assert len(uas.build_command_iu(1, bytes(32))) == 48  # 16 additional CDB bytes
    assert len(uas.build_sense_iu(1, 0)) == 16
    assert len(uas.build_response_iu(1, 0)) == 8
    assert len(uas.build_task_management_iu(1, 1)) == 16
    assert len(uas.build_ready_iu(uas.IU_READ_READY, 1)) == 4
    assert uas.PipeUsageDescriptor.build({"bPipeID": 2, "Reserved": 0}) == b"\x04\x24\x02\x00"


def test_lun_field_reads_back() -> None:
    assert uas._lun(uas.build_lun(0)) == 0
    assert uas._lun(uas.build_lun(5)) == 5
    assert uas._lun(uas.build_lun(300)) == 300


# ---- commands ------------------------------------------------------------------------


def test_check_condition_carries_the_sense_iu_s_sense() -> None:
    decoder = uas.UasDecoder()
    out = feed_all(decoder, [
        exchange(2, 0x04, uas.build_command_iu(5, bytes(6))),  # TEST UNIT READY
        exchange(1, 0x83, uas.build_sense_iu(5, 0x02, NOT_READY)),
    ])
    (cmd,) = out
    assert (cmd.tag, cmd.info.name, cmd.status, cmd.data_direction, cmd.residue) == \
        (5, "test_unit_ready", "check_condition", "none", 0)
    assert cmd.sense is not None and (cmd.sense.key, cmd.sense.asc, cmd.sense.ascq) == (2, 4, 1)
    assert (cmd.cbw_seq, cmd.csw_seq) == (2, 1)


def test_streams_two_commands_in_flight_completing_out_of_order() -> None:
    """Each command's data, status and Command IU queued together (data first, as hosts
    do on streams); B finishes before A, and A's data comes last."""
    decoder = uas.UasDecoder()
    a_data, b_data = bytes([0xAA]) * 512, bytes([0xBB]) * 1024
    out = feed_all(decoder, [  # in completion order; seq is submission order
        exchange(3, 0x04, uas.build_command_iu(1, READ_10)),
        exchange(6, 0x04, uas.build_command_iu(2, READ_10)),
        exchange(4, 0x81, b_data, requested=1024),
        exchange(5, 0x83, uas.build_sense_iu(2, 0x00)),
        exchange(1, 0x81, a_data, requested=1024),  # 512 of 1024: a short read
        exchange(2, 0x83, uas.build_sense_iu(1, 0x02, NOT_READY)),
    ])
    assert [c.tag for c in out] == [2, 1]
    b, a = out
    assert (b.status, b.data, b.data_direction, b.expected_length, b.residue) == \
        ("good", b_data, "in", 1024, 0)
    assert (a.status, a.data, a.expected_length, a.data_length, a.residue) == \
        ("check_condition", a_data, 1024, 512, 512)
    assert a.sense is not None and a.sense.key == 2
    assert a.seq < b.seq  # numbered in Command IU order, emitted as they finished
    assert decoder.matched_by_order == 1  # B's data had two candidates; A's, only A


def test_streams_late_data_is_not_given_to_the_next_command() -> None:
    decoder = uas.UasDecoder()
    out = feed_all(decoder, [
        exchange(3, 0x04, uas.build_command_iu(1, READ_10)),
        exchange(2, 0x83, uas.build_sense_iu(1, 0x00)),
        exchange(6, 0x04, uas.build_command_iu(2, READ_10)),
        exchange(1, 0x81, b"late" * 128),  # queued for command 1, which has ended
        exchange(4, 0x81, b"mine" * 128),
        exchange(5, 0x83, uas.build_sense_iu(2, 0x00)),
    ])
    first, second = out
    assert first.data == b"" and second.data == b"mine" * 128
    assert decoder.orphans == 1


def test_usb2_read_and_write_ready_name_the_data_s_command() -> None:
    """Without streams the host queues data after Read/Write Ready: submission order would
    point at the wrong command, the Ready IU's tag does not."""
    decoder = uas.UasDecoder()
    written = bytes(range(256)) * 4
    out = feed_all(decoder, [
        exchange(1, 0x04, uas.build_command_iu(5, READ_10)),
        exchange(2, 0x04, uas.build_command_iu(6, WRITE_10)),
        exchange(3, 0x83, uas.build_ready_iu(uas.IU_READ_READY, 5)),
        exchange(4, 0x81, b"r" * 512, requested=512),
        exchange(5, 0x83, uas.build_sense_iu(5, 0x00)),
        exchange(6, 0x83, uas.build_ready_iu(uas.IU_WRITE_READY, 6)),
        exchange(7, 0x02, written),
        exchange(8, 0x83, uas.build_sense_iu(6, 0x00)),
    ])
    read, write = out
    assert (read.tag, read.data, read.data_direction) == (5, b"r" * 512, "in")
    assert (write.tag, write.data, write.data_direction, write.status) == \
        (6, written, "out", "good")
    assert decoder.matched_by_order == 0


def test_a_command_whose_sense_iu_never_came_is_missing() -> None:
    decoder = uas.UasDecoder()
    out = feed_all(decoder, [
        exchange(2, 0x04, uas.build_command_iu(3, INQUIRY)),
        exchange(1, 0x81, bytes(36), requested=36),
        exchange(3, 0x83, b"", completed=False),  # the status transfer never completed
    ])
    (cmd,) = out
    assert (cmd.status, cmd.residue, cmd.csw_seq, cmd.data_length) == ("missing", None, None, 36)


def test_a_reused_open_tag_ends_the_old_command_as_missing() -> None:
    decoder = uas.UasDecoder()
    out = feed_all(decoder, [
        exchange(1, 0x04, uas.build_command_iu(3, INQUIRY)),
        exchange(2, 0x04, uas.build_command_iu(3, bytes(6))),
        exchange(3, 0x83, uas.build_sense_iu(3, 0x00)),
    ])
    assert [(c.info.name, c.status) for c in out] == [("inquiry", "missing"),
                                                       ("test_unit_ready", "good")]


# ---- malformed ---------------------------------------------------------------------


def test_malformed_command_iu_is_an_invalid_row() -> None:
    decoder = uas.UasDecoder()
    short = uas.build_command_iu(4, INQUIRY)[:20]
    claims_more = bytearray(uas.build_command_iu(4, INQUIRY))
    claims_more[6] = 8 << 2  # 32 additional CDB bytes that are not there
    out = feed_all(decoder, [exchange(1, 0x04, short), exchange(2, 0x04, bytes(claims_more)),
                             exchange(3, 0x04, b"\x02\x00\x00\x09")])
    assert [(c.tag, c.status, c.info.opcode, c.info.name) for c in out] == [
        (4, "invalid", -1, "invalid_command"), (4, "invalid", -1, "invalid_command"),
        (9, "invalid", -1, "invalid_iu")]
    assert decoder.invalid == 3


def test_malformed_sense_iu_makes_its_command_invalid() -> None:
    decoder = uas.UasDecoder()
    out = feed_all(decoder, [
        exchange(1, 0x04, uas.build_command_iu(4, INQUIRY)),
        exchange(2, 0x83, uas.build_sense_iu(4, 0x00)[:10]),
        exchange(3, 0x83, b"\x09\x00\x00\x07"),  # no such IU, no such tag
    ])
    (cmd,) = out
    assert cmd.status == "invalid" and decoder.invalid == 2


def test_sense_length_beyond_the_bytes_reads_only_what_is_there() -> None:
    decoder = uas.UasDecoder()
    iu = bytearray(uas.build_sense_iu(4, 0x02, NOT_READY))
    iu[14:16] = (60000).to_bytes(2, "big")
    out = feed_all(decoder, [exchange(1, 0x04, uas.build_command_iu(4, bytes(6))),
                             exchange(2, 0x83, bytes(iu))])
    (cmd,) = out
    assert cmd.status == "check_condition" and cmd.sense is not None and cmd.sense.asc == 4


def test_random_bytes_on_every_pipe_never_raise() -> None:
    rng = random.Random(266)
    decoder = uas.UasDecoder()
    endpoints = [0x04, 0x83, 0x81, 0x02]
    seq = 0
    for _ in range(2000):
        seq += 1
        size = rng.choice([0, 1, 3, 4, 8, 15, 16, 31, 32, 33, 48, 64])
        data = bytes([rng.choice([1, 3, 4, 5, 6, 7, rng.randrange(256)])]) + rng.randbytes(size)
        decoder.feed(exchange(seq, rng.choice(endpoints), data), PIPES)
    decoder.flush()


# ---- task management -------------------------------------------------------------------


def test_abort_task_is_a_row_and_ends_the_task_it_aborted() -> None:
    decoder = uas.UasDecoder()
    out = feed_all(decoder, [
        exchange(1, 0x04, uas.build_command_iu(1, READ_10)),
        exchange(2, 0x04, uas.build_command_iu(2, READ_10)),
        exchange(3, 0x04, uas.build_task_management_iu(9, uas.ABORT_TASK, managed_tag=1)),
        exchange(4, 0x83, uas.build_response_iu(9, uas.RESPONSE_COMPLETE)),
        exchange(5, 0x83, uas.build_sense_iu(2, 0x00)),
    ])
    by_tag = {c.tag: c for c in out}
    tmf = by_tag[9]
    assert (tmf.info.opcode, tmf.info.name, tmf.status, tmf.cdb) == \
        (-1, "tmf_abort_task", "tmf_complete",
         uas.build_task_management_iu(9, uas.ABORT_TASK, managed_tag=1))
    assert (by_tag[1].status, by_tag[1].residue) == ("aborted", None)
    assert (by_tag[2].status, by_tag[2].residue) == ("good", 0)


def test_logical_unit_reset_aborts_that_lun_only_and_failure_aborts_nothing() -> None:
    decoder = uas.UasDecoder()
    out = feed_all(decoder, [
        exchange(1, 0x04, uas.build_command_iu(1, READ_10, lun=0)),
        exchange(2, 0x04, uas.build_command_iu(2, READ_10, lun=1)),
        exchange(3, 0x04, uas.build_task_management_iu(8, uas.ABORT_TASK_SET, lun=1)),
        exchange(4, 0x83, uas.build_response_iu(8, 0x05)),  # TASK MANAGEMENT FUNCTION FAILED
        exchange(5, 0x04, uas.build_task_management_iu(9, uas.LOGICAL_UNIT_RESET, lun=1)),
        exchange(6, 0x83, uas.build_response_iu(9, uas.RESPONSE_SUCCEEDED)),
    ])
    status = {c.tag: (c.info.name, c.status) for c in out}
    assert status == {8: ("tmf_abort_task_set", "tmf_failed"),
                      9: ("tmf_logical_unit_reset", "tmf_succeeded"),
                      2: ("read_10", "aborted"), 1: ("read_10", "missing")}


def test_response_iu_refusing_a_command() -> None:
    decoder = uas.UasDecoder()
    out = feed_all(decoder, [exchange(1, 0x04, uas.build_command_iu(1, INQUIRY)),
                             exchange(2, 0x83, uas.build_response_iu(1, 0x0A))])
    assert [c.status for c in out] == ["overlapped_tag"]


# ---- pipes and selection -----------------------------------------------------------------


def uas_configuration() -> bytes:
    """Alternate setting 0 Bulk-Only, 1 UAS with its four Pipe Usage descriptors."""
    def interface(alt: int, endpoints: int, protocol: int) -> bytes:
        return d.InterfaceDescriptor.build(dict(
            bInterfaceNumber=0, bAlternateSetting=alt, bNumEndpoints=endpoints,
            bInterfaceClass=8, bInterfaceSubClass=6, bInterfaceProtocol=protocol, iInterface=0))

    def endpoint(address: int) -> bytes:
        return d.EndpointDescriptor.build(dict(bEndpointAddress=address, bmAttributes=2,
                                               wMaxPacketSize=512, bInterval=0))

    companion = d.SuperSpeedEndpointCompanionDescriptor.build(dict(
        bMaxBurst=0, bmAttributes=5, wBytesPerInterval=0))
    body = interface(0, 2, 0x50) + endpoint(0x81) + endpoint(0x02) + interface(1, 4, 0x62)
    for address, pipe in ((0x81, 3), (0x02, 4), (0x83, 2), (0x04, 1)):
        body += endpoint(address) + companion + uas.PipeUsageDescriptor.build(
            {"bPipeID": pipe, "Reserved": 0})
    total = 9 + len(body)
    return d.ConfigurationDescriptor.build(dict(
        bDescriptorType=2, wTotalLength=total, bNumInterfaces=1, bConfigurationValue=1,
        iConfiguration=0, bmAttributes=0x80, bMaxPower=50)) + body


def test_pipe_usage_descriptors_name_the_four_pipes() -> None:
    settings = uas.pipe_usage(uas_configuration())
    assert settings[(0, 0)] == (0x50, {})
    protocol, usage = settings[(0, 1)]
    assert protocol == 0x62 and uas.UasPipes.from_usage(usage) == PIPES
    assert uas.UasPipes.from_usage({1: 0x04, 2: 0x83, 3: 0x81}) is None  # one missing
    assert uas.UasPipes.from_usage({1: 0x84, 2: 0x83, 3: 0x81, 4: 0x02}) is None  # wrong way


class Bus:
    """Events of one capture, with increasing ids and times."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.n = 0

    def transfer(self, device: int, endpoint: int, kind: int, setup: bytes | None = None,
                 out: bytes = b"", back: bytes = b"", requested: int = 0,
                 status: int = 0) -> None:
        self.n += 1
        common = dict(bus=1, device=device, endpoint=endpoint, transfer_type=kind)
        self.events.append(Event(SUBMIT, self.n * 0.001, self.n, setup=setup, data=out,
                                 length=requested or len(out), **common))  # type: ignore[arg-type]
        self.events.append(Event(COMPLETE, self.n * 0.001 + 0.0005, self.n, data=back,
                                 length=len(back) or len(out), urb_status=status,
                                 **common))  # type: ignore[arg-type]

    def submit(self, device: int, endpoint: int, out: bytes = b"", requested: int = 0) -> int:
        """A bulk submission left open; :meth:`complete` ends it."""
        self.n += 1
        self.events.append(Event(SUBMIT, self.n * 0.001, self.n, bus=1, device=device,
                                 endpoint=endpoint, transfer_type=BULK, data=out,
                                 length=requested or len(out)))
        return self.n

    def complete(self, n: int, device: int, endpoint: int, back: bytes = b"",
                 length: int = 0) -> None:
        self.events.append(Event(COMPLETE, self.n * 0.001 + 0.0005, n, bus=1, device=device,
                                 endpoint=endpoint, transfer_type=BULK, data=back,
                                 length=length or len(back), urb_status=0))

    def control(self, device: int, setup: bytes, back: bytes = b"", status: int = 0) -> None:
        self.transfer(device, 0x80 if setup[0] & 0x80 else 0x00, CONTROL, setup=setup,
                      back=back, requested=len(back), status=status)

    def enumerate(self, device: int, config: bytes) -> None:
        self.control(device, std.build_setup(0x80, std.GET_DESCRIPTOR, d.CONFIGURATION << 8, 0,
                                             len(config)), config)
        self.control(device, std.build_setup(0x00, 0x09, 1, 0, 0))  # SET_CONFIGURATION 1


def set_interface(alt: int) -> bytes:
    return std.build_setup(0x01, 0x0B, alt, 0, 0)


def test_only_the_selected_setting_decides_uas() -> None:
    tracker = IdentityTracker()
    bus = Bus()
    bus.enumerate(4, uas_configuration())
    bus.control(4, set_interface(1), status=0xC0000004)  # refused: still setting 0
    bus.control(4, set_interface(1))
    bus.control(4, std.build_setup(0x00, 0x09, 1, 0, 0))  # SET_CONFIGURATION: back to 0
    from usbtrace.decode.pairing import Pairer
    pairer = Pairer()
    seen = []
    for event in bus.events:
        for x, _ in pairer.feed(event):  # no bulk OUT bytes here: every step is sealed
            tracker.feed(x)
            seen.append(tracker.uas_pipes(1, 4))
    assert seen == [None, None, None, PIPES, None]


def test_a_session_with_a_bot_and_a_uas_device_numbers_commands_once(tmp_path: Path) -> None:
    bus = Bus()
    bus.enumerate(4, uas_configuration())
    bus.control(4, set_interface(1))
    bus.enumerate(5, uas_configuration())  # the same model, left on Bulk-Only
    bus.transfer(5, 0x02, BULK, out=bot.build_cbw(7, 36, True, 0, INQUIRY))
    data = bus.submit(4, 0x81, requested=36)  # queued with the command, as on streams
    status = bus.submit(4, 0x83, requested=48)
    command = bus.submit(4, 0x04, out=uas.build_command_iu(2, INQUIRY))
    bus.complete(command, 4, 0x04, length=32)
    bus.complete(data, 4, 0x81, bytes(36))
    bus.complete(status, 4, 0x83, uas.build_sense_iu(2, 0x00))
    bus.transfer(5, 0x81, BULK, back=bytes(36), requested=36)
    bus.transfer(5, 0x81, BULK, back=bot.build_csw(7, 0, 0), requested=13)
    db = Database(tmp_path / "t.db")
    sid = db.new_session("usbmon", "synthetic", "now", "capture")
    writer = SessionWriter(db, sid)
    for event in bus.events:
        writer.feed(event)
    writer.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    rows = conn.execute("SELECT seq, device, tag, name, data_length, status FROM scsi_commands "
                        "ORDER BY seq").fetchall()
    assert rows == [(1, 5, 7, "inquiry", 36, "good"), (2, 4, 2, "inquiry", 36, "good")]
    notes, = conn.execute("SELECT notes FROM sessions").fetchone()
    # device 5 was never switched to UAS: its note says so; device 4 was decoded
    assert "device 1.5 speaks UAS" in notes and "device 1.4" not in notes


def test_commands_in_flight_are_bounded_oldest_ending_missing() -> None:
    decoder = uas.UasDecoder()
    early: list[ScsiCommand] = []
    for tag in range(uas.MAX_OPEN + 10):
        early += decoder.feed(exchange(tag + 1, 0x04, uas.build_command_iu(tag, INQUIRY)), PIPES)
    assert [c.tag for c in early] == list(range(10))
    assert all(c.status == "missing" for c in early)
    assert len(decoder.flush()) == uas.MAX_OPEN
