"""Replay of malformed or extreme recordings: notes and caveats, never an exception,
never a buffer sized from a recorded length field; the stream keeps memory flat."""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from usbtrace.devices.replayed import ReplayedDevice
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.records import BULK, COMPLETE, CONTROL, SUBMIT, Event
from usbtrace.replay import recording as rec
from usbtrace.replay.device import replay_device
from usbtrace.replay.host import replay_host
from usbtrace.replay.recording import from_events
from usbtrace.replay.report import KEPT, Divergence, Report
from usbtrace.replay.run import replay, target_image
from usbtrace.storage import bot
from usbtrace.usb.urb import USBD_STATUS_SUCCESS

INQUIRY_DATA = bytes([0, 0x80, 4, 2, 31, 0, 0, 0]) + b"VENDOR  PRODUCT         1.00"


class Wire:
    """Bulk-Only traffic of one device, as a capture would hold it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ts = 0.0
        self.irp = 0x1000
        self.tag = 0

    def transfer(self, endpoint: int, data: bytes, kind: int = BULK,
                 setup: bytes | None = None, length: int | None = None) -> None:
        self.irp += 8
        self.ts += 0.001
        out = not endpoint & 0x80 and kind == BULK
        common = dict(bus=1, device=2, endpoint=endpoint, transfer_type=kind)
        self.events.append(Event(SUBMIT, self.ts, self.irp, setup=setup,
                                 length=len(data) if length is None else length,
                                 data=data if out else b"", **common))  # type: ignore[arg-type]
        self.events.append(Event(COMPLETE, self.ts + 0.0005, self.irp, length=len(data),
                                 urb_status=USBD_STATUS_SUCCESS, data=b"" if out else data,
                                 **common))  # type: ignore[arg-type]

    def command(self, cdb: bytes, length: int, data_in: bytes | None = None,
                data_out: bytes | None = None, residue: int = 0, status: int = 0) -> None:
        self.tag += 1
        self.transfer(0x02, bot.build_cbw(self.tag, length, data_out is None, 0, cdb))
        if data_in is not None:
            self.transfer(0x81, data_in)
        if data_out is not None:
            self.transfer(0x02, data_out)
        self.transfer(0x81, bot.build_csw(self.tag, residue, status))

    def descriptor(self, kind: int, data: bytes) -> None:
        setup = struct.pack("<BBHHH", 0x80, 6, kind << 8, 0, len(data))
        self.transfer(0x80, data, CONTROL, setup)


def read16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)


def test_a_cbw_claiming_4_gib_is_not_given_4_gib() -> None:
    wire = Wire()
    wire.command(bytes([0x12, 0, 0, 0, 36, 0]), 0xFFFFFFFF, INQUIRY_DATA,
                 residue=0xFFFFFFFF - 36)
    recording = from_events("huge", wire.events)
    report = Report("huge", "device", commands=recording.count)
    replay_device(recording, report)
    assert report.identical and report.replayed == 1
    assert any("asks for more than" in note and "not issued" in note for note in report.notes)


def test_host_replay_of_a_4_gib_cbw_reads_into_a_bounded_buffer() -> None:
    wire = Wire()
    wire.command(bytes([0x12, 0, 0, 0, 36, 0]), 0xFFFFFFFF, INQUIRY_DATA[:8] + b"USBTRACE" +
                 b"Simulated Stick " + b"1.00", residue=0xFFFFFFFF - 36)
    recording = from_events("huge", wire.events)
    report = Report("huge", "host", commands=recording.count)
    replay_host(recording, SimulatedStick(target_image(recording, None)), report)
    assert report.replayed == 1 and report.compared_bytes == 36
    assert not [d for d in report.divergences if d.field == "data_in"], report.text()


def test_made_up_read_capacity_clamps_past_32_bits() -> None:
    wire = Wire()
    wire.command(read16(1 << 40, 1), 512, bytes(512))  # no READ CAPACITY recorded
    recording = from_events("far", wire.events)
    device = ReplayedDevice(recording, Report("far", "device"))
    rc10 = device._made_up(bytes([0x25]) + bytes(9))
    assert rc10 == b"\xff\xff\xff\xff" + (512).to_bytes(4, "big")
    rc16 = device._made_up(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))
    assert rc16 is not None and int.from_bytes(rc16[:8], "big") == 1 << 40
    report = Report("far", "device", commands=recording.count)
    replay_device(recording, report)  # the stack starts on the made-up capacity
    assert report.replayed == 1, report.text()


def test_a_made_up_capacity_past_64_bits_is_clamped_too() -> None:
    wire = Wire()
    wire.command(read16((1 << 64) - 1, 0xFFFF), 512, bytes(512))
    device = ReplayedDevice(from_events("end", wire.events), Report("end", "device"))
    rc16 = device._made_up(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))
    assert rc16 is not None and rc16[:8] == b"\xff" * 8


def test_malformed_descriptors_are_made_up_with_a_note() -> None:
    wire = Wire()
    wire.descriptor(1, bytes([18, 1, 0, 2, 0, 0, 0, 64]))  # cut to 8 bytes
    wire.descriptor(2, bytes([9, 2, 0xFF, 0xFF, 1, 1, 0, 0x80, 50, 0, 4, 0]))  # bLength 0
    wire.command(bytes([0x12, 0, 0, 0, 36, 0]), 36, INQUIRY_DATA)
    recording = from_events("bad descriptors", wire.events)
    report = Report("bad descriptors", "device", commands=recording.count)
    replay_device(recording, report)
    assert report.identical, report.text()
    assert any("descriptors were made up" in note for note in report.notes)


def test_a_truncated_configuration_walk_stops_at_the_bad_descriptor() -> None:
    from usbtrace.devices.replayed import _single_interface

    config = bytes([9, 2, 27, 0, 2, 1, 0, 0x80, 50]) + bytes([9, 4, 0, 0, 2, 8, 6, 0x50, 0]) + \
        bytes([9, 4, 1])  # the second interface is cut after 3 bytes
    interface = type("I", (), {"bInterfaceNumber": 0, "bAlternateSetting": 0})()
    out = _single_interface(config, {"interface": interface})
    assert out[9:] == config[9:18] and int.from_bytes(out[2:4], "little") == 18


def test_the_report_keeps_the_first_divergences_and_counts_the_rest() -> None:
    report = Report("x", "device", commands=1, replayed=1)
    for i in range(KEPT + 50):
        report.add(Divergence(i, "cmd", "data_in", b"a", b"b"))
    assert len(report.divergences) == KEPT and report.divergence_count == KEPT + 50
    assert not report.identical and f"{KEPT + 50} divergence(s)" in report.text()


def test_commands_stream_and_the_survey_stays_bounded() -> None:
    def events() -> Iterator[Event]:
        wire = Wire()
        for i in range(3 * rec.INDEX_LIMIT):
            wire.command(struct.pack(">BBIBHB", 0x28, 0, i, 0, 1, 0), 512, bytes(512))
            yield from wire.events
            wire.events.clear()

    recording = rec.survey("many", events)
    assert recording.count == 3 * rec.INDEX_LIMIT
    assert len(recording.survey.by_cdb) == rec.INDEX_LIMIT
    stream = recording.commands()
    assert next(stream).info.lba == 0 and next(stream).info.lba == 1  # one at a time


def test_host_replay_of_a_14_gib_stick_gets_a_sparse_blank_target() -> None:
    from usbtrace.devices.image import SparseImage
    from usbtrace.replay.run import load

    from .conftest import shared_capture

    recording = load(str(shared_capture("ajbanjara__USBMSC-USBPcap.pcapng")))
    image = target_image(recording, None)
    assert isinstance(image, SparseImage) and image.size > 14 << 30
    assert not image.chunks  # nothing stored until the replay writes


def test_a_short_interface_descriptor_in_the_recording_is_no_exception() -> None:
    wire = Wire()
    wire.command(bytes([0x12, 0, 0, 0, 36, 0]), 36, INQUIRY_DATA)
    recording = from_events("short interface", wire.events)
    # what a capture may hold: an interface descriptor of 4 bytes, then endpoints
    config = bytes([9, 2, 27, 0, 1, 1, 0, 0x80, 50]) + bytes([4, 4, 0, 0]) + \
        bytes([7, 5, 0x81, 2, 0, 2, 0]) + bytes([7, 5, 0x02, 2, 0, 2, 0])
    config = config[:2] + len(config).to_bytes(2, "little") + config[4:]
    recording.descriptors[(2, 0, 0)] = config
    report = Report("short interface", "device", commands=recording.count)
    replay_device(recording, report)
    assert report.replayed == 1 and all("Error" not in d.actual for d in report.divergences
                                        if isinstance(d.actual, str)), report.text()


def _mutated_session(tmp_path: Path, sql: str) -> Path:
    from click.testing import CliRunner

    from usbtrace.cli import main

    db = tmp_path / "m.db"
    capture = Path(__file__).resolve().parent.parent / "captures" / "files-fat12-8M.pcapng"
    assert CliRunner().invoke(main, ["import", str(capture), "--db", str(db), "-q"]).exit_code == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute(sql).rowcount >= 1
    return db


FIRST_CBW = ("(SELECT min(seq) FROM urbs WHERE length(data) = 31 AND direction = 'out' AND "
             "transfer_type = 'bulk' AND seq > (SELECT min(seq) + 40 FROM urbs))")
FIRST_CSW = ("(SELECT min(seq) FROM urbs WHERE length(data) = 13 AND direction = 'in' AND "
             "seq > (SELECT min(seq) + 40 FROM urbs))")


@pytest.mark.parametrize("sql", [
    # a CBW whose transfer length says 4 GiB
    f"UPDATE urbs SET data = substr(data, 1, 8) || x'ffffffff' || substr(data, 13) "
    f"WHERE seq = {FIRST_CBW}",
    # a CBW whose CB length is 0 and whose opcode is unknown
    f"UPDATE urbs SET data = substr(data, 1, 14) || x'00c7' || substr(data, 17) "
    f"WHERE seq = {FIRST_CBW}",
    # a CSW with a residue of 4 GiB and a status that is no status
    f"UPDATE urbs SET data = substr(data, 1, 8) || x'ffffffff7f' WHERE seq = {FIRST_CSW}",
    # a CSW lost
    f"DELETE FROM urbs WHERE seq = {FIRST_CSW}",
    # every configuration descriptor scrambled: bLength 0 after the header
    "UPDATE urbs SET data = substr(data, 1, 9) || zeroblob(length(data) - 9) "
    "WHERE setup IS NOT NULL AND hex(substr(setup, 1, 4)) = '80060002'",
    # every device descriptor cut to 8 bytes
    "UPDATE urbs SET data = substr(data, 1, 8) WHERE setup IS NOT NULL AND "
    "hex(substr(setup, 1, 4)) = '80060001'",
])
@pytest.mark.parametrize("mode", ["device", "host"])
def test_a_malformed_session_replays_to_a_report(tmp_path: Path, sql: str, mode: str) -> None:
    db = _mutated_session(tmp_path, sql)
    report = replay("session:1", mode, db=str(db))
    assert report.replayed == report.commands > 0, report.text()
    assert report.text()  # and the report renders
