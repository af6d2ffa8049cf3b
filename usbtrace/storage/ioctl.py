"""Device I/O control codes and their buffers (ntddstor.h, ntdddisk.h, ntddscsi.h).

Buffers are Python objects with the C structures' field names, rather than
packed bytes: the model passes them by reference as METHOD_BUFFERED's system
buffer would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from usbtrace.wdm.irp import ctl_code

FILE_DEVICE_DISK = 0x07
FILE_DEVICE_MASS_STORAGE = 0x2D
FILE_DEVICE_CONTROLLER = 0x04
METHOD_BUFFERED = 0
FILE_ANY_ACCESS, FILE_READ_ACCESS, FILE_WRITE_ACCESS = 0, 1, 2

IOCTL_DISK_GET_DRIVE_GEOMETRY = ctl_code(FILE_DEVICE_DISK, 0x0000, METHOD_BUFFERED, 0)  # 0x70000
IOCTL_DISK_GET_LENGTH_INFO = ctl_code(FILE_DEVICE_DISK, 0x0017, METHOD_BUFFERED, 1)  # 0x7405C
IOCTL_DISK_GET_DRIVE_GEOMETRY_EX = ctl_code(FILE_DEVICE_DISK, 0x0028, METHOD_BUFFERED, 0)  # 0x700A0
IOCTL_STORAGE_QUERY_PROPERTY = ctl_code(FILE_DEVICE_MASS_STORAGE, 0x0500, METHOD_BUFFERED, 0)
IOCTL_SCSI_PASS_THROUGH_DIRECT = ctl_code(FILE_DEVICE_CONTROLLER, 0x0405, 0, 3)  # 0x4D014

IOCTL_NAMES = {
    IOCTL_DISK_GET_DRIVE_GEOMETRY: "ioctl_disk_get_drive_geometry",
    IOCTL_DISK_GET_LENGTH_INFO: "ioctl_disk_get_length_info",
    IOCTL_DISK_GET_DRIVE_GEOMETRY_EX: "ioctl_disk_get_drive_geometry_ex",
    IOCTL_STORAGE_QUERY_PROPERTY: "ioctl_storage_query_property",
    IOCTL_SCSI_PASS_THROUGH_DIRECT: "ioctl_scsi_pass_through_direct",
    0x220003: "ioctl_internal_usb_submit_urb",
    0x220027: "ioctl_internal_usb_submit_idle_notification",
}

StorageDeviceProperty, StorageAdapterProperty = 0, 1
PropertyStandardQuery = 0
BusTypeUsb = 7
RemovableMedia, FixedMedia = 11, 12


@dataclass
class StoragePropertyQuery:
    PropertyId: int
    QueryType: int = PropertyStandardQuery
    SIZE: ClassVar[int] = 12  # sizeof(STORAGE_PROPERTY_QUERY)


@dataclass
class StorageDeviceDescriptor:
    DeviceType: int
    RemovableMedia: bool
    VendorId: str
    ProductId: str
    ProductRevision: str
    SerialNumber: str
    BusType: int = BusTypeUsb


@dataclass
class StorageAdapterDescriptor:
    MaximumTransferLength: int
    MaximumPhysicalPages: int
    AlignmentMask: int = 0
    BusType: int = BusTypeUsb


@dataclass
class DiskGeometry:
    Cylinders: int
    MediaType: int
    TracksPerCylinder: int
    SectorsPerTrack: int
    BytesPerSector: int


@dataclass
class DiskGeometryEx:
    """DISK_GEOMETRY_EX without its variable partition and detection parts."""

    Geometry: DiskGeometry
    DiskSize: int


@dataclass
class ScsiPassThroughDirect:
    """SCSI_PASS_THROUGH_DIRECT: a CDB from user mode, with its data buffer."""

    Cdb: bytes
    DataIn: int  # SCSI_IOCTL_DATA_OUT 0, _IN 1, _UNSPECIFIED 2
    DataTransferLength: int
    DataBuffer: bytearray | memoryview | None = None
    TimeOutValue: int = 10
    Lun: int = 0
    ScsiStatus: int = 0
    SenseInfo: bytearray = field(default_factory=lambda: bytearray(18))
    SIZE: ClassVar[int] = 56  # sizeof(SCSI_PASS_THROUGH_DIRECT) on x64


SCSI_IOCTL_DATA_OUT, SCSI_IOCTL_DATA_IN, SCSI_IOCTL_DATA_UNSPECIFIED = 0, 1, 2
