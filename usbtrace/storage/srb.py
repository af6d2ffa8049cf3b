"""SCSI request blocks (srb.h): what the disk class driver hands the port/miniport.

Between disk.sys and usbstor an SRB rides in IRP_MJ_SCSI; its CDB becomes the
CBW's command block, its DataBuffer the data phase, and its sense buffer is
filled by usbstor's automatic REQUEST SENSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SRB_FUNCTION_EXECUTE_SCSI = 0x00
SRB_FUNCTION_RESET_DEVICE = 0x13

SRB_STATUS_PENDING = 0x00
SRB_STATUS_SUCCESS = 0x01
SRB_STATUS_ABORTED = 0x02
SRB_STATUS_ERROR = 0x04
SRB_STATUS_INVALID_REQUEST = 0x06
SRB_STATUS_NO_DEVICE = 0x08
SRB_STATUS_TIMEOUT = 0x09
SRB_STATUS_BUS_RESET = 0x0E
SRB_STATUS_DATA_OVERRUN = 0x12
SRB_STATUS_AUTOSENSE_VALID = 0x80

SRB_FLAGS_DATA_IN = 0x00000040
SRB_FLAGS_DATA_OUT = 0x00000080
SRB_FLAGS_NO_DATA_TRANSFER = 0x00000000

SCSISTAT_GOOD = 0x00
SCSISTAT_CHECK_CONDITION = 0x02


@dataclass(slots=True, eq=False)
class Srb:
    cdb: bytes
    data_transfer_length: int
    srb_flags: int
    data_buffer: bytearray | memoryview | None = None
    lun: int = 0
    function: int = SRB_FUNCTION_EXECUTE_SCSI
    srb_status: int = SRB_STATUS_PENDING
    scsi_status: int = SCSISTAT_GOOD
    sense_info_buffer: bytearray = field(default_factory=lambda: bytearray(18))
    sense_info_buffer_length: int = 18
    timeout_value: int = 10
    # where DataBuffer starts in the bytes the IRP's MDL describes (for a partial MDL)
    data_offset: int = 0

    @property
    def data_in(self) -> bool:
        return bool(self.srb_flags & SRB_FLAGS_DATA_IN)
