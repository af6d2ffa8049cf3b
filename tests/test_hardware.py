"""The hardware path, run unchanged against a simulated stick behind pyusb's backend API."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import usb.core
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.devices.hardware import HardwareDevice, find_device
from usbtrace.devices.image import DiskImage
from usbtrace.devices.pyusb_sim import SimulatedUsbBackend
from usbtrace.devices.simulated import BULK_IN, SimulatedStick
from usbtrace.errors import DeviceError
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.wdm.win32 import NtStatusError

COMMANDS = ("SELECT seq, tag, opcode, lba, blocks, data_direction, expected_length, "
            "data_length, residue, status, cdb FROM scsi_commands WHERE session_id=? "
            "ORDER BY seq")


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_pyusb_sees_a_mass_storage_device() -> None:
    backend = SimulatedUsbBackend.from_options({"size": "8M"})
    dev = usb.core.find(idVendor=0x1209, idProduct=0x0001, backend=backend)
    assert dev is not None and dev.serial_number == "UT0000000001"
    intf = dev[0][(0, 0)]
    assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == \
        (8, 6, 0x50)
    with pytest.raises(IndexError):
        backend.get_interface_descriptor(backend.devices[0], 0, 1, 0)


def test_record_through_pyusb_equals_record_direct(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    assert cli("record", "--db", db, "--size", "8M", "--speed", "super")[0] == 0
    code, out, err = cli("record", "--db", db, "--size", "8M", "--device", "usb:1209:0001",
                         "--usb-backend", "simulated", "--workload", "raw", "--allow-write")
    assert code == 0, out + err
    conn = sqlite3.connect(db)
    direct = conn.execute(COMMANDS, (1,)).fetchall()
    through = conn.execute(COMMANDS, (2,)).fetchall()
    assert direct and through == direct
    assert conn.execute("SELECT source, clock FROM sessions WHERE id=2").fetchone() == \
        ("pyusb-simulated", "wall")


def test_write_workload_without_allow_write_never_writes(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    code, _, err = cli("record", "--db", db, "--device", "usb:1209:0001", "--usb-backend",
                       "simulated", "--workload", "files")
    assert code == 2 and "--allow-write" in err and err.count("\n") == 1
    assert not Path(db).exists() or sqlite3.connect(db).execute(
        "SELECT count(*) FROM scsi_commands WHERE name LIKE 'write%'").fetchone()[0] == 0


def test_read_only_backend_refuses_write_commands_itself() -> None:
    backend = SimulatedUsbBackend.from_options({"size": "8M"})
    stick = backend.devices[0].stick
    stick.image.view[:512] = b"\x11" * 512
    hardware = HardwareDevice(find_device("usb:1209:0001", backend), allow_write=False)
    machine = Machine(hardware, clock="wall").start()
    handle = machine.win32.CreateFile(DISK_PATH)
    with pytest.raises(NtStatusError):
        machine.win32.WriteFile(handle, b"\x22" * 512, 0)
    assert hardware.refused and bytes(stick.image.view[:512]) == b"\x11" * 512
    assert machine.win32.ReadFile(handle, bytearray(512), 0) == 512  # still usable
    machine.stop()
    hardware.close()


def _machine(**faults: object) -> tuple[Machine, SimulatedStick, HardwareDevice]:
    stick = SimulatedStick(DiskImage.in_memory(8 << 20))
    backend = SimulatedUsbBackend([stick])
    hardware = HardwareDevice(find_device("usb:1209:0001", backend), allow_write=True)
    machine = Machine(hardware, clock="wall").start()
    return machine, stick, hardware


def test_stall_on_hardware_recovers_like_simulation() -> None:
    machine, stick, _ = _machine()
    stick.image.view[:512] = b"\x42" * 512
    handle = machine.win32.CreateFile(DISK_PATH)
    stick.faults.stall_next[BULK_IN] = 1
    buffer = bytearray(512)
    # libusb's EPIPE is the stall: cleared, CSW read, the READ retried; the caller sees none
    assert machine.win32.ReadFile(handle, buffer, 0) == 512 and buffer == b"\x42" * 512
    assert "data_stalled" in stick.bot.history
    machine.stop()


def test_media_error_and_short_reads_on_hardware() -> None:
    machine, stick, _ = _machine()
    handle = machine.win32.CreateFile(DISK_PATH)
    stick.targets[0].faults.bad_lbas.add(1)
    with pytest.raises(NtStatusError, match="STATUS_CRC_ERROR"):
        machine.win32.ReadFile(handle, bytearray(4096), 0)
    from usbtrace.storage import ioctl as io

    sptd = io.ScsiPassThroughDirect(bytes([0x12, 0, 0, 0, 96, 0]), io.SCSI_IOCTL_DATA_IN, 96,
                                    bytearray(96))
    machine.win32.DeviceIoControl(handle, io.IOCTL_SCSI_PASS_THROUGH_DIRECT, sptd)
    assert sptd.DataTransferLength == 36  # a short read: 36 of 96
    machine.stop()


def test_device_that_disappears_mid_transfer() -> None:
    machine, stick, hardware = _machine()
    handle = machine.win32.CreateFile(DISK_PATH)
    stick.faults.disconnect_after_bytes = stick.faults.bulk_bytes + 50_000
    with pytest.raises(NtStatusError, match="STATUS_DEVICE_NOT_CONNECTED"):
        machine.win32.ReadFile(handle, bytearray(128 * 1024), 0)
    machine.scheduler.run_until_idle()
    assert not hardware.connected and not machine.disk_present()
    machine.stop()


def test_timeout_maps_to_usbd_timeout() -> None:
    machine, stick, hardware = _machine()
    from usbtrace.usb.urb import USBD_STATUS_TIMEOUT

    # nothing outstanding: the stick NAKs, libusb would time out
    assert hardware.bulk_in(BULK_IN, bytearray(13)).status == USBD_STATUS_TIMEOUT
    machine.stop()


def test_no_usb_bus_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from usbtrace.devices import hardware

    monkeypatch.setitem(hardware.USB_BACKENDS, "libusb",
                        lambda options=None: SimulatedUsbBackend([]))
    code, _, err = cli("devices")
    assert code == 2 and "no USB devices found" in err and err.count("\n") == 1
    code, _, err = cli("record", "--device", "usb:1209:0001")
    assert code == 2 and "no USB device 1209:0001 found" in err and "Traceback" not in err


def test_real_libusb_on_this_machine_fails_cleanly() -> None:
    code, out, err = cli("devices")
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert err.startswith("usbtrace: error:") and err.count("\n") == 1


def test_bad_device_spec() -> None:
    with pytest.raises(Exception, match="bad device"):
        from usbtrace.devices.hardware import parse_spec
        parse_spec("usb:12:34")
    assert DeviceError


# ---- read-only mode: an allowlist of commands that only read ---------------------------

# Commands that change the medium or the device's state, named in the finding.
NAMED_REFUSED = {
    "SANITIZE": bytes([0x48, 0x01]) + bytes(8),
    "WRITE AND VERIFY(10)": bytes([0x2E]) + bytes(9),
    "WRITE AND VERIFY(16)": bytes([0x8E]) + bytes(15),
    "FORMAT MEDIUM": bytes([0x38]) + bytes(9),
    "FORMAT UNIT": bytes([0x04]) + bytes(5),
    "COMPARE AND WRITE": bytes([0x89]) + bytes(15),
    "ORWRITE(16)": bytes([0x8B]) + bytes(15),
    "WRITE LONG(10)": bytes([0x3F]) + bytes(9),
    "WRITE ATOMIC(16)": bytes([0x9C]) + bytes(15),
    "SECURITY PROTOCOL OUT": bytes([0xB5]) + bytes(11),
    "PERSISTENT RESERVE OUT": bytes([0x5F]) + bytes(9),
    "START STOP UNIT (eject)": bytes([0x1B, 0, 0, 0, 0x02, 0]),
    "PREVENT ALLOW MEDIUM REMOVAL": bytes([0x1E, 0, 0, 0, 0x01, 0]),
    "SYNCHRONIZE CACHE(10)": bytes([0x35]) + bytes(9),
    "VERIFY(10) with BYTCHK": bytes([0x2F, 0x02]) + bytes(8),
    "LOG SENSE saving parameters": bytes([0x4D, 0x01]) + bytes(8),
    "SERVICE ACTION IN(16) other than READ CAPACITY": bytes([0x9E, 0x12]) + bytes(14),
    "READ BUFFER error history": bytes([0x3C, 0x1C]) + bytes(8),
    "MAINTENANCE IN vendor service action": bytes([0xA3, 0x1F]) + bytes(10),
    "ATA PASS-THROUGH(16)": bytes([0x85]) + bytes(15),
    "vendor-specific 0xC0": bytes([0xC0]) + bytes(9),
    "vendor-specific 0xFF": bytes([0xFF]) + bytes(9),
}
ALLOWED = {
    "TEST UNIT READY": bytes(6),
    "REQUEST SENSE": bytes([0x03, 0, 0, 0, 18, 0]),
    "INQUIRY": bytes([0x12, 0, 0, 0, 36, 0]),
    "MODE SENSE(6)": bytes([0x1A, 0, 0x3F, 0, 192, 0]),
    "MODE SENSE(10)": bytes([0x5A, 0, 0x3F]) + bytes(7),
    "READ(6)": bytes([0x08, 0, 0, 0, 1, 0]),
    "READ(10)": bytes([0x28]) + bytes(9),
    "READ(12)": bytes([0xA8]) + bytes(11),
    "READ(16)": bytes([0x88]) + bytes(15),
    "READ CAPACITY(10)": bytes([0x25]) + bytes(9),
    "READ CAPACITY(16)": bytes([0x9E, 0x10]) + bytes(14),
    "READ FORMAT CAPACITIES": bytes([0x23]) + bytes(9),
    "REPORT LUNS": bytes([0xA0]) + bytes(11),
    "READ TOC": bytes([0x43]) + bytes(9),
    "GET CONFIGURATION": bytes([0x46]) + bytes(9),
    "GET EVENT STATUS NOTIFICATION": bytes([0x4A, 0x01]) + bytes(8),
    "VERIFY(10), BYTCHK=0": bytes([0x2F]) + bytes(9),
    "VERIFY(16), BYTCHK=0": bytes([0x8F]) + bytes(15),
    "LOG SENSE, SP=0": bytes([0x4D, 0, 0x40]) + bytes(7),
    "RECEIVE DIAGNOSTIC RESULTS": bytes([0x1C]) + bytes(5),
    "READ BUFFER, data mode": bytes([0x3C, 0x02]) + bytes(8),
    "REPORT SUPPORTED OPERATION CODES": bytes([0xA3, 0x0C]) + bytes(10),
}


def _read_only_hardware() -> tuple[HardwareDevice, SimulatedStick]:
    backend = SimulatedUsbBackend.from_options({"size": "8M"})
    return HardwareDevice(find_device("usb:1209:0001", backend), allow_write=False), \
        backend.devices[0].stick


def _cbw(cdb: bytes, data_in: bool = True, length: int = 0) -> bytearray:
    from usbtrace.storage import bot

    return bytearray(bot.build_cbw(7, length, data_in, 0, cdb))


@pytest.mark.parametrize("name", list(NAMED_REFUSED))
def test_named_medium_changing_commands_never_reach_the_device(name: str) -> None:
    hardware, stick = _read_only_hardware()
    before = list(stick.bot.history)
    result = hardware.bulk_out(0x02, _cbw(NAMED_REFUSED[name]))
    assert result.status != 0 and hardware.refused == [bytes(_cbw(NAMED_REFUSED[name]))]
    assert list(stick.bot.history) == before  # the stick never saw the CBW
    hardware.close()


def test_every_opcode_off_the_allowlist_is_refused() -> None:
    from usbtrace.devices.hardware import READ_ONLY_OPCODES

    hardware, stick = _read_only_hardware()
    # allowed only with the field that keeps them reading left at zero
    conditional = {0x2F, 0xAF, 0x8F, 0x4D, 0x3C}
    for opcode in range(256):
        for fill, allowed in ((0x00, READ_ONLY_OPCODES | conditional),
                              (0xFF, READ_ONLY_OPCODES)):
            cbw = _cbw(bytes([opcode]) + bytes([fill]) * 15)
            hardware.refused.clear()
            hardware.bulk_out(0x02, cbw)
            assert (hardware.refused == [bytes(cbw)]) == (opcode not in allowed), \
                f"opcode 0x{opcode:02X}, fields 0x{fill:02X}"
    hardware.close()


@pytest.mark.parametrize("name", list(ALLOWED))
def test_read_only_commands_pass(name: str) -> None:
    from usbtrace.devices.hardware import read_only_cbw

    assert read_only_cbw(_cbw(ALLOWED[name]))


def test_read_only_mode_sends_no_data_out_and_no_malformed_cbw() -> None:
    from usbtrace.devices.hardware import read_only_cbw

    # an allowed opcode with a data-out phase, and bytes that are not a CBW
    assert not read_only_cbw(_cbw(bytes([0x12, 0, 0, 0, 36, 0]), data_in=False, length=36))
    assert not read_only_cbw(bytearray(b"USBX" + bytes(27)))
    assert not read_only_cbw(bytearray(512))

