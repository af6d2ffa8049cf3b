"""End to end: `record` on the simulated stick, checked through the database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from usbtrace.recording import RecordOptions, record


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[sqlite3.Connection, object]:
    db = tmp_path_factory.mktemp("rec") / "t.db"
    summary = record(RecordOptions(db=str(db), size="16M"))
    return sqlite3.connect(db), summary


def rows(conn: sqlite3.Connection, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    return conn.execute(sql).fetchall()


def test_workload_data_read_back_equals_written(recorded) -> None:  # type: ignore[no-untyped-def]
    _, summary = recorded
    assert summary.workload.ok, summary.workload.mismatches
    assert summary.bytes_read == 2 * summary.bytes_written > 0
    assert summary.dropped == 0


def test_pnp_start_up_sequence_in_order(recorded) -> None:  # type: ignore[no-untyped-def]
    """As the PnP manager sends them (ReactOS ntoskrnl/io/pnpmgr/devaction.c
    PiStartDeviceFinal) and with no D0 power IRP at start (Microsoft Learn, "Powering Up a
    Device")."""
    conn, _ = recorded
    lower = rows(conn, "SELECT major, minor, detail FROM irps WHERE position='lower' "
                       "AND major IN ('pnp','power') ORDER BY seq")
    names = [(m, n) for m, n, _ in lower]
    assert names[:5] == [("pnp", "filter_resource_requirements"), ("pnp", "start_device"),
                         ("pnp", "query_capabilities"), ("pnp", "query_pnp_device_state"),
                         ("pnp", "query_device_relations")]
    assert ("power", "set_power") not in names
    assert names[-1] == ("pnp", "remove_device")
    assert ("pnp", "query_remove_device") in names
    upper = [n for _, n, _ in rows(conn, "SELECT major, minor, detail FROM irps "
                                          "WHERE position='upper' AND major='pnp' ORDER BY seq")]
    assert upper[:2] == ["filter_resource_requirements", "start_device"]
    assert upper[-1] == "remove_device"
    # usbstor starts its device once START_DEVICE has come back up from the bus driver:
    # its start-up URBs fall between that and the capabilities asked after the start
    start, caps = [r[0] for r in rows(conn, "SELECT seq FROM irps WHERE position='lower' AND "
                                            "minor IN ('start_device', 'query_capabilities') "
                                            "ORDER BY seq LIMIT 2")]
    urbs = conn.execute("SELECT urb_function FROM urbs WHERE seq BETWEEN ? AND ? ORDER BY seq",
                        (start, caps)).fetchall()
    functions = [u[0] for u in urbs]
    # Windows 10 (the shared USBPcap capture): device, configuration 9 then all, two
    # strings in two steps each, SELECT_CONFIGURATION, SELECT_INTERFACE, GET_MAX_LUN
    assert functions[:9] == ["get_descriptor_from_device"] * 7 + ["select_configuration",
                                                                 "select_interface"]
    assert functions[9] == "class_interface"  # GET_MAX_LUN


def test_every_cbw_has_its_csw_with_the_same_tag(recorded) -> None:  # type: ignore[no-untyped-def]
    conn, _ = recorded
    cmds = rows(conn, "SELECT c.tag, c.status, u.data FROM scsi_commands c JOIN urbs u "
                      "ON u.session_id = c.session_id AND u.seq = c.csw_seq")
    assert cmds and all(status == "good" for _, status, _ in cmds)
    for tag, _, csw in cmds:
        assert csw[:4] == b"USBS" and int.from_bytes(csw[4:8], "little") == tag
    assert rows(conn, "SELECT count(*) FROM scsi_commands WHERE csw_seq IS NULL") == [(0,)]


def test_each_read_write_maps_to_srbs_whose_urbs_share_the_srb_irp(recorded) -> None:  # type: ignore[no-untyped-def]
    conn, _ = recorded
    requests = rows(conn, "SELECT irp_id, major, offset, length FROM irps WHERE position='upper'"
                          " AND major IN ('read','write') AND status='status_success'")
    assert len(requests) >= 10
    for irp_id, major, _offset, length in requests:
        srbs = rows(conn, "SELECT DISTINCT irp_id FROM irps WHERE position='lower' "
                          f"AND parent_irp_id='{irp_id}'")
        assert len(srbs) == -(-length // 65536)  # split at the 64 KiB transfer limit
        moved = 0
        for (srb,) in srbs:
            urbs = rows(conn, "SELECT u.direction, u.actual_length, u.data FROM urbs u "
                              f"WHERE u.irp_id='{srb}' ORDER BY u.seq")
            assert len(urbs) == 3  # CBW, data, CSW on one IRP
            assert urbs[0][2][:4] == b"USBC" and urbs[2][2][:4] == b"USBS"
            assert urbs[1][0] == ("in" if major == "read" else "out")
            moved += urbs[1][1]
        assert moved == length


def test_irps_hold_pnp_power_and_urbs_with_parent_links(recorded) -> None:  # type: ignore[no-untyped-def]
    conn, _ = recorded
    majors = {m for (m,) in rows(conn, "SELECT DISTINCT major FROM irps")}
    # no power IRP without a system power transition (record --sleep): none at start-up
    assert {"pnp", "internal_device_control", "read", "write", "create",
            "cleanup", "close", "device_control"} <= majors
    assert "power" not in majors
    linked = rows(conn, "SELECT count(*) FROM irps i JOIN irps p ON p.irp_id = i.parent_irp_id "
                        "WHERE p.position='upper'")
    assert linked[0][0] > 0
    joined = rows(conn, "SELECT count(*) FROM irps i JOIN urbs u USING (session_id, seq) "
                        "WHERE i.ioctl='ioctl_internal_usb_submit_urb'")
    total = rows(conn, "SELECT count(*) FROM urbs")
    assert joined == total


def test_written_bytes_in_the_urbs_match_the_image(tmp_path: Path) -> None:
    image = tmp_path / "stick.img"
    db = tmp_path / "t.db"
    record(RecordOptions(db=str(db), image=str(image), size="4M"))
    conn = sqlite3.connect(db)
    data = image.read_bytes()
    writes = rows(conn, "SELECT c.lba, u.data FROM scsi_commands c JOIN urbs u ON "
                        "u.session_id=c.session_id AND u.seq = c.cbw_seq + 1 "
                        "WHERE c.name='write_10'")
    assert writes
    for lba, payload in writes:
        assert data[lba * 512 : lba * 512 + len(payload)] == payload


def test_record_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    record(RecordOptions(db=str(a), size="4M"))
    record(RecordOptions(db=str(b), size="4M"))
    # IRP ids stand for kernel addresses and differ between runs; everything else repeats
    q = "SELECT seq, submitted_at, completed_at, status, data FROM urbs ORDER BY seq"
    assert rows(sqlite3.connect(a), q) == rows(sqlite3.connect(b), q)


@pytest.mark.parametrize("off,present,absent", [("--no-upper", "lower", "upper"),
                                               ("--no-lower", "upper", "lower")])
def test_each_tracer_position_can_be_switched_off(tmp_path: Path, off: str, present: str,
                                                 absent: str) -> None:
    from click.testing import CliRunner

    from usbtrace.cli import main

    db = tmp_path / "p.db"
    result = CliRunner().invoke(main, ["record", "--db", str(db), "--size", "4M", off])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    positions = {p for (p,) in conn.execute("SELECT DISTINCT position FROM irps")}
    assert positions == {present}
    urbs = conn.execute("SELECT count(*) FROM urbs").fetchone()[0]
    assert (urbs > 0) == (present == "lower")


def test_beyond_32_bit_lbas_the_disk_uses_16_byte_cdbs(tmp_path: Path) -> None:
    from usbtrace.devices.image import DiskImage
    from usbtrace.devices.simulated import SimulatedStick
    from usbtrace.machine import DISK_PATH, Machine
    from usbtrace.records import Event

    image = tmp_path / "huge.img"
    size = (1 << 41) + (4 << 20)  # a sparse 2 TiB + 4 MiB image: LBAs past 2^32
    with open(image, "wb") as f:
        f.truncate(size)
    events: list[Event] = []
    stick = SimulatedStick(DiskImage.open(image))
    machine = Machine(stick, sink=events.append).start()
    h = machine.win32.CreateFile(DISK_PATH)
    offset = size - 8192
    machine.win32.WriteFile(h, b"\x5a" * 4096, offset)
    buffer = bytearray(4096)
    machine.win32.ReadFile(h, buffer, offset)
    machine.stop()
    stick.close()
    assert buffer == b"\x5a" * 4096
    opcodes = [e.data[15] for e in events if e.kind == "S" and e.data[:4] == b"USBC"]
    assert 0x9E in opcodes  # READ CAPACITY(16): (10) said 0xFFFFFFFF
    assert 0x8A in opcodes and 0x88 in opcodes  # WRITE(16), READ(16)


def test_a_failing_workload_keeps_its_log_and_says_why(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from usbtrace.machine import DISK_PATH, Machine
    from usbtrace.wdm.win32 import NtStatusError
    from usbtrace.workloads import raw

    def failing(machine: Machine) -> object:
        h = machine.win32.CreateFile(DISK_PATH)
        machine.win32.ReadFile(h, bytearray(4096), 0)
        return machine.win32.ReadFile(h, bytearray(100), 3)  # misaligned: refused

    monkeypatch.setattr(raw, "raw", failing)
    db = tmp_path / "f.db"
    with pytest.raises(NtStatusError):
        record(RecordOptions(db=str(db), size="4M"))
    conn = sqlite3.connect(db)
    state, notes = conn.execute("SELECT state, notes FROM sessions").fetchone()
    assert state == "failed" and "the workload failed: NtStatusError" in notes
    assert conn.execute("SELECT count(*) FROM scsi_commands WHERE name='read_10'"
                        ).fetchone()[0] >= 1
