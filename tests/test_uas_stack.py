"""The UAS stick through the whole stack: UASPStor, the bus with and without streams,
the live decode, export, and Wireshark's own decode of the export."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.decode.uas import ABORT_TASK, IU_COMMAND, IU_SENSE
from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.devices.uas import UAS_COMMAND, UAS_DATA_IN, UAS_DATA_OUT, UAS_STATUS
from usbtrace.drivers import disk, uaspstor
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.recording import RecordOptions, record
from usbtrace.records import COMPLETE, SUBMIT, Event
from usbtrace.storage.srb import Srb
from usbtrace.wdm.win32 import NtStatusError

from . import tshark
from .test_uas_capture import (
    INQUIRY,
    RDWR10,
    SCSI_STATUS,
    SENSE_KEY_NUMBERS,
    wireshark_uas_commands,
)

MODES = {"high": ("high", False), "streams": ("super", True)}
SYNCHRONIZE_CACHE_10 = 0x35  # Wireshark shows its LBA, but no transfer length


@pytest.fixture(scope="module", params=sorted(MODES))
def recorded(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    speed, streams = MODES[request.param]
    db = tmp_path_factory.mktemp("uas") / "t.db"
    summary = record(RecordOptions(db=str(db), size="16M", speed=speed, protocol="uas",
                                   streams=streams))
    assert summary.workload.ok, summary.workload.mismatches
    assert summary.bytes_read == 2 * summary.bytes_written > 0
    return db, request.param


def test_uaspstor_selects_the_uas_setting_and_decodes_live(recorded: tuple[Path, str]) -> None:
    """SET_INTERFACE for alternate setting 1, then every command decoded as UAS: a tag,
    a Sense IU (GOOD) and all its data."""
    db, mode = recorded
    conn = sqlite3.connect(db)
    setups = [r[0] for r in conn.execute("SELECT setup FROM urbs WHERE session_id = 1 AND "
                                         "urb_function = 'select_interface'")]
    assert setups == [bytes([0x00, 0x0B, 1, 0, 0, 0, 0, 0])]  # as USBPcap records it
    rows = conn.execute("SELECT tag, status, expected_length, data_length, residue, cbw_seq, "
                        "csw_seq FROM scsi_commands WHERE session_id = 1 ORDER BY seq").fetchall()
    assert len(rows) == 38
    assert {r[1] for r in rows} == {"good"}
    assert all(1 <= r[0] <= uaspstor.QUEUE_DEPTH for r in rows)
    # every Command IU went to the command pipe, every Sense IU came on the status pipe
    for cbw_seq, csw_seq in ((r[5], r[6]) for r in rows):
        (ep,) = conn.execute("SELECT endpoint FROM urbs WHERE session_id = 1 AND seq = ?",
                             (cbw_seq,)).fetchone()
        (st,) = conn.execute("SELECT endpoint FROM urbs WHERE session_id = 1 AND seq = ?",
                             (csw_seq,)).fetchone()
        assert (ep, st) == (UAS_COMMAND, UAS_STATUS)
    notes = conn.execute("SELECT notes FROM sessions WHERE id = 1").fetchone()[0] or ""
    assert "UAS" not in notes  # no orphans, nothing matched by order: stream ids were used


def test_several_commands_in_flight(recorded: tuple[Path, str]) -> None:
    """The disk's pieces of one big READ go down together, each under its own tag."""
    db, _ = recorded
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT seq, tag, submitted_at, completed_at FROM scsi_commands "
                        "WHERE session_id = 1 ORDER BY seq").fetchall()
    overlapping = [(a, b) for a, b in zip(rows, rows[1:]) if b[2] < a[3]]
    assert len(overlapping) >= 4
    assert all(a[1] != b[1] for a, b in overlapping)  # in flight together: distinct tags
    assert max(r[1] for r in rows) >= 4


def test_answer_urbs_are_queued_before_the_command_iu(recorded: tuple[Path, str]) -> None:
    """Linux uas.c (uas_submit_urbs) and Windows queue the status URB (and, with streams,
    the data URB) before the Command IU, so the device can answer at once."""
    db, mode = recorded
    conn = sqlite3.connect(db)
    for cbw_seq, csw_seq, direction in conn.execute(
            "SELECT cbw_seq, csw_seq, data_direction FROM scsi_commands WHERE session_id = 1"):
        if mode == "streams":
            assert csw_seq < cbw_seq
            if direction == "in":
                (before,) = conn.execute(
                    "SELECT count(*) FROM urbs WHERE session_id = 1 AND endpoint = ? AND seq < ? "
                    "AND seq > ?",
                    (UAS_DATA_IN, cbw_seq, cbw_seq - 4)).fetchone()
                assert before == 1
        else:  # without streams the data URB waits for the Read/Write Ready IU
            assert csw_seq != cbw_seq


