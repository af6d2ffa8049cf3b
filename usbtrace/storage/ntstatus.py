"""Sense data -> NTSTATUS, as the class driver's ClassInterpretSenseInfo decides.

Also says whether the request is worth retrying: UNIT ATTENTION and
NOT READY (becoming ready) are transient; the rest are final.
"""

from __future__ import annotations

from usbtrace.storage import scsi
from usbtrace.wdm.status import NTSTATUS


def sense_to_ntstatus(sense: scsi.Sense | None) -> tuple[NTSTATUS, bool]:
    """The NTSTATUS for a failed command's sense data, and whether to retry."""
    if sense is None:
        return NTSTATUS.STATUS_IO_DEVICE_ERROR, True
    key, asc, ascq = sense.key, sense.asc, sense.ascq
    if key in (scsi.NO_SENSE, scsi.RECOVERED_ERROR):
        return NTSTATUS.STATUS_SUCCESS, False
    if key == scsi.NOT_READY:
        if asc == 0x3A:
            return NTSTATUS.STATUS_NO_MEDIA_IN_DEVICE, False
        return NTSTATUS.STATUS_DEVICE_NOT_READY, asc == 0x04 and ascq == 0x01
    if key == scsi.MEDIUM_ERROR:
        if asc == 0x11:
            return NTSTATUS.STATUS_CRC_ERROR, False
        return NTSTATUS.STATUS_DEVICE_DATA_ERROR, False
    if key == scsi.HARDWARE_ERROR:
        return NTSTATUS.STATUS_IO_DEVICE_ERROR, False
    if key == scsi.ILLEGAL_REQUEST:
        if asc == 0x21:
            return NTSTATUS.STATUS_NONEXISTENT_SECTOR, False
        return NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, False
    if key == scsi.UNIT_ATTENTION:
        return NTSTATUS.STATUS_VERIFY_REQUIRED, True
    if key == scsi.DATA_PROTECT:
        return NTSTATUS.STATUS_MEDIA_WRITE_PROTECTED, False
    if key == scsi.ABORTED_COMMAND:
        return NTSTATUS.STATUS_IO_DEVICE_ERROR, True
    return NTSTATUS.STATUS_IO_DEVICE_ERROR, False
