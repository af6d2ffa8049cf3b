"""Real hardware: a device backend that performs each transfer through pyusb.

The stack above is unchanged: the bus driver hands this backend the same
transfers it would hand the simulated stick, and errors come back as the USBD
status codes the client driver already handles — a stall (EPIPE) as
USBD_STATUS_STALL_PID, a timeout as USBD_STATUS_TIMEOUT, a vanished device
(ENODEV) as USBD_STATUS_DEVICE_GONE — so recovery works as in simulation.

libusb comes from libusb-package (a bundled build) by default, the system's
libusb as a fallback.  ``USB_BACKENDS`` maps a name to a factory, so tests use
``simulated``: pyusb over :mod:`usbtrace.devices.pyusb_sim`, where a simulated
stick answers through pyusb's own backend interface and this module runs
exactly as it would on a real bus.

Safety: the backend is read-only unless ``allow_write``.  Only CBWs of the
commands on an allowlist (``read_only_cdb``: commands that only read) reach
the device; anything else is refused here, before it reaches the device.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from usbtrace.devices.base import DeviceBackend, TransferResult
from usbtrace.errors import DeviceError, InputError
from usbtrace.storage import bot, scsi
from usbtrace.usb import setup as std
from usbtrace.usb.speed import SPEEDS
from usbtrace.usb.urb import (
    USBD_STATUS_DEV_NOT_RESPONDING,
    USBD_STATUS_DEVICE_GONE,
    USBD_STATUS_REQUEST_FAILED,
    USBD_STATUS_STALL_PID,
    USBD_STATUS_SUCCESS,
    USBD_STATUS_TIMEOUT,
)

# Read-only mode lets through only the commands below (SPC-4, SBC-3, MMC-6):
# each reads, and none changes the medium or a state of the device that
# outlives the command.  Everything else needs --allow-write: writes of every
# kind, FORMAT, SANITIZE, MODE SELECT, SYNCHRONIZE CACHE (it writes cached data
# to the medium), START STOP UNIT (spin-down, eject), PREVENT ALLOW MEDIUM
# REMOVAL (the lock outlives the command), reservations, security protocols,
# ATA pass-through (any ATA command), vendor-specific opcodes.  REQUEST SENSE
# is allowed although it clears the pending sense: that is its purpose, and
# every failed command needs it.
READ_ONLY_OPCODES = frozenset({
    scsi.TEST_UNIT_READY, scsi.REQUEST_SENSE, scsi.INQUIRY, scsi.MODE_SENSE_6,
    scsi.MODE_SENSE_10, scsi.READ_6, scsi.READ_10, scsi.READ_12, scsi.READ_16,
    scsi.READ_CAPACITY_10, scsi.READ_FORMAT_CAPACITIES, scsi.REPORT_LUNS, scsi.READ_TOC,
    scsi.GET_CONFIGURATION, 0x4A,  # GET EVENT STATUS NOTIFICATION (MMC-6)
    0x1C,  # RECEIVE DIAGNOSTIC RESULTS
    0x37, 0xB7,  # READ DEFECT DATA(10), (12)
})
# Allowed only with a field that keeps them reading (checked in ``read_only_cdb``).
VERIFY_OPCODES = frozenset({scsi.VERIFY_10, 0xAF, scsi.VERIFY_16})  # VERIFY(10), (12), (16)
MAINTENANCE_IN = 0xA3
# MAINTENANCE IN service actions that report: identifying information, target
# port groups, supported operation codes, task management functions, timestamp.
READ_ONLY_MAINTENANCE_IN = frozenset({0x05, 0x0A, 0x0C, 0x0D, 0x0F})
# READ BUFFER modes that only read: combined header and data, data, descriptor,
# echo buffer, echo buffer descriptor.  Mode 1Ch (error history) can clear the
# history, and vendor modes can do anything.
READ_ONLY_BUFFER_MODES = frozenset({0x00, 0x02, 0x03, 0x0A, 0x0B})


def read_only_cdb(cdb: bytes) -> bool:
    """Whether ``cdb`` only reads: neither the medium nor the device's state changes.

    VERIFY passes with BYTCHK=0 only: SBC-3 §5.32 makes it a check of the medium
    with no data transfer; with BYTCHK set the host sends data to compare, and
    read-only mode sends no data to the device at all.  LOG SENSE passes with
    SP=0 only: SP=1 saves the log parameters to non-volatile storage.
    """
    if not cdb:
        return False
    opcode = cdb[0]
    if opcode in READ_ONLY_OPCODES:
        return True
    if len(cdb) < 2:
        return False
    if opcode in VERIFY_OPCODES:
        return cdb[1] & 0x06 == 0  # BYTCHK, bits 2:1 of byte 1
    if opcode == scsi.LOG_SENSE:
        return cdb[1] & 0x01 == 0  # SP
    if opcode == scsi.SERVICE_ACTION_IN_16:
        return cdb[1] & 0x1F == scsi.SA_READ_CAPACITY_16
    if opcode == MAINTENANCE_IN:
        return cdb[1] & 0x1F in READ_ONLY_MAINTENANCE_IN
    if opcode == scsi.READ_BUFFER:
        return cdb[1] & 0x1F in READ_ONLY_BUFFER_MODES
    return False


def read_only_cbw(data: bytes | bytearray | memoryview) -> bool:
    """Whether a bulk-OUT transfer may reach the device in read-only mode.

    Only a valid CBW of a read-only command with no data-out phase: so no data
    phase ever goes out, and a malformed CBW never reaches a device that might
    act on it.
    """
    cbw = bot.parse_cbw(data)
    if cbw is None:
        return False
    if cbw.data_transfer_length and not cbw.data_in:
        return False
    return read_only_cdb(bytes(cbw.cdb))


# pyusb's speed numbers (usb.util.SPEED_*)
PYUSB_SPEEDS = {1: "full", 2: "full", 3: "high", 4: "super", 5: "super"}
LIBUSB_ERROR_PIPE, LIBUSB_ERROR_NO_DEVICE, LIBUSB_ERROR_TIMEOUT = -9, -4, -7
LIBUSB_ERROR_ACCESS = -3


def _libusb_backend() -> Any:
    import usb.backend.libusb1

    try:
        import libusb_package

        backend = libusb_package.get_libusb1_backend()
        if backend is not None:
            return backend
    except Exception:  # a broken bundled build: try the system's libusb
        pass
    backend = usb.backend.libusb1.get_backend()
    if backend is None:
        raise DeviceError("no libusb library found: reinstall libusb-package, or install "
                          "your system's libusb-1.0")
    return backend


def _simulated_backend(options: dict[str, Any] | None = None) -> Any:
    from usbtrace.devices.pyusb_sim import SimulatedUsbBackend

    return SimulatedUsbBackend.from_options(options or {})


USB_BACKENDS: dict[str, Callable[..., Any]] = {
    "libusb": lambda options=None: _libusb_backend(),
    "simulated": _simulated_backend,
}


def _entry_point_backends() -> dict[str, Callable[..., Any]]:
    """Backends other packages add under the ``usbtrace.usb_backends`` entry-point group;
    each loads only when chosen."""
    from importlib.metadata import entry_points

    found: dict[str, Callable[..., Any]] = {}
    for point in entry_points(group="usbtrace.usb_backends"):
        found[point.name] = lambda options=None, point=point: point.load()(options)
    return found


def get_usb_backend(name: str, options: dict[str, Any] | None = None) -> Any:
    backends = {**_entry_point_backends(), **USB_BACKENDS}
    try:
        factory = backends[name]
    except KeyError:
        raise InputError(f"unknown USB backend {name!r}; choose from "
                         f"{', '.join(backends)}") from None
    return factory(options)


_SPEC = re.compile(r"^usb:([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?::(.+))?$")


def parse_spec(spec: str) -> tuple[int, int, str | None]:
    match = _SPEC.match(spec)
    if not match:
        raise InputError(f"bad device {spec!r}: use usb:VID:PID or usb:VID:PID:SERIAL "
                         "(hex, as 'usbtrace devices' lists them)")
    return int(match.group(1), 16), int(match.group(2), 16), match.group(3)


def _usb_error_hint(e: Exception) -> str:
    code = getattr(e, "backend_error_code", None) or getattr(e, "errno", None)
    if code in (LIBUSB_ERROR_ACCESS, errno.EACCES, errno.EPERM):
        return ("no permission: run as root, or add a udev rule such as "
                'SUBSYSTEM=="usb", ATTR{idVendor}=="VVVV", MODE="0666" '
                "(or put your user in the group that owns /dev/bus/usb)")
    return str(e)


def find_device(spec: str, backend: Any) -> Any:
    import usb.core

    vid, pid, serial = parse_spec(spec)
    try:
        devices = list(usb.core.find(find_all=True, idVendor=vid, idProduct=pid,
                                     backend=backend))
    except usb.core.NoBackendError:
        raise DeviceError("no libusb library found") from None
    except usb.core.USBError as e:
        raise DeviceError(f"cannot list USB devices: {_usb_error_hint(e)}") from None
    if serial is not None:
        matching = []
        for dev in devices:
            try:
                if dev.serial_number == serial:
                    matching.append(dev)
            except (usb.core.USBError, ValueError) as e:
                raise DeviceError(f"cannot read the serial number of {vid:04x}:{pid:04x}: "
                                  f"{_usb_error_hint(e)}") from None
        devices = matching
    if not devices:
        raise DeviceError(f"no USB device {spec[4:]} found (see 'usbtrace devices')")
    if len(devices) > 1:
        raise DeviceError(f"{len(devices)} devices match {spec[4:]}: add the serial number, "
                          "usb:VID:PID:SERIAL")
    return devices[0]


@dataclass
class DeviceListing:
    bus: int | None
    address: int | None
    vid: int
    pid: int
    speed: str
    device_class: int
    manufacturer: str | None
    product: str | None
    serial: str | None
    mass_storage: list[int]
    note: str = ""


def list_devices(backend: Any) -> list[DeviceListing]:
    import usb.core
    import usb.util

    try:
        found = list(usb.core.find(find_all=True, backend=backend))
    except usb.core.NoBackendError:
        raise DeviceError("no libusb library found") from None
    except usb.core.USBError as e:
        raise DeviceError(f"cannot list USB devices: {_usb_error_hint(e)}") from None
    out = []
    for dev in found:
        storage: list[int] = []
        note = ""
        try:
            for cfg in dev:
                for intf in cfg:
                    if intf.bInterfaceClass == 8 and intf.bInterfaceNumber not in storage:
                        storage.append(intf.bInterfaceNumber)
        except usb.core.USBError as e:
            note = _usb_error_hint(e)
        strings: list[str | None] = []
        for index in (dev.iManufacturer, dev.iProduct, dev.iSerialNumber):
            if not index:
                strings.append(None)
                continue
            try:
                strings.append(usb.util.get_string(dev, index))
            except (usb.core.USBError, ValueError, NotImplementedError) as e:
                strings.append(None)
                note = note or _usb_error_hint(e)
        out.append(DeviceListing(dev.bus, dev.address, dev.idVendor, dev.idProduct,
                                 PYUSB_SPEEDS.get(dev.speed or 0, "unknown"), dev.bDeviceClass,
                                 strings[0], strings[1], strings[2], storage, note))
    return out


class HardwareDevice(DeviceBackend):
    """A pyusb device under the bus driver."""

    def __init__(self, device: Any, allow_write: bool = False, timeout_ms: int = 5000) -> None:
        import usb.core
        import usb.util

        self._usb = usb
        self.device = device
        self.allow_write = allow_write
        self.timeout = timeout_ms
        self.speed = SPEEDS[PYUSB_SPEEDS.get(device.speed or 3, "high")]
        self.connected = True
        self.on_disconnect: Callable[[], None] | None = None
        self.refused: list[bytes] = []  # CBWs kept from the device (read-only mode)
        self.detached: list[int] = []
        self.interface = self._storage_interface()
        try:
            try:
                active = device.is_kernel_driver_active(self.interface)
            except NotImplementedError:  # Windows, macOS: nothing to detach
                active = False
            if active:
                device.detach_kernel_driver(self.interface)
                self.detached.append(self.interface)
        except usb.core.USBError as e:
            raise DeviceError(f"cannot detach the kernel driver: {_usb_error_hint(e)}") from None

    def _storage_interface(self) -> int:
        try:
            for cfg in self.device:
                for intf in cfg:
                    if (intf.bInterfaceClass, intf.bInterfaceSubClass,
                            intf.bInterfaceProtocol) == (8, 6, 0x50):
                        return int(intf.bInterfaceNumber)
        except self._usb.core.USBError as e:
            raise DeviceError(f"cannot read the configuration: {_usb_error_hint(e)}") from None
        raise DeviceError("the device has no Bulk-Only mass-storage interface")

    # ---- errors -> USBD status ------------------------------------------------------------

    def _status(self, e: Exception) -> int:
        usb = self._usb
        if isinstance(e, usb.core.USBTimeoutError):
            return USBD_STATUS_TIMEOUT
        code = getattr(e, "backend_error_code", None)
        number = getattr(e, "errno", None)
        if code == LIBUSB_ERROR_PIPE or number == errno.EPIPE:
            return USBD_STATUS_STALL_PID
        if code == LIBUSB_ERROR_NO_DEVICE or number in (errno.ENODEV, errno.ESHUTDOWN):
            self._gone()
            return USBD_STATUS_DEVICE_GONE
        if code == LIBUSB_ERROR_TIMEOUT or number == errno.ETIMEDOUT:
            return USBD_STATUS_TIMEOUT
        return USBD_STATUS_DEV_NOT_RESPONDING

    def _gone(self) -> None:
        if self.connected:
            self.connected = False
            if self.on_disconnect is not None:
                self.on_disconnect()

    def _result(self, status: int, actual: int, started: float) -> TransferResult:
        return TransferResult(status, actual, int((time.perf_counter() - started) * 1e9))

    # ---- DeviceBackend ---------------------------------------------------------------------

    def control(self, setup: bytes, buffer: bytearray | memoryview) -> TransferResult:
        started = time.perf_counter()
        if not self.connected:
            return self._result(USBD_STATUS_DEVICE_GONE, 0, started)
        bm, req, value, index, length = std.SETUP.unpack(setup)
        usb = self._usb
        try:
            if bm == 0x00 and req == std.SET_ADDRESS:
                return self._result(USBD_STATUS_SUCCESS, 0, started)  # the OS addressed it
            if bm == 0x00 and req == std.SET_CONFIGURATION:
                self.device.set_configuration(value)
                usb.util.claim_interface(self.device, self.interface)
                return self._result(USBD_STATUS_SUCCESS, 0, started)
            if bm == 0x02 and req == std.CLEAR_FEATURE and value == std.ENDPOINT_HALT:
                self.device.clear_halt(index & 0xFF)
                return self._result(USBD_STATUS_SUCCESS, 0, started)
            if bm & 0x80:
                data = self.device.ctrl_transfer(bm, req, value, index, length, self.timeout)
                n = min(len(data), len(buffer))
                buffer[:n] = bytes(data[:n])
                return self._result(USBD_STATUS_SUCCESS, n, started)
            n = self.device.ctrl_transfer(bm, req, value, index, bytes(buffer[:length]),
                                          self.timeout)
            return self._result(USBD_STATUS_SUCCESS, n, started)
        except usb.core.USBError as e:
            return self._result(self._status(e), 0, started)

    def bulk_out(self, endpoint: int, data: bytearray | memoryview) -> TransferResult:
        started = time.perf_counter()
        if not self.connected:
            return self._result(USBD_STATUS_DEVICE_GONE, 0, started)
        if not self.allow_write and not read_only_cbw(data):
            self.refused.append(bytes(data))
            return self._result(USBD_STATUS_REQUEST_FAILED, 0, started)
        try:
            n = self.device.write(endpoint, bytes(data), self.timeout)
            return self._result(USBD_STATUS_SUCCESS, n, started)
        except self._usb.core.USBError as e:
            return self._result(self._status(e), 0, started)

    def bulk_in(self, endpoint: int, buffer: bytearray | memoryview) -> TransferResult:
        started = time.perf_counter()
        if not self.connected:
            return self._result(USBD_STATUS_DEVICE_GONE, 0, started)
        try:
            data = self.device.read(endpoint, len(buffer), self.timeout)
            n = len(data)
            buffer[:n] = bytes(data)
            return self._result(USBD_STATUS_SUCCESS, n, started)
        except self._usb.core.USBError as e:
            return self._result(self._status(e), 0, started)

    def clear_halt(self, endpoint: int) -> TransferResult:
        started = time.perf_counter()
        try:
            self.device.clear_halt(endpoint)
            return self._result(USBD_STATUS_SUCCESS, 0, started)
        except self._usb.core.USBError as e:
            return self._result(self._status(e), 0, started)

    def reset_port(self) -> None:
        """The OS enumerated the device already; resetting it would start that over."""

    def close(self) -> None:
        usb = self._usb
        try:
            usb.util.release_interface(self.device, self.interface)
            for number in self.detached:
                self.device.attach_kernel_driver(number)
        except (usb.core.USBError, NotImplementedError):
            pass
        usb.util.dispose_resources(self.device)
