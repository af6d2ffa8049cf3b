"""Decoding in capture order: agreement with Wireshark, frame by frame, on every shared
storage capture and on its data-only version (only the bulk records that carry bytes,
as Wireshark's export of a display filter writes it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from usbtrace.analysis.extract import command_segments
from usbtrace.capture.pcap import CaptureReader, PcapngWriter
from usbtrace.capture.usbmon import LINKTYPE_USB_LINUX_MMAPPED
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from . import tshark
from .conftest import STORAGE_CAPTURES, shared_capture

STATUS = {"good": 0, "check_condition": 1, "phase_error": 2, "missing": None}
RDWR10 = {0x28, 0x2A, 0x2F, 0x35}  # Wireshark fills scsi_sbc.rdwr10.* for these

USBMON_SECTIONS = "usbmon sections of ajbanjara__BT_USB_LinCooked_Eth_80211_RT.ntar"
needs_tshark = pytest.mark.skipif(not tshark.available(),
                                  reason="tshark is not on PATH (.ci/run installs it)")


def capture(tmp_path: Path, name: str, data_only: bool) -> Path:
    path = shared_capture(name)
    return tshark.data_only(path, tmp_path / "data-only.pcapng") if data_only else path


def imported(tmp_path: Path, path: Path) -> tuple[Database, sqlite3.Connection, int]:
    database = Database(tmp_path / "t.db")
    result = import_capture(database, path)
    assert result.malformed == [], result.malformed
    return database, sqlite3.connect(tmp_path / "t.db"), result.session_id


def usbmon_sections(tmp_path: Path) -> Path:
    """The usbmon records of the multi-section capture on their own (tshark cannot open the
    whole file: a corrupt Bluetooth packet), as one pcapng: card readers, a 3G modem whose
    serial ports share the device with its virtual CD, 618 commands."""
    path = shared_capture("ajbanjara__BT_USB_LinCooked_Eth_80211_RT.ntar")
    out = tmp_path / "usbmon-sections.pcapng"
    with open(path, "rb") as stream, open(out, "wb") as sink:
        writer = PcapngWriter(sink, LINKTYPE_USB_LINUX_MMAPPED)
        for _, ts, linktype, data, original, _, _ in CaptureReader(stream).records():
            if linktype == LINKTYPE_USB_LINUX_MMAPPED:
                writer.write(round(ts * 1e9), data, original)
    return out


@needs_tshark
@pytest.mark.parametrize("data_only", [False, True], ids=["full", "data-only"])
@pytest.mark.parametrize("name", STORAGE_CAPTURES + [USBMON_SECTIONS])
def test_commands_agree_with_wireshark_by_cbw_frame(tmp_path: Path, name: str,
                                                    data_only: bool) -> None:
    if name == USBMON_SECTIONS:
        path = usbmon_sections(tmp_path)
        if data_only:
            path = tshark.data_only(path, tmp_path / "data-only.pcapng")
    else:
        path = capture(tmp_path, name, data_only)
    database, conn, sid = imported(tmp_path, path)
    rows = conn.execute(
        "SELECT u.record_number, c.seq, c.tag, c.opcode, c.lba, c.blocks, c.status "
        "FROM scsi_commands c JOIN urbs u ON u.session_id = c.session_id "
        "AND u.seq = c.cbw_seq WHERE c.session_id = ? ORDER BY c.seq", (sid,)).fetchall()
    ours = {frame: (tag, op, lba if op in RDWR10 else None, blocks if op in RDWR10 else None,
                    STATUS.get(status, status))
            for frame, _, tag, op, lba, blocks, status in rows}
    theirs = {c.frame: (c.tag, c.opcode, c.lba, c.blocks, c.status)
              for c in tshark.scsi_commands(path)}
    assert len(theirs) > 0
    assert ours == theirs
    # stored in the order of their CBWs
    frames = [frame for frame, *_ in rows]
    assert frames == sorted(frames)

    # each command's data: the bytes the capture carries between its CBW and its CSW
    records = tshark.bulk_records(path)
    by_frame = {r.frame: r for r in records}
    seq_of = {frame: seq for frame, seq, *_ in rows}
    direction = dict(conn.execute("SELECT seq, data_direction FROM scsi_commands "
                                  "WHERE session_id = ?", (sid,)).fetchall())
    compared = 0
    for cbw, csw in tshark.csw_frames(path).items():
        out_ep, in_ep = by_frame[cbw].endpoint, by_frame[csw].endpoint
        seq = seq_of[cbw]
        if direction[seq] == "none":
            expected = b""
        else:
            endpoint = in_ep if direction[seq] == "in" else out_ep
            expected = b"".join(
                r.payload for r in records
                if cbw < r.frame < csw and r.bus == by_frame[cbw].bus
                and r.device == by_frame[cbw].device and r.endpoint == endpoint
                and r.from_host == (endpoint & 0x80 == 0))
        segments, _ = command_segments(database, sid, seq)
        assert b"".join(data for _, data in segments) == expected, \
            f"command {seq} (CBW frame {cbw}, CSW frame {csw})"
        compared += 1
    assert compared == sum(1 for c in theirs.values() if c[4] is not None)


def test_modems_and_readers_beside_storage_give_no_stray_note_and_named_commands(
        tmp_path: Path) -> None:
    # a 3G modem whose serial ports share the device with its virtual CD, card readers,
    # Bluetooth: every bulk byte off the Bulk-Only pipes belongs to another function
    path = shared_capture("ajbanjara__BT_USB_LinCooked_Eth_80211_RT.ntar")
    database = Database(tmp_path / "t.db")
    result = import_capture(database, path)
    conn = sqlite3.connect(tmp_path / "t.db")
    notes, = conn.execute("SELECT notes FROM sessions WHERE id = ?",
                          (result.session_id,)).fetchone()
    assert "belonged to no command" not in notes
    rows = conn.execute("SELECT name, count(*), sum(status = 'missing') FROM scsi_commands "
                        "WHERE opcode = 74 GROUP BY name").fetchall()
    assert rows == [("get_event_status_notification", 38, 0)]
