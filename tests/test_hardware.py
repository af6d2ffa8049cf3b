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
    try:
        machine.win32.ReadFile(handle, bytearray(512), 0)
    except NtStatusError:
        pass
    buffer = bytearray(512)
    assert machine.win32.ReadFile(handle, buffer, 0) == 512 and buffer == b"\x42" * 512
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
