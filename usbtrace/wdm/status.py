"""NTSTATUS values used by the model (ntstatus.h), and the NT_SUCCESS test.

Values are the real 32-bit codes so that logs and exports carry what a
Windows trace would carry.
"""

from __future__ import annotations

from enum import IntEnum
from functools import lru_cache


class NTSTATUS(IntEnum):
    STATUS_SUCCESS = 0x00000000
    STATUS_PENDING = 0x00000103
    STATUS_BUFFER_OVERFLOW = 0x80000005
    STATUS_DEVICE_BUSY = 0x80000011
    STATUS_VERIFY_REQUIRED = 0x80000016
    STATUS_UNSUCCESSFUL = 0xC0000001
    STATUS_NOT_IMPLEMENTED = 0xC0000002
    STATUS_INVALID_HANDLE = 0xC0000008
    STATUS_INVALID_PARAMETER = 0xC000000D
    STATUS_NO_SUCH_DEVICE = 0xC000000E
    STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
    STATUS_END_OF_FILE = 0xC0000011
    STATUS_NO_MEDIA_IN_DEVICE = 0xC0000013
    STATUS_NONEXISTENT_SECTOR = 0xC0000015
    STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
    STATUS_ACCESS_DENIED = 0xC0000022
    STATUS_BUFFER_TOO_SMALL = 0xC0000023
    STATUS_DATA_OVERRUN = 0xC000003C
    STATUS_DATA_ERROR = 0xC000003E
    STATUS_CRC_ERROR = 0xC000003F
    STATUS_DELETE_PENDING = 0xC0000056
    STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
    STATUS_DEVICE_DATA_ERROR = 0xC000009C
    STATUS_DEVICE_NOT_CONNECTED = 0xC000009D
    STATUS_MEDIA_WRITE_PROTECTED = 0xC00000A2
    STATUS_DEVICE_NOT_READY = 0xC00000A3
    STATUS_IO_TIMEOUT = 0xC00000B5
    STATUS_NOT_SUPPORTED = 0xC00000BB
    STATUS_CANCELLED = 0xC0000120
    STATUS_INVALID_DEVICE_STATE = 0xC0000184
    STATUS_IO_DEVICE_ERROR = 0xC0000185
    STATUS_DEVICE_PROTOCOL_ERROR = 0xC0000186
    STATUS_DEVICE_DOES_NOT_EXIST = 0xC00000C0



def NT_SUCCESS(status: int) -> bool:  # noqa: N802 - the WDK macro's name
    """Success and informational codes have the top bit clear (ntdef.h)."""
    return status < 0x80000000


def status_name(status: int | None) -> str | None:
    """Lower-case name of a status code for the database, or hex if unknown."""
    return None if status is None else _name(status)


@lru_cache(maxsize=4096)  # a log names a handful; the enum's lookup by value is slow
def _name(status: int) -> str:
    try:
        return NTSTATUS(status).name.lower()
    except ValueError:
        return f"0x{status:08x}"
