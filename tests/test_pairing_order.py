"""Pairing and Bulk-Only decoding in capture order, on synthetic records: captures that
hold only the records carrying data, OUT completions that correct the length, bounded
pending exchanges, composite devices, and the notes that say what was not known."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from usbtrace.decode.bot import BotDecoder, ScsiCommand
from usbtrace.decode.pairing import Pairer
from usbtrace.records import BULK, COMPLETE, CONTROL, SUBMIT, Event
from usbtrace.storage import bot, scsi
from usbtrace.store.database import Database
from usbtrace.store.writer import SessionWriter
from usbtrace.usb.urb import USBD_STATUS_STALL_PID, USBD_STATUS_SUCCESS

OUT, IN = 0x02, 0x81


class Capture:
    """Records of one Bulk-Only device as usbmon writes them, optionally only those that
    carry data (no IN submissions, no OUT completions)."""

    def __init__(self, data_only: bool = False, device: int = 5) -> None:
        self.events: list[Event] = []
        self.data_only = data_only
        self.device = device
        self.ts = 0.0

    def _event(self, kind: str, urb: int, endpoint: int, **kw: object) -> None:
        self.ts += 0.001
        self.events.append(Event(kind, self.ts, urb, bus=1, device=self.device,
                                 endpoint=endpoint, transfer_type=BULK,
                                 record_number=len(self.events) + 1, **kw))  # type: ignore[arg-type]

    def out(self, urb: int, data: bytes, actual: int | None = None,
            status: int = USBD_STATUS_SUCCESS, endpoint: int = OUT) -> None:
        self._event(SUBMIT, urb, endpoint, data=data, length=len(data))
        if not self.data_only:
            self._event(COMPLETE, urb, endpoint, length=len(data) if actual is None else actual,
                        urb_status=status)

    def into(self, urb: int, data: bytes, endpoint: int = IN) -> None:
        if not self.data_only:
            self._event(SUBMIT, urb, endpoint, length=max(len(data), 512))
        self._event(COMPLETE, urb, endpoint, data=data, length=len(data),
                    urb_status=USBD_STATUS_SUCCESS)

    def read(self, urb: int, tag: int, lba: int, payload: bytes) -> None:
        cdb = bytes([scsi.READ_10, 0]) + lba.to_bytes(4, "big") + bytes([0, 0, 1, 0])
        self.out(urb, bot.build_cbw(tag, len(payload), True, 0, cdb))
        self.into(urb + 1, payload)
        self.into(urb + 1, bot.build_csw(tag, 0, 0))


def decode(events: list[Event], pairer: Pairer | None = None) -> list[ScsiCommand]:
    pairer = pairer or Pairer()
    decoder = BotDecoder()
    commands: list[ScsiCommand] = []
    for event in events:
        for x, sealed in pairer.feed(event):
            commands += decoder.take(x, sealed)
    for x in pairer.flush():
        commands += decoder.take(x, True)
    return commands + decoder.flush()


def test_data_only_capture_gives_each_command_its_own_data_and_csw() -> None:
    # usbmon reuses URB ids: the CBW's id comes back only with the next CBW
    capture = Capture(data_only=True)
    blocks = [bytes([n]) * 512 for n in range(1, 4)]
    for n, block in enumerate(blocks):
        capture.read(100, tag=n + 1, lba=n * 8, payload=block)
    commands = decode(capture.events)
    assert [(c.tag, c.info.lba, c.status, c.data, c.residue) for c in commands] == \
        [(n + 1, n * 8, "good", block, 0) for n, block in enumerate(blocks)]
    assert [c.seq for c in commands] == [1, 2, 3]


def test_full_and_data_only_captures_decode_alike() -> None:
    full, data_only = Capture(), Capture(data_only=True)
    for capture in (full, data_only):
        capture.read(7, tag=1, lba=0, payload=b"\x11" * 512)
        capture.out(7, bot.build_cbw(2, 1024, False, 0, bytes([scsi.WRITE_10]) + bytes(9)))
        capture.out(9, b"\x22" * 1024)
        capture.into(8, bot.build_csw(2, 0, 0))
    ours = [[(c.tag, c.status, c.data, c.data_length) for c in decode(capture.events)]
            for capture in (full, data_only)]
    assert ours[0] == ours[1] == [(1, "good", b"\x11" * 512, 512),
                                  (2, "good", b"\x22" * 1024, 1024)]


def test_out_completion_corrects_the_length_counted_at_submission() -> None:
    capture = Capture()
    capture.out(1, bot.build_cbw(9, 1024, False, 0, bytes([scsi.WRITE_10]) + bytes(9)))
    capture.out(2, b"\x33" * 1024, actual=512, status=USBD_STATUS_STALL_PID)
    capture.into(3, bot.build_csw(9, 512, 1))
    command, = decode(capture.events)
    assert (command.data_length, command.data_stalled, command.residue) == (512, True, 512)


def test_pending_exchanges_stay_bounded_and_each_is_sealed_once() -> None:
    pairer = Pairer(limit=8, limit_bytes=4096)
    sealed_seqs: list[int] = []
    for n in range(1000):  # OUT submissions whose completions never come
        event = Event(SUBMIT, n / 1000, n, bus=1, device=5, endpoint=OUT, transfer_type=BULK,
                      data=bytes(1000), length=1000)
        for x, sealed in pairer.feed(event):
            if sealed:
                sealed_seqs.append(x.seq)
        assert len(pairer._pending) <= 8 and pairer._pending_bytes <= 4096
    sealed_seqs += [x.seq for x in pairer.flush()]
    assert sorted(sealed_seqs) == list(range(1, 1001))
    assert pairer.evicted == 1000 - 4


def test_commands_are_numbered_in_the_order_of_their_cbws_across_devices() -> None:
    a, b = Capture(data_only=True, device=5), Capture(data_only=True, device=6)
    a.out(1, bot.build_cbw(1, 512, True, 0, bytes([scsi.READ_10]) + bytes(9)))
    b.out(1, bot.build_cbw(1, 0, False, 0, bytes(6)))
    b.into(2, bot.build_csw(1, 0, 0))
    a.into(2, b"\x44" * 512)
    a.into(2, bot.build_csw(1, 0, 0))
    events = sorted(a.events + b.events, key=lambda e: (e.ts, e.device))
    commands = decode(events)
    # device 6's command ends first, yet device 5's CBW came first
    assert [c.device for c in commands] == [6, 5]
    assert sorted((c.seq, c.device, c.status, c.data) for c in commands) == \
        [(1, 5, "good", b"\x44" * 512), (2, 6, "good", b"")]


def test_a_composite_devices_other_bulk_pipe_is_neither_data_nor_orphan(tmp_path: Path) -> None:
    capture = Capture()
    capture.read(1, tag=1, lba=0, payload=b"\x55" * 512)  # shows the Bulk-Only pipes
    capture.out(1, bot.build_cbw(2, 512, True, 0, bytes([scsi.READ_10]) + bytes(9)))
    capture.into(40, b"AT+OK\r\n", endpoint=0x83)  # the modem's serial port answers meanwhile
    capture.out(41, b"ATZ\r\n", endpoint=0x04)
    capture.into(2, b"\x66" * 512)
    capture.into(2, bot.build_csw(2, 0, 0))
    database = Database(tmp_path / "t.db")
    sid = database.new_session("usbmon", "synthetic", "now", "capture")
    writer = SessionWriter(database, sid)
    for event in capture.events:
        writer.feed(event)
    writer.close()
    commands = decode(capture.events)
    assert [c.data for c in commands] == [b"\x55" * 512, b"\x66" * 512]
    notes, = sqlite3.connect(tmp_path / "t.db").execute("SELECT notes FROM sessions").fetchone()
    assert notes is None


def test_bulk_traffic_of_a_device_that_is_not_storage_gives_no_orphan_note(
        tmp_path: Path) -> None:
    database = Database(tmp_path / "t.db")
    sid = database.new_session("usbmon", "synthetic", "now", "capture")
    writer = SessionWriter(database, sid)
    capture = Capture(device=9)  # a network adapter: frames on bulk pipes, no CBW ever
    for n in range(5):
        capture.out(n, bytes(60))
        capture.into(100 + n, bytes(1514))
    # and a storage device whose capture starts mid-command: its CSW is an orphan
    storage = Capture(device=5)
    storage.into(1, bot.build_csw(1, 0, 0))
    storage.read(2, tag=2, lba=0, payload=bytes(512))
    for event in capture.events + storage.events:
        writer.feed(event)
    writer.close()
    notes, = sqlite3.connect(tmp_path / "t.db").execute("SELECT notes FROM sessions").fetchone()
    assert notes.startswith("1 bulk transfers belonged to no command")


def test_data_only_import_says_out_lengths_are_the_lengths_submitted(tmp_path: Path) -> None:
    database = Database(tmp_path / "t.db")
    sid = database.new_session("usbmon", "synthetic", "now", "capture")
    writer = SessionWriter(database, sid)
    capture = Capture(data_only=True)
    capture.read(3, tag=1, lba=0, payload=bytes(512))
    capture.read(3, tag=2, lba=8, payload=bytes(512))
    for event in capture.events:
        writer.feed(event)
    writer.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    notes, = conn.execute("SELECT notes FROM sessions").fetchone()
    assert notes.startswith("2 bulk OUT transfers with data have no completion record")
    rows = conn.execute("SELECT seq, tag, status, data_length FROM scsi_commands ORDER BY seq"
                        ).fetchall()
    assert rows == [(1, 1, "good", 512), (2, 2, "good", 512)]


def test_get_event_status_notification_has_its_name() -> None:
    info = scsi.decode_cdb(bytes([0x4A, 0x01, 0, 0, 0x10, 0, 0, 0, 8, 0]))
    assert (info.name, info.allocation_length) == ("get_event_status_notification", 8)


def test_a_new_configuration_forgets_the_pipes_learnt() -> None:
    # another device takes the address: its Bulk-Only IN pipe is another endpoint
    capture = Capture()
    capture.read(1, tag=1, lba=0, payload=b"\x77" * 512)
    capture.events.append(Event(COMPLETE, 1.0, 50, bus=1, device=5, endpoint=0x00,
                                transfer_type=CONTROL, setup=bytes.fromhex("0009010000000000"),
                                length=0, urb_status=USBD_STATUS_SUCCESS))
    capture.out(1, bot.build_cbw(2, 512, True, 0, bytes([scsi.READ_10]) + bytes(9)))
    capture.into(2, b"\x88" * 512, endpoint=0x82)
    capture.into(2, bot.build_csw(2, 0, 0), endpoint=0x82)
    assert [(c.status, c.data) for c in decode(capture.events)] == \
        [("good", b"\x77" * 512), ("good", b"\x88" * 512)]
