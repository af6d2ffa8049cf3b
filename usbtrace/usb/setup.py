"""The 8-byte control SETUP packet (USB 2.0 §9.3) and the requests this tool names.

Standard requests are USB 2.0 Table 9-4; the two mass-storage class requests
are Bulk-Only Transport 1.0 §3.1 and §3.2.
"""

from __future__ import annotations

import struct

from construct import BitsInteger, BitStruct, Byte, Flag, Int16ul, Struct

# bmRequestType as flat bits (USB 2.0 Table 9-2)
BmRequestType = BitStruct(
    "direction_in" / Flag,
    "type" / BitsInteger(2),  # 0 standard, 1 class, 2 vendor
    "recipient" / BitsInteger(5),  # 0 device, 1 interface, 2 endpoint, 3 other
)

SetupPacket = Struct(
    "bmRequestType" / Byte,
    "bRequest" / Byte,
    "wValue" / Int16ul,
    "wIndex" / Int16ul,
    "wLength" / Int16ul,
).compile()

SETUP = struct.Struct("<BBHHH")

# Standard request codes (Table 9-4)
GET_STATUS = 0
CLEAR_FEATURE = 1
SET_FEATURE = 3
SET_ADDRESS = 5
GET_DESCRIPTOR = 6
SET_DESCRIPTOR = 7
GET_CONFIGURATION = 8
SET_CONFIGURATION = 9
GET_INTERFACE = 10
SET_INTERFACE = 11
SYNCH_FRAME = 12
SET_SEL = 48
SET_ISOCH_DELAY = 49

STANDARD_REQUESTS = {
    0: "get_status", 1: "clear_feature", 3: "set_feature", 5: "set_address",
    6: "get_descriptor", 7: "set_descriptor", 8: "get_configuration",
    9: "set_configuration", 10: "get_interface", 11: "set_interface", 12: "synch_frame",
    48: "set_sel", 49: "set_isoch_delay",
}

# Feature selectors (Table 9-6)
ENDPOINT_HALT = 0
DEVICE_REMOTE_WAKEUP = 1

# Mass Storage Bulk-Only class requests (BOT 1.0 §3.1, §3.2), interface recipient
BULK_ONLY_MASS_STORAGE_RESET = 0xFF
GET_MAX_LUN = 0xFE
MASS_STORAGE_REQUESTS = {0xFF: "bulk_only_mass_storage_reset", 0xFE: "get_max_lun"}

REQUEST_TYPES = {0: "standard", 1: "class", 2: "vendor", 3: "reserved"}
RECIPIENTS = {0: "device", 1: "interface", 2: "endpoint", 3: "other"}


def build_setup(bm_request_type: int, b_request: int, w_value: int, w_index: int,
                w_length: int) -> bytes:
    return SETUP.pack(bm_request_type, b_request, w_value, w_index, w_length)


def request_name(setup: bytes, interface_class: int | None = None) -> str:
    """A readable name for a SETUP packet, e.g. ``get_descriptor(device)``."""
    if len(setup) < 8:
        return "malformed_setup"
    bm, req, value, index, length = SETUP.unpack_from(setup)
    kind = (bm >> 5) & 3
    if kind == 0:
        name = STANDARD_REQUESTS.get(req, f"standard_0x{req:02x}")
        if req == GET_DESCRIPTOR or req == SET_DESCRIPTOR:
            from usbtrace.usb.descriptors import DESCRIPTOR_NAMES

            dtype = value >> 8
            name += f"({DESCRIPTOR_NAMES.get(dtype, hex(dtype))})"
        elif req in (CLEAR_FEATURE, SET_FEATURE) and (bm & 0x1F) == 2 and value == ENDPOINT_HALT:
            name += f"(endpoint_halt 0x{index & 0xFF:02x})"
        return name
    if kind == 1 and (bm & 0x1F) == 1 and req in MASS_STORAGE_REQUESTS:
        if interface_class in (None, 8):
            return MASS_STORAGE_REQUESTS[req]
    return f"{REQUEST_TYPES[kind]}_0x{req:02x}"
