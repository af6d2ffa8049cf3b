"""pyusb's backend interface (``usb.backend.IBackend``) hosting simulated sticks.

``usb.core.find(backend=SimulatedUsbBackend(...))`` sees a mass-storage device
and pyusb drives it exactly as it drives libusb, so the hardware path
(:mod:`usbtrace.devices.hardware`) runs unchanged in tests.  Errors are raised
as libusb would report them: a stall is ``USBError`` with errno EPIPE, a
timeout ``USBTimeoutError``, a device that is gone ``USBError`` with ENODEV.
Bulk reads fill pyusb's array in place.
"""

from __future__ import annotations

import errno
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from usbtrace.devices.image import DiskImage, parse_size
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.usb import descriptors as d
from usbtrace.usb import setup as std
from usbtrace.usb.urb import (
    USBD_STATUS_DEVICE_GONE,
    USBD_STATUS_STALL_PID,
    USBD_STATUS_SUCCESS,
    USBD_STATUS_TIMEOUT,
)

PYUSB_SPEED = {"full": 2, "high": 3, "super": 4}


class _Device:
    def __init__(self, stick: SimulatedStick, bus: int, address: int, port: int) -> None:
        self.stick = stick
        self.bus = bus
        self.address = address
        self.port = port
        self.kernel_driver = {0: False}
        self.claimed: set[int] = set()
        self.open = False


def _raise(status: int) -> None:
    if status == USBD_STATUS_STALL_PID:
        raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
    if status == USBD_STATUS_TIMEOUT:
        raise usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
    if status == USBD_STATUS_DEVICE_GONE:
        raise usb.core.USBError("No such device (it may have been disconnected)", -4,
                                errno.ENODEV)
    raise usb.core.USBError("Input/Output Error", -1, errno.EIO)


