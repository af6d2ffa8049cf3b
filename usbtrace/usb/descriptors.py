"""USB standard descriptors (USB 2.0 §9.6, USB 3.x §9.6.2 for BOS), as construct layouts.

Field names are the specification's.  ``parse_descriptors`` walks a
configuration blob (configuration, then interfaces, endpoints, class and
vendor descriptors in the order the device returned them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from construct import (
    Byte,
    Bytes,
    Const,
    ConstructError,
    Container,
    Int16ul,
    Struct,
    this,
)

# bDescriptorType values (USB 2.0 Table 9-5, USB 3.2 Table 9-6)
DEVICE = 1
CONFIGURATION = 2
STRING = 3
INTERFACE = 4
ENDPOINT = 5
DEVICE_QUALIFIER = 6
OTHER_SPEED_CONFIGURATION = 7
INTERFACE_POWER = 8
BOS = 15
DEVICE_CAPABILITY = 16
SS_ENDPOINT_COMPANION = 48

DESCRIPTOR_NAMES = {
    1: "device", 2: "configuration", 3: "string", 4: "interface", 5: "endpoint",
    6: "device_qualifier", 7: "other_speed_configuration", 8: "interface_power",
    11: "interface_association", 15: "bos", 16: "device_capability",
    33: "hid", 48: "ss_endpoint_companion",
}

# USB 2.0 §9.6.1 Table 9-8
DeviceDescriptor = Struct(
    "bLength" / Const(18, Byte),
    "bDescriptorType" / Const(DEVICE, Byte),
    "bcdUSB" / Int16ul,
    "bDeviceClass" / Byte,
    "bDeviceSubClass" / Byte,
    "bDeviceProtocol" / Byte,
    "bMaxPacketSize0" / Byte,
    "idVendor" / Int16ul,
    "idProduct" / Int16ul,
    "bcdDevice" / Int16ul,
    "iManufacturer" / Byte,
    "iProduct" / Byte,
    "iSerialNumber" / Byte,
    "bNumConfigurations" / Byte,
)

# USB 2.0 §9.6.2 Table 9-9
DeviceQualifierDescriptor = Struct(
    "bLength" / Const(10, Byte),
    "bDescriptorType" / Const(DEVICE_QUALIFIER, Byte),
    "bcdUSB" / Int16ul,
    "bDeviceClass" / Byte,
    "bDeviceSubClass" / Byte,
    "bDeviceProtocol" / Byte,
    "bMaxPacketSize0" / Byte,
    "bNumConfigurations" / Byte,
    "bReserved" / Byte,
)

# USB 2.0 §9.6.3 Table 9-10
ConfigurationDescriptor = Struct(
    "bLength" / Const(9, Byte),
    "bDescriptorType" / Byte,  # CONFIGURATION or OTHER_SPEED_CONFIGURATION
    "wTotalLength" / Int16ul,
    "bNumInterfaces" / Byte,
    "bConfigurationValue" / Byte,
    "iConfiguration" / Byte,
    "bmAttributes" / Byte,
    "bMaxPower" / Byte,
)

# USB 2.0 §9.6.5 Table 9-12
InterfaceDescriptor = Struct(
    "bLength" / Const(9, Byte),
    "bDescriptorType" / Const(INTERFACE, Byte),
    "bInterfaceNumber" / Byte,
    "bAlternateSetting" / Byte,
    "bNumEndpoints" / Byte,
    "bInterfaceClass" / Byte,
    "bInterfaceSubClass" / Byte,
    "bInterfaceProtocol" / Byte,
    "iInterface" / Byte,
)

# USB 2.0 §9.6.6 Table 9-13
EndpointDescriptor = Struct(
    "bLength" / Const(7, Byte),
    "bDescriptorType" / Const(ENDPOINT, Byte),
    "bEndpointAddress" / Byte,
    "bmAttributes" / Byte,
    "wMaxPacketSize" / Int16ul,
    "bInterval" / Byte,
)

# USB 3.2 §9.6.7 Table 9-27
SuperSpeedEndpointCompanionDescriptor = Struct(
    "bLength" / Const(6, Byte),
    "bDescriptorType" / Const(SS_ENDPOINT_COMPANION, Byte),
    "bMaxBurst" / Byte,
    "bmAttributes" / Byte,
    "wBytesPerInterval" / Int16ul,
)

# USB 2.0 §9.6.7: string descriptor zero holds LANGIDs, the others UTF-16LE text
StringDescriptor = Struct(
    "bLength" / Byte,
    "bDescriptorType" / Const(STRING, Byte),
    "bString" / Bytes(lambda ctx: max(ctx.bLength - 2, 0)),
)

# USB 3.2 §9.6.2 Table 9-12 (BOS) and Table 9-13 (device capability header)
BosDescriptor = Struct(
    "bLength" / Const(5, Byte),
    "bDescriptorType" / Const(BOS, Byte),
    "wTotalLength" / Int16ul,
    "bNumDeviceCaps" / Byte,
)
DeviceCapabilityDescriptor = Struct(
    "bLength" / Byte,
    "bDescriptorType" / Const(DEVICE_CAPABILITY, Byte),
    "bDevCapabilityType" / Byte,
    "dev_capability_data" / Bytes(this.bLength - 3),
)
CAPABILITY_NAMES = {1: "wireless_usb", 2: "usb_2_0_extension", 3: "superspeed_usb",
                    4: "container_id", 10: "superspeed_plus"}

# A descriptor of a type we do not lay out: header plus bytes
GenericDescriptor = Struct(
    "bLength" / Byte,
    "bDescriptorType" / Byte,
    "data" / Bytes(lambda ctx: max(ctx.bLength - 2, 0)),
)

LAYOUTS = {
    DEVICE: DeviceDescriptor,
    CONFIGURATION: ConfigurationDescriptor,
    OTHER_SPEED_CONFIGURATION: ConfigurationDescriptor,
    INTERFACE: InterfaceDescriptor,
    ENDPOINT: EndpointDescriptor,
    DEVICE_QUALIFIER: DeviceQualifierDescriptor,
    STRING: StringDescriptor,
    BOS: BosDescriptor,
    DEVICE_CAPABILITY: DeviceCapabilityDescriptor,
    SS_ENDPOINT_COMPANION: SuperSpeedEndpointCompanionDescriptor,
}

# bLength of the layouts with a fixed size (USB 2.0 §9.6: the specification's sizes)
FIXED_LENGTHS = {DEVICE: 18, CONFIGURATION: 9, OTHER_SPEED_CONFIGURATION: 9, INTERFACE: 9,
                 ENDPOINT: 7, DEVICE_QUALIFIER: 10, BOS: 5, SS_ENDPOINT_COMPANION: 6}

TRANSFER_TYPES = {0: "control", 1: "isochronous", 2: "bulk", 3: "interrupt"}


def parse_device_descriptor(data: bytes) -> Container | None:
    """The device descriptor in ``data``, or None when it is not one: its bLength must
    be 18 and its type DEVICE (USB 2.0 Table 9-8), whatever follows it."""
    if len(data) < 18 or data[0] != 18 or data[1] != DEVICE:
        return None
    return DeviceDescriptor.parse(bytes(data[:18]))


def parse_descriptors(blob: bytes) -> list[Container]:
    """Split a descriptor blob into parsed descriptors; stops at a malformed length.

    A device may return a short blob (the host asked for 9 bytes first); the
    walk keeps what is whole and ignores the rest.  A descriptor shorter than its
    type's specified size (USB 2.0 §9.5) is kept as a generic one with
    ``malformed = True``, so no reader mistakes it for what its type claims.
    """
    out = []
    pos = 0
    while pos + 2 <= len(blob):
        length, kind = blob[pos], blob[pos + 1]
        if length < 2 or pos + length > len(blob):
            break
        chunk = blob[pos : pos + length]
        layout = LAYOUTS.get(kind, GenericDescriptor)
        fixed = FIXED_LENGTHS.get(kind)
        malformed = False
        try:
            if fixed is not None and length > fixed:  # longer than specified: extra ignored
                parsed = layout.parse(bytes([fixed]) + chunk[1:fixed])
                parsed.bLength = length
            else:
                parsed = layout.parse(chunk)
        except ConstructError:
            parsed = GenericDescriptor.parse(chunk)
            malformed = layout is not GenericDescriptor
        parsed.type_name = DESCRIPTOR_NAMES.get(kind, f"0x{kind:02x}")
        parsed.malformed = malformed
        out.append(parsed)
        pos += length
    return out


def endpoint_companions(blob: bytes, number: int,
                        alternate: int) -> Iterator[tuple[int, int | None]]:
    """The endpoints of interface ``number``, setting ``alternate``, and their SuperSpeed
    Endpoint Companions, in descriptor order: (endpoint, None) for an endpoint
    descriptor, then (endpoint, MaxStreams exponent) for each companion after it
    (bmAttributes bits 4..0 of a bulk endpoint's companion, USB 3.2 §9.6.7)."""
    current = False
    endpoint: int | None = None
    for desc in parse_descriptors(blob):
        if desc.malformed:
            continue
        kind = desc.bDescriptorType
        if kind == INTERFACE:
            current = (desc.bInterfaceNumber, desc.bAlternateSetting) == (number, alternate)
            endpoint = None
        elif kind == ENDPOINT and current:
            endpoint = desc.bEndpointAddress
            yield endpoint, None
        elif kind == SS_ENDPOINT_COMPANION and current and endpoint is not None:
            yield endpoint, int(desc.bmAttributes & 0x1F)


def decode_string(descriptor: bytes) -> str | None:
    """The text of a string descriptor (not index 0), or None if malformed."""
    if len(descriptor) < 2 or descriptor[1] != STRING:
        return None
    body = descriptor[2 : descriptor[0]]
    return body[: len(body) & ~1].decode("utf-16-le", errors="replace")


def build_string(text: str) -> bytes:
    body = text.encode("utf-16-le")
    return StringDescriptor.build({"bLength": 2 + len(body), "bString": body})


def build_langids(*langids: int) -> bytes:
    body = b"".join(x.to_bytes(2, "little") for x in langids)
    return StringDescriptor.build({"bLength": 2 + len(body), "bString": body})


def configuration_tree(blob: bytes) -> dict[str, Any]:
    """Configuration with its interfaces and each interface's endpoints, nested.

    Descriptors too short for their type are left out of the tree and listed under
    ``"malformed"``: an interface without its fields is no interface.
    """
    tree: dict[str, Any] = {"interfaces": []}
    current: dict[str, Any] | None = None
    for desc in parse_descriptors(blob):
        kind = desc.bDescriptorType
        if desc.malformed:
            tree.setdefault("malformed", []).append(desc)
        elif kind in (CONFIGURATION, OTHER_SPEED_CONFIGURATION):
            tree["configuration"] = desc
        elif kind == INTERFACE:
            current = {"interface": desc, "endpoints": [], "extra": []}
            tree["interfaces"].append(current)
        elif kind == ENDPOINT and current is not None:
            current["endpoints"].append(desc)
        elif current is not None:
            current["extra"].append(desc)
    return tree
