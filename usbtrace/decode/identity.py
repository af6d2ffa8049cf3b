"""Stage: what the descriptors on the wire say about each device.

Fed every exchange; keeps, per (bus, device), the device descriptor's VID,
PID and class, the mass-storage interfaces of its configuration, and the
manufacturer, product and serial strings once their indexes are known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from usbtrace.decode.pairing import Exchange
from usbtrace.records import CONTROL
from usbtrace.usb import descriptors as d


@dataclass
class DeviceIdentity:
    bus: int
    device: int
    vid: int | None = None
    pid: int | None = None
    device_class: int | None = None
    string_indexes: dict[str, int] = field(default_factory=dict)
    strings: dict[int, str] = field(default_factory=dict)
    mass_storage_interfaces: list[int] = field(default_factory=list)
    storage_protocols: set[int] = field(default_factory=set)  # 0x50 Bulk-Only, 0x62 UAS

    def text(self, name: str) -> str | None:
        index = self.string_indexes.get(name)
        return self.strings.get(index) if index else None


class IdentityTracker:
    def __init__(self) -> None:
        self.devices: dict[tuple[int, int], DeviceIdentity] = {}
        # (record number, what was wrong) for descriptors that are not what they claim
        self.malformed: list[tuple[int | None, str]] = []

    def feed(self, x: Exchange) -> None:
        first = x.first
        setup = first.setup
        if first.transfer_type != CONTROL or not setup or len(setup) < 8:
            return
        if setup[0] != 0x80 or setup[1] != 0x06 or first.bus is None or first.device is None:
            return
        data = x.data
        if not data:
            return
        key = (first.bus, first.device)
        ident = self.devices.get(key)
        if ident is None:
            ident = self.devices[key] = DeviceIdentity(first.bus, first.device)
        kind, index = setup[3], setup[2]
        if kind == d.DEVICE and len(data) >= 18:
            desc = d.parse_device_descriptor(data)
            if desc is None:
                self.malformed.append((first.record_number, f"device {first.bus}.{first.device}:"
                                       f" a device descriptor with bLength {data[0]} and "
                                       f"type {data[1]}"))
                return
            ident.vid, ident.pid, ident.device_class = desc.idVendor, desc.idProduct, \
                desc.bDeviceClass
            ident.string_indexes = {"manufacturer": desc.iManufacturer,
                                    "product": desc.iProduct, "serial": desc.iSerialNumber}
        elif kind == d.CONFIGURATION and len(data) > 9:
            tree = d.configuration_tree(data)
            for bad in tree.get("malformed", []):
                self.malformed.append((first.record_number, f"device {first.bus}.{first.device}:"
                                       f" {bad.type_name} descriptor with bLength "
                                       f"{bad.bLength}"))
            storage = [e["interface"] for e in tree["interfaces"]
                       if e["interface"].bInterfaceClass == 0x08]
            if storage:
                ident.mass_storage_interfaces = sorted({i.bInterfaceNumber for i in storage})
                ident.storage_protocols = {i.bInterfaceProtocol for i in storage}
        elif kind == d.STRING and index:
            text = d.decode_string(data)
            if text is not None:
                ident.strings[index] = text