class SimulatedUsbBackend(usb.backend.IBackend):
    def __init__(self, sticks: list[SimulatedStick]) -> None:
        super().__init__()
        self.devices = [_Device(s, 1, n + 2, n + 1) for n, s in enumerate(sticks)]

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SimulatedUsbBackend:
        image = options.get("image")
        size = parse_size(options.get("size", "64M"))
        medium = DiskImage.open(image, create_size=size) if image else DiskImage.in_memory(size)
        return cls([SimulatedStick(medium, speed=options.get("speed", "super"))])

    # ---- descriptors ---------------------------------------------------------------------

    def enumerate_devices(self) -> Any:
        return iter([dev for dev in self.devices if dev.stick.connected])

    def get_parent(self, dev: _Device) -> None:
        return None

    def get_device_descriptor(self, dev: _Device) -> Any:
        desc = d.DeviceDescriptor.parse(dev.stick.device_descriptor())
        fields = {k: v for k, v in desc.items() if not k.startswith("_")}
        return SimpleNamespace(**fields, bus=dev.bus, address=dev.address,
                               port_number=dev.port, port_numbers=(dev.port,),
                               speed=PYUSB_SPEED[dev.stick.speed.name])

    def _tree(self, dev: _Device) -> dict[str, Any]:
        return d.configuration_tree(dev.stick.configuration_descriptor())

    def get_configuration_descriptor(self, dev: _Device, config: int) -> Any:
        if config != 0:
            raise IndexError("configuration index out of range")
        desc = self._tree(dev)["configuration"]
        fields = {k: v for k, v in desc.items() if not k.startswith("_") and k != "type_name"}
        return SimpleNamespace(**fields, extra_descriptors=[])

    def _interfaces(self, dev: _Device, intf: int, alt: int, config: int) -> dict[str, Any]:
        entries = [e for e in self._tree(dev)["interfaces"]
                   if e["interface"].bInterfaceNumber == intf or
                   self._tree(dev)["interfaces"].index(e) == intf]
        matching = [e for e in entries if e["interface"].bAlternateSetting == alt]
        if config != 0 or not matching:
            raise IndexError("interface or alternate setting out of range")
        return matching[0]  # type: ignore[no-any-return]

    def get_interface_descriptor(self, dev: _Device, intf: int, alt: int, config: int) -> Any:
        entry = self._interfaces(dev, intf, alt, config)
        desc = entry["interface"]
        fields = {k: v for k, v in desc.items() if not k.startswith("_") and k != "type_name"}
        return SimpleNamespace(**fields, extra_descriptors=[])

    def get_endpoint_descriptor(self, dev: _Device, ep: int, intf: int, alt: int,
                                config: int) -> Any:
        endpoints = self._interfaces(dev, intf, alt, config)["endpoints"]
        if ep >= len(endpoints):
            raise IndexError("endpoint index out of range")
        desc = endpoints[ep]
        fields = {k: v for k, v in desc.items() if not k.startswith("_") and k != "type_name"}
        return SimpleNamespace(**fields, bRefresh=0, bSynchAddress=0, extra_descriptors=[])

    # ---- handles --------------------------------------------------------------------------

    def open_device(self, dev: _Device) -> _Device:
        if not dev.stick.connected:
            _raise(USBD_STATUS_DEVICE_GONE)
        dev.open = True
        return dev

    def close_device(self, dev_handle: _Device) -> None:
        dev_handle.open = False

    def set_configuration(self, dev_handle: _Device, config_value: int) -> None:
        setup = std.build_setup(0x00, std.SET_CONFIGURATION, config_value, 0, 0)
        result = dev_handle.stick.control(setup, bytearray())
        if result.status != USBD_STATUS_SUCCESS:
            _raise(result.status)

    def get_configuration(self, dev_handle: _Device) -> int:
        return dev_handle.stick.configuration

    def set_interface_altsetting(self, dev_handle: _Device, intf: int, altsetting: int) -> None:
        pass

    def claim_interface(self, dev_handle: _Device, intf: int) -> None:
        if dev_handle.kernel_driver.get(intf):
            raise usb.core.USBError("Resource busy", -6, errno.EBUSY)
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: _Device, intf: int) -> None:
        dev_handle.claimed.discard(intf)

    def is_kernel_driver_active(self, dev_handle: _Device, intf: int) -> bool:
        return dev_handle.kernel_driver.get(intf, False)

    def detach_kernel_driver(self, dev_handle: _Device, intf: int) -> None:
        dev_handle.kernel_driver[intf] = False

    def attach_kernel_driver(self, dev_handle: _Device, intf: int) -> None:
        dev_handle.kernel_driver[intf] = True

    # ---- transfers ------------------------------------------------------------------------

    def bulk_write(self, dev_handle: _Device, ep: int, intf: int, data: Any,
                   timeout: int) -> int:
        result = dev_handle.stick.bulk_out(ep, bytearray(data))
        if result.status != USBD_STATUS_SUCCESS:
            _raise(result.status)
        return result.actual

    def bulk_read(self, dev_handle: _Device, ep: int, intf: int, buff: Any,
                  timeout: int) -> int:
        buffer = bytearray(len(buff))
        result = dev_handle.stick.bulk_in(ep, buffer)
        if result.status != USBD_STATUS_SUCCESS:
            _raise(result.status)
        buff[: result.actual] = type(buff)("B", buffer[: result.actual])
        return result.actual

    def ctrl_transfer(self, dev_handle: _Device, bmRequestType: int, bRequest: int,  # noqa: N803
                      wValue: int, wIndex: int, data: Any, timeout: int) -> int:
        length = len(data)
        setup = std.build_setup(bmRequestType, bRequest, wValue, wIndex, length)
        buffer = bytearray(length) if bmRequestType & 0x80 else bytearray(data)
        result = dev_handle.stick.control(setup, buffer)
        if result.status != USBD_STATUS_SUCCESS:
            _raise(result.status)
        if bmRequestType & 0x80:
            data[: result.actual] = type(data)("B", buffer[: result.actual])
        return result.actual

    def clear_halt(self, dev_handle: _Device, ep: int) -> None:
        result = dev_handle.stick.clear_halt(ep)
        if result.status != USBD_STATUS_SUCCESS:
            _raise(result.status)

    def reset_device(self, dev_handle: _Device) -> None:
        dev_handle.stick.reset_port()