@pytest.mark.skipif(not tshark.available(), reason="tshark is not on PATH (.ci/run installs it)")
@pytest.mark.parametrize("linktype", ["usbpcap", "usbmon"])
def test_export_decoded_by_tshark_command_for_command(recorded: tuple[Path, str],
                                                      tmp_path: Path, linktype: str) -> None:
    """Wireshark's uasp dissector on the export: every Command IU's tag, opcode, LBA and
    length, and its Sense IU's status, as the log has them."""
    db, _ = recorded
    out = tmp_path / f"uas-{linktype}.pcapng"
    result = CliRunner().invoke(main, ["export", "1", "-o", str(out), "--linktype", linktype,
                                       "--db", str(db)])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    ours = []
    for tag, opcode, lba, blocks, length, status, key, asc, ascq in conn.execute(
            "SELECT tag, opcode, lba, blocks, expected_length, status, sense_key, asc, ascq "
            "FROM scsi_commands WHERE session_id = 1 ORDER BY seq"):
        size = blocks if opcode in RDWR10 - {SYNCHRONIZE_CACHE_10} else \
            length if opcode == INQUIRY else None
        ours.append((tag, opcode, lba if opcode in RDWR10 else None, size, SCSI_STATUS[status],
                     (SENSE_KEY_NUMBERS.get(key), asc, ascq)))
    wireshark = wireshark_uas_commands(out)
    theirs = [(c.tag, c.opcode, c.lba, c.length, c.status, c.sense) for c in wireshark]
    assert len(theirs) == len(ours) == 38
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"command {i + 1} (tshark frame {wireshark[i].frame}): {a} != {b}"


