"""USB Mass Storage Class Bulk-Only Transport 1.0: the CBW and the CSW.

§5.1 Command Block Wrapper (31 bytes, signature "USBC") and §5.2 Command
Status Wrapper (13 bytes, signature "USBS").  The hot paths (the stick, the
client driver and capture decoding) use the precompiled ``struct`` forms; the
construct layouts document the fields and serve decoding and round-trip tests.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import NamedTuple

from construct import Bytes, Const, Int8ul, Int32ul, Struct

CBW_SIGNATURE = 0x43425355  # "USBC" little-endian
CSW_SIGNATURE = 0x53425355  # "USBS"
CBW_LENGTH = 31
CSW_LENGTH = 13
CBW_FLAGS_DATA_IN = 0x80

# §5.1, Table 5.1
CommandBlockWrapper = Struct(
    "dCBWSignature" / Const(CBW_SIGNATURE, Int32ul),
    "dCBWTag" / Int32ul,
    "dCBWDataTransferLength" / Int32ul,
    "bmCBWFlags" / Int8ul,
    "bCBWLUN" / Int8ul,  # bits 3..0; bits 7..4 reserved
    "bCBWCBLength" / Int8ul,  # bits 4..0; bits 7..5 reserved
    "CBWCB" / Bytes(16),
)

# §5.2, Table 5.2
CommandStatusWrapper = Struct(
    "dCSWSignature" / Const(CSW_SIGNATURE, Int32ul),
    "dCSWTag" / Int32ul,
    "dCSWDataResidue" / Int32ul,
    "bCSWStatus" / Int8ul,
)

CBW = struct.Struct("<IIIBBB16s")
CSW = struct.Struct("<IIIB")

CSW_STATUS_PASSED = 0
CSW_STATUS_FAILED = 1
CSW_STATUS_PHASE_ERROR = 2
CSW_STATUS_NAMES = {0: "good", 1: "check_condition", 2: "phase_error"}


class Cbw(NamedTuple):
    tag: int
    data_transfer_length: int
    flags: int
    lun: int
    cb_length: int
    cdb: bytes  # the first cb_length bytes of CBWCB

    @property
    def data_in(self) -> bool:
        return bool(self.flags & CBW_FLAGS_DATA_IN)


class Csw(NamedTuple):
    tag: int
    residue: int
    status: int


# The named tuples made without the Python frame of a named tuple's __new__: a stick, a
# replay and a decoder parse one CBW and one CSW for every command
_cbw = partial(tuple.__new__, Cbw)
_csw = partial(tuple.__new__, Csw)


def build_cbw(tag: int, length: int, data_in: bool, lun: int, cdb: bytes) -> bytes:
    flags = CBW_FLAGS_DATA_IN if data_in else 0
    return CBW.pack(CBW_SIGNATURE, tag, length, flags, lun, len(cdb), cdb)  # "16s" pads


def build_csw(tag: int, residue: int, status: int) -> bytes:
    return CSW.pack(CSW_SIGNATURE, tag, residue, status)


def parse_cbw(data: bytes | bytearray | memoryview) -> Cbw | None:
    """A CBW if ``data`` is *valid* (§6.2.1: 31 bytes, signature); else None."""
    if len(data) != CBW_LENGTH:
        return None
    sig, tag, length, flags, lun, cb_len, cb = CBW.unpack(data)
    if sig != CBW_SIGNATURE:
        return None
    return _cbw((tag, length, flags, lun, cb_len, cb[: (cb_len & 0x1F) or 16]))


def cbw_meaningful(cbw: Cbw, max_lun: int) -> bool:
    """§6.2.2: no reserved bits set, LUN supported, CB length 1..16."""
    return fields_meaningful(cbw.flags, cbw.lun, cbw.cb_length, max_lun)


def fields_meaningful(flags: int, lun: int, cb_length: int, max_lun: int) -> bool:
    """``cbw_meaningful`` on the CBW's fields, for a device that unpacks them itself."""
    return (
        flags & 0x7F == 0
        and lun & 0xF0 == 0
        and lun <= max_lun
        and cb_length & 0xE0 == 0
        and 1 <= cb_length <= 16
    )


def parse_csw(data: bytes | bytearray | memoryview) -> Csw | None:
    """A CSW if ``data`` is 13 bytes with the "USBS" signature; else None."""
    if len(data) != CSW_LENGTH:
        return None
    sig, tag, residue, status = CSW.unpack(data)
    if sig != CSW_SIGNATURE:
        return None
    return _csw((tag, residue, status))
