"""Stage: what the descriptors on the wire say about each device.

Fed every exchange; keeps, per (bus, device), the device descriptor's VID,
PID and class, the mass-storage interfaces of its configuration, and the
manufacturer, product and serial strings once their indexes are known.

For UAS it also keeps what decoding needs: the pipes each UAS alternate
setting names in its Pipe Usage descriptors, and which alternate setting
SET_INTERFACE actually selected (SET_CONFIGURATION puts every interface back
to setting 0).  A device goes to the UAS stage only while its UAS setting is
the selected one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from usbtrace.decode.pairing import Exchange
from usbtrace.decode.uas import UAS_PROTOCOL, UasPipes, pipe_usage
from usbtrace.records import CONTROL
from usbtrace.usb import descriptors as d
from usbtrace.usb.urb import USBD_STATUS_SUCCESS

# a configuration descriptor's summary: malformed descriptors (type name, bLength), the
# mass-storage interface numbers and protocols, and each UAS setting's pipe usage
_Configuration = tuple[tuple[tuple[str, int], ...], tuple[int, ...], frozenset[int],
                       tuple[tuple[tuple[int, int], dict[int, int]], ...]]
MAX_CONFIGURATIONS = 64  # distinct configuration descriptors remembered


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
    uas_settings: dict[tuple[int, int], UasPipes | None] = field(default_factory=dict)
    selected: dict[int, int] = field(default_factory=dict)  # interface -> alternate setting
    uas: UasPipes | None = None  # the pipes of the selected UAS setting, if one is
    interfaces_known: bool = False  # a configuration descriptor was captured

    def update_uas(self) -> None:
        self.uas = next((pipes for (number, alt), pipes in self.uas_settings.items()
                         if pipes is not None and self.selected.get(number, 0) == alt), None)

    def text(self, name: str) -> str | None:
        index = self.string_indexes.get(name)
        return self.strings.get(index) if index else None


class IdentityTracker:
    def __init__(self) -> None:
        self.devices: dict[tuple[int, int], DeviceIdentity] = {}
        # (record number, what was wrong) for descriptors that are not what they claim
        self.malformed: list[tuple[int | None, str]] = []
        self._configurations: dict[bytes, _Configuration] = {}  # descriptor -> its summary
        self.uas_selected = False  # some device has its UAS setting selected (else: BOT)

    def uas_pipes(self, bus: int | None, device: int | None) -> UasPipes | None:
        """The UAS pipes of a device whose selected setting is UAS; else None."""
        ident = self.devices.get((bus, device)) if bus is not None and device is not None \
            else None
        return ident.uas if ident is not None else None

    def feed(self, x: Exchange) -> None:
        first = x.first
        setup = first.setup
        if first.transfer_type != CONTROL or not setup or len(setup) < 8:
            return
        if setup[1] in (0x0B, 0x09) and setup[0] in (0x01, 0x00):
            self._selection(x, setup)
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
            bad, numbers, protocols, usages = self._configuration(data)
            ident.interfaces_known = True
            for type_name, length in bad:
                self.malformed.append((first.record_number, f"device {first.bus}.{first.device}:"
                                       f" {type_name} descriptor with bLength {length}"))
            if numbers:
                ident.mass_storage_interfaces = list(numbers)
                ident.storage_protocols = set(protocols)
                ident.uas_settings = {setting: UasPipes.from_usage(usage)
                                      for setting, usage in usages}
                self._update_uas(ident)
        elif kind == d.STRING and index:
            text = d.decode_string(data)
            if text is not None:
                ident.strings[index] = text

    def _configuration(self, data: bytes) -> _Configuration:
        """What a configuration descriptor says, parsed once per distinct descriptor: a
        host asks for it again at every enumeration (and construct parsing is slow)."""
        known = self._configurations.get(data)
        if known is not None:
            return known
        tree = d.configuration_tree(data)
        bad = tuple((b.type_name, b.bLength) for b in tree.get("malformed", []))
        storage = [e["interface"] for e in tree["interfaces"]
                   if e["interface"].bInterfaceClass == 0x08]
        numbers = tuple(sorted({i.bInterfaceNumber for i in storage}))
        protocols = frozenset(i.bInterfaceProtocol for i in storage)
        usages = tuple((setting, dict(usage)) for setting, (protocol, usage)
                       in pipe_usage(data).items() if protocol == UAS_PROTOCOL) \
            if storage else ()
        if len(self._configurations) >= MAX_CONFIGURATIONS:
            self._configurations.clear()
        known = self._configurations[data] = (bad, numbers, protocols, usages)
        return known

    def _update_uas(self, ident: DeviceIdentity) -> None:
        ident.update_uas()
        self.uas_selected = any(i.uas is not None for i in self.devices.values())

    def _selection(self, x: Exchange, setup: bytes) -> None:
        """SET_INTERFACE (interface <- alternate setting) and SET_CONFIGURATION (all <- 0),
        once the device accepted them."""
        first = x.first
        complete = x.complete
        if complete is None or complete.urb_status != USBD_STATUS_SUCCESS \
                or first.bus is None or first.device is None:
            return
        ident = self.devices.get((first.bus, first.device))
        if ident is None:  # no descriptor seen: nothing to select among
            return
        if setup[0] in (0x01, 0x00) and setup[1] == 0x0B:
            # 0x01 as the wire has it; 0x00 as USBPcap (and the tracer) record the
            # URB_FUNCTION_SELECT_INTERFACE that sends it (USBPcapURB.c)
            ident.selected[setup[4]] = setup[2]
        elif setup[0] == 0x00 and setup[1] == 0x09:
            ident.selected.clear()
        else:
            return
        self._update_uas(ident)