@pytest.mark.parametrize("linktype", ["usbmon", "usbpcap"])
def test_export_imports_back_to_the_same_commands(recorded: tuple[Path, str],
                                                  tmp_path: Path, linktype: str) -> None:
    """The exported capture has no stream ids; imported, its commands are the log's
    (with streams, data goes to commands by submission order, and the notes say so).
    USBPcap records no length for an IN submission, and UAS has no length of its own
    (no CBW): the host's expected length, and so the residue, need usbmon."""
    db, mode = recorded
    out = tmp_path / "uas.pcapng"
    runner = CliRunner()
    assert runner.invoke(main, ["export", "1", "-o", str(out), "--linktype", linktype,
                                "--db", str(db)]).exit_code == 0
    result = runner.invoke(main, ["import", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    (session,) = conn.execute("SELECT max(id) FROM sessions").fetchone()
    lengths = "expected_length, residue, " if linktype == "usbmon" else ""
    query = (f"SELECT tag, opcode, lba, blocks, data_direction, {lengths}data_length, status "
             "FROM scsi_commands WHERE session_id = ? ORDER BY seq")
    assert conn.execute(query, (session,)).fetchall() == conn.execute(query, (1,)).fetchall()
    notes = conn.execute("SELECT notes FROM sessions WHERE id = ?", (session,)).fetchone()[0]
    assert ("by submission order" in (notes or "")) == (mode == "streams")


# ---- a started UAS stack ---------------------------------------------------------------


class UasStack:
    def __init__(self, streams: bool) -> None:
        self.events: list[Event] = []
        self.stick = SimulatedStick(DiskImage.in_memory(8 << 20),
                                    speed="super" if streams else "high", protocol="uas",
                                    streams=streams)
        self.machine = Machine(self.stick, sink=self.events.append).start()
        self.win32 = self.machine.win32
        driver = self.machine.kernel.drivers["\\Driver\\uaspstor"]
        self.fdo_ext = next(d.device_extension for d in driver.device_objects
                            if isinstance(d.device_extension, uaspstor.UaspFdoExtension))


@pytest.fixture(params=[False, True], ids=["high", "streams"])
def uas(request: pytest.FixtureRequest) -> Iterator[UasStack]:
    s = UasStack(request.param)
    yield s
    s.machine.stop()
    assert s.machine.scheduler.pending() == 0
    assert not [n for n in s.machine.kernel.drivers if n != "\\Driver\\PnpManager"]


def test_stream_ids_in_the_tracer_records(uas: UasStack) -> None:
    """With streams every data and status URB names its stream, and it is its command's
    tag; without, none does."""
    h = uas.win32.CreateFile(DISK_PATH)
    before = len(uas.events)
    assert uas.win32.ReadFile(h, bytearray(200 * 1024), 0) == 200 * 1024
    urbs = [e for e in uas.events[before:] if e.kind == SUBMIT and e.endpoint in
            (UAS_STATUS, UAS_DATA_IN)]
    commands = [e for e in uas.events[before:] if e.kind == SUBMIT
                and e.endpoint == UAS_COMMAND and e.data[:1] == bytes([IU_COMMAND])]
    assert len(commands) == 4  # 200 KiB in 64 KiB pieces, all in flight
    if not uas.stick.uas or not uas.stick.uas.streams:
        assert all(e.stream_id is None for e in urbs)
        return
    tags = {int.from_bytes(c.data[2:4], "big") for c in commands}
    assert {e.stream_id for e in urbs} == tags == {1, 2, 3, 4}
    sense = [e for e in uas.events[before:] if e.kind == COMPLETE and e.endpoint == UAS_STATUS
             and e.data[:1] == bytes([IU_SENSE])]
    assert all(int.from_bytes(e.data[2:4], "big") == e.stream_id for e in sense)


def test_media_error_is_a_check_condition_sense_iu(uas: UasStack) -> None:
    """UAS has no REQUEST SENSE: the Sense IU brings the sense data, and the class
    driver maps MEDIUM ERROR as for Bulk-Only."""
    h = uas.win32.CreateFile(DISK_PATH)
    uas.stick.targets[0].faults.bad_lbas.add(3)
    before = len(uas.events)
    with pytest.raises(NtStatusError, match="STATUS_CRC_ERROR"):
        uas.win32.ReadFile(h, bytearray(4096), 0)
    later = uas.events[before:]
    assert not any(e.data[:1] == bytes([IU_COMMAND]) and e.data[16] == 0x03 for e in later
                   if e.endpoint == UAS_COMMAND)  # no REQUEST SENSE
    sense = [e.data for e in later if e.kind == COMPLETE and e.endpoint == UAS_STATUS
             and e.data[:1] == bytes([IU_SENSE])]
    assert sense and all(s[6] == 0x02 and s[16 + 2] & 0x0F == 0x03 for s in sense)
    # the data URB queued for the read never moved a byte: cancelled once the Sense IU came
    assert uas.win32.ReadFile(h, bytearray(512), 4096) == 512  # the stick still works


def test_logical_unit_reset_and_abort_task(uas: UasStack) -> None:
    """SRB_FUNCTION_RESET_LOGICAL_UNIT is a LOGICAL UNIT RESET IU; an ABORT TASK ends a
    read in flight, which the class driver sends again (SRB_STATUS_ABORTED is retried)."""
    disk_driver = uas.machine.kernel.drivers["\\Driver\\disk"]
    disk_ext = next(d.device_extension for d in disk_driver.device_objects
                    if isinstance(d.device_extension, disk.DiskExtension))
    srb = Srb(b"", 0, 0, function=uaspstor.SRB_FUNCTION_RESET_LOGICAL_UNIT)
    assert disk._send_srb_and_wait(disk_ext, srb, "reset") == 0
    assert uas.stick.uas is not None and "tmf_0x08" in uas.stick.uas.history

    h = uas.win32.CreateFile(DISK_PATH)
    pending = uas.win32.ReadFile(h, bytearray(65536), 0, overlapped=True)
    (tag,) = uas.fdo_ext.tags
    responses: list[int | None] = []
    assert uaspstor.UASP_SendTaskManagement(uas.fdo_ext, ABORT_TASK, tag, 0,
                                            lambda tmf: responses.append(tmf.response))
    assert uas.win32.GetOverlappedResult(h, pending) == 65536
    assert responses == [0x00]  # FUNCTION COMPLETE
    assert f"aborted_{tag}" in uas.stick.uas.history
    disk_stats = disk_ext.stats
    assert disk_stats["retries"] == 1


def test_files_workload_attributes_every_file_on_a_uas_stick(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    summary = record(RecordOptions(db=str(db), size="16M", workload="files", protocol="uas",
                                   streams=True))
    assert summary.workload.ok
    conn = sqlite3.connect(db)
    unknown = conn.execute("SELECT count(*) FROM file_activity WHERE kind = 'data' AND "
                           "path IS NULL").fetchone()[0]
    paths = {r[0] for r in conn.execute("SELECT DISTINCT path FROM file_activity WHERE "
                                        "kind = 'data' AND path LIKE '/%'")}
    bot_db = tmp_path / "b.db"
    record(RecordOptions(db=str(bot_db), size="16M", workload="files"))
    bot = sqlite3.connect(bot_db)
    bot_paths = {r[0] for r in bot.execute("SELECT DISTINCT path FROM file_activity WHERE "
                                           "kind = 'data' AND path LIKE '/%'")}
    assert unknown == 0
    assert paths == bot_paths and len(paths) >= 5


def test_record_options_refuse_what_cannot_be(tmp_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "x.db")
    result = runner.invoke(main, ["record", "--db", db, "--streams"])
    assert result.exit_code == 2 and "--streams needs --protocol uas" in result.output
    result = runner.invoke(main, ["record", "--db", db, "--protocol", "uas", "--streams",
                                  "--speed", "high"])
    assert result.exit_code == 2 and "super" in result.output
    result = runner.invoke(main, ["record", "--db", db, "--protocol", "uas", "--fault",
                                  "stall-in@20"])
    assert result.exit_code == 2 and "Bulk-Only fault" in result.output


def test_urbs_keep_the_stream_id(recorded: tuple[Path, str]) -> None:
    """``urbs.stream_id``: with streams, every status and data URB's stream, which is the
    tag of the command it served; NULL without streams and for control URBs."""
    db, mode = recorded
    conn = sqlite3.connect(db)
    streams = conn.execute("SELECT endpoint, stream_id FROM urbs WHERE session_id = 1 AND "
                           "stream_id IS NOT NULL").fetchall()
    if mode != "streams":
        assert streams == []
        return
    assert streams and {ep for ep, _ in streams} <= {UAS_STATUS, UAS_DATA_IN, UAS_DATA_OUT}
    for tag, csw_seq in conn.execute("SELECT tag, csw_seq FROM scsi_commands WHERE "
                                     "session_id = 1"):
        (stream,) = conn.execute("SELECT stream_id FROM urbs WHERE session_id = 1 AND seq = ?",
                                 (csw_seq,)).fetchone()
        assert stream == tag


def test_a_schema_2_database_is_upgraded_to_3(tmp_path: Path) -> None:
    """Schema 2 -> 3 adds ``urbs.stream_id``; a reader asks for ``usbtrace upgrade``."""
    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db)
    conn.executescript((Path(__file__).parent / "data" / "schema-2.sql").read_text())
    conn.execute("INSERT INTO usbtrace_meta VALUES ('schema_version', '2')")
    conn.execute("INSERT INTO sessions (source, source_name, started_at, record_count, "
                 "dropped_count, malformed_count, command_count, clock, state) VALUES "
                 "('usbmon', 'a.pcap', 'x', 1, 0, 0, 0, 'capture', 'complete')")
    conn.execute("INSERT INTO urbs (session_id, seq, irp_id, endpoint, transfer_type, "
                 "direction, captured_length, truncated) VALUES (1, 1, '0x1', 129, 'bulk', "
                 "'in', 0, 0)")
    conn.commit()
    conn.close()
    runner = CliRunner()
    result = runner.invoke(main, ["sessions", "--db", str(db)])
    assert result.exit_code == 2 and "schema version 2" in result.output \
        and "usbtrace upgrade" in result.output
    result = runner.invoke(main, ["upgrade", "--db", str(db)])
    assert result.exit_code == 0 and "schema version 3" in result.output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT seq, stream_id FROM urbs").fetchall() == [(1, None)]
    assert conn.execute("SELECT value FROM usbtrace_meta WHERE key = 'schema_version'"
                        ).fetchone() == ("3",)


@pytest.mark.parametrize("mode", ["device", "host"])
def test_a_uas_session_replays_identically(recorded: tuple[Path, str], mode: str) -> None:
    """Device replay runs the recording through the stack to a replayed device that
    speaks UAS (so UASPStor loads again); host replay sends the recorded IUs to a
    UAS target.  Both compare every answer."""
    from usbtrace.replay.device import replay_device
    from usbtrace.replay.host import replay_host
    from usbtrace.replay.report import Report
    from usbtrace.replay.run import load, target_image

    db, _ = recorded
    recording = load("1", str(db))
    assert recording.uas is not None
    stored = sqlite3.connect(db).execute(
        "SELECT tag, opcode, expected_length, data_length, status FROM scsi_commands WHERE "
        "session_id = 1 ORDER BY seq").fetchall()
    assert [(c.tag, c.info.opcode, c.expected_length, c.data_length, c.status)
            for c in recording.commands()] == stored  # decoded again from the urbs rows
    report = Report("session 1", mode, commands=recording.count)
    loaded: list[str] = []
    if mode == "device":
        def hook(machine: Machine) -> None:
            start = machine.start

            def started() -> Machine:
                result = start()
                loaded.extend(machine.kernel.drivers)
                return result

            machine.start = started  # type: ignore[method-assign]

        replay_device(recording, report, hook)
        assert "\\Driver\\uaspstor" in loaded and "\\Driver\\usbstor" not in loaded
    else:
        target = SimulatedStick(target_image(recording, None), speed="high", protocol="uas")
        replay_host(recording, target, report)
    assert report.identical, report.text()
    assert report.replayed == recording.count == 38
    assert report.compared_bytes >= 278528


def test_a_diverging_uas_device_shows_in_host_replay(recorded: tuple[Path, str]) -> None:
    """The target answers a read with a MEDIUM ERROR the recording did not have."""
    from usbtrace.replay.host import replay_host
    from usbtrace.replay.report import Report
    from usbtrace.replay.run import load, target_image

    db, _ = recorded
    recording = load("1", str(db))
    target = SimulatedStick(target_image(recording, None), speed="high", protocol="uas")
    target.targets[0].faults.bad_lbas.add(2048)
    report = Report("session 1", "host", commands=recording.count)
    replay_host(recording, target, report)
    fields = {(d.field, str(d.expected), str(d.actual)) for d in report.divergences}
    assert ("status", "good", "check_condition") in fields


def test_an_unexpected_read_ready_is_ended_with_abort_task() -> None:
    """Without streams a device that wants a data phase the command has no buffer for
    holds the data pipe: UASPStor ends the task with ABORT TASK, and the stick goes on."""
    from usbtrace.devices.scsi_target import IN, Plan
    from usbtrace.storage import ioctl as io

    s = UasStack(streams=False)
    try:
        h = s.win32.CreateFile(DISK_PATH)
        target = s.stick.targets[0]
        plan = target.plan
        target.plan = lambda cdb: Plan(IN, 8, bytes(8)) if cdb[:1] == b"\0" \
            else plan(cdb)  # type: ignore[method-assign]
        sptd = io.ScsiPassThroughDirect(bytes(6), io.SCSI_IOCTL_DATA_UNSPECIFIED, 0,
                                        bytearray())
        with pytest.raises(NtStatusError):
            s.win32.DeviceIoControl(h, io.IOCTL_SCSI_PASS_THROUGH_DIRECT, sptd)
        assert s.stick.uas is not None and "tmf_0x01" in s.stick.uas.history
        assert s.win32.ReadFile(h, bytearray(4096), 0) == 4096
    finally:
        s.machine.stop()


def test_a_command_the_device_never_answers_times_out_and_is_retried(uas: UasStack) -> None:
    """The device drops one Sense IU: after the SRB's TimeOutValue UASPStor sends ABORT
    TASK for the tag, ends the SRB with SRB_STATUS_TIMEOUT (as usbstor's hang timer ends a
    Bulk-Only command), and the class driver sends it again."""
    assert uas.stick.uas is not None
    device = uas.stick.uas
    h = uas.win32.CreateFile(DISK_PATH)
    original = device._sense
    dropped: list[int] = []

    def drop_once(task, sense=None):  # type: ignore[no-untyped-def]
        if not dropped and task.plan.direction == 1:  # the first read: its answer is lost
            dropped.append(task.tag)
            del device.tasks[task.tag]
            return
        original(task, sense)

    device._sense = drop_once  # type: ignore[method-assign]
    start = uas.machine.scheduler.now()
    assert uas.win32.ReadFile(h, bytearray(4096), 0) == 4096
    assert dropped and "tmf_0x01" in device.history
    assert uas.machine.scheduler.now() - start >= 10  # the disk's SRB timeout, in bus time
    disk_driver = uas.machine.kernel.drivers["\\Driver\\disk"]
    disk_ext = next(d.device_extension for d in disk_driver.device_objects
                    if isinstance(d.device_extension, disk.DiskExtension))
    assert disk_ext.stats["retries"] == 1
