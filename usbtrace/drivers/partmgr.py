"""The disk-arrival requests that reach a USB stick before a file system mounts.

When disk.sys has started a disk, Windows' partition manager, mount manager and
storage services look at it before any file system does.  A USB capture shows
only what reaches the device; the shared Windows 10 USBPcap capture of a
Kingston stick shows, after the class driver's start-up:

    READ CAPACITY, INQUIRY (36), READ CAPACITY x3, READ(10) of LBA 0 (1 block)

The READ CAPACITYs are what disk.sys sends for geometry and length requests on
removable media (disk.c, DiskIoctlGetDriveGeometry: "Issue ReadCapacity to
update device extension with information for current media"); the read of
LBA 0 is the partition table (IoReadPartitionTableEx).  Which component asks
the standard INQUIRY is not visible on the wire; it is sent here as a SCSI
pass-through, the request that produces that command from above the class
driver.  The requests go through the I/O manager as any caller's would, so the
upper tracer records them too.  A request that fails does not fail the disk:
the disk stays, as a Windows disk whose partition table cannot be read stays
(uninitialised, or not ready).
"""

from __future__ import annotations

from usbtrace.storage import ioctl as io
from usbtrace.storage import scsi
from usbtrace.wdm.win32 import NtStatusError, Win32

# Sector sizes are 512 or 4096 bytes in practice; a device that claims megabytes gets no
# buffer, as an allocation from the non-paged pool that size would fail.
MAX_SECTOR_BUFFER = 1 << 20


def PartMgrDiskArrival(win32: Win32, path: str) -> bytes | None:  # noqa: N802
    """Send the disk-arrival requests to ``path``; the partition-table sector, or None
    when the disk could not be read (the first failure ends the sequence)."""
    handle = win32.CreateFile(path)
    try:
        _, geometry = win32.DeviceIoControl(handle, io.IOCTL_DISK_GET_DRIVE_GEOMETRY, None, 24)
        inquiry = bytearray(36)
        sptd = io.ScsiPassThroughDirect(bytes([scsi.INQUIRY, 0, 0, 0, 36, 0]),
                                        io.SCSI_IOCTL_DATA_IN, 36, inquiry)
        win32.DeviceIoControl(handle, io.IOCTL_SCSI_PASS_THROUGH_DIRECT, sptd)
        win32.DeviceIoControl(handle, io.IOCTL_DISK_GET_DRIVE_GEOMETRY_EX, None, 32)
        win32.DeviceIoControl(handle, io.IOCTL_DISK_GET_LENGTH_INFO, None, 8)
        win32.DeviceIoControl(handle, io.IOCTL_DISK_GET_DRIVE_GEOMETRY, None, 24)
        if geometry.BytesPerSector > MAX_SECTOR_BUFFER:
            return None  # the pool allocation fails (STATUS_INSUFFICIENT_RESOURCES)
        sector = bytearray(geometry.BytesPerSector)
        win32.ReadFile(handle, sector, 0)
        return bytes(sector)
    except NtStatusError:
        return None  # a disk that cannot be read still arrives: the failure is in the log
    finally:
        win32.CloseHandle(handle)
