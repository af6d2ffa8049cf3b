"""The ``raw`` workload: blocks written and read back through the disk device.

It writes known data at several offsets and sizes (one crossing the
adapter's 64 KiB transfer limit, so it splits into several SRBs), reads it
back synchronously and overlapped, asks the drive's geometry, its storage
descriptor and an INQUIRY through SCSI pass-through, and checks every byte.
"""

from __future__ import annotations

import random

from usbtrace.machine import DISK_PATH, Machine
from usbtrace.storage import ioctl as io
from usbtrace.wdm.win32 import NtStatusError
from usbtrace.workloads.result import WorkloadResult


def raw(machine: Machine, seed: int = 2026) -> WorkloadResult:
    w = machine.win32
    result = WorkloadResult()
    handle = w.CreateFile(DISK_PATH)
    _, geometry = w.DeviceIoControl(handle, io.IOCTL_DISK_GET_DRIVE_GEOMETRY, None, 24)
    _, size = w.DeviceIoControl(handle, io.IOCTL_DISK_GET_LENGTH_INFO, None, 8)
    _, descriptor = w.DeviceIoControl(handle, io.IOCTL_STORAGE_QUERY_PROPERTY,
                                      io.StoragePropertyQuery(io.StorageDeviceProperty))
    result.notes.append(f"{descriptor.VendorId} {descriptor.ProductId} serial "
                        f"{descriptor.SerialNumber}, {size} bytes, "
                        f"{geometry.BytesPerSector} B/sector")
    inquiry = bytearray(36)
    sptd = io.ScsiPassThroughDirect(bytes([0x12, 0, 0, 0, 36, 0]), io.SCSI_IOCTL_DATA_IN, 36,
                                    inquiry)
    w.DeviceIoControl(handle, io.IOCTL_SCSI_PASS_THROUGH_DIRECT, sptd)
    if inquiry[8:16].strip() != descriptor.VendorId.encode():
        result.mismatches.append("pass-through INQUIRY vendor differs from the descriptor")

    rng = random.Random(seed)
    block = geometry.BytesPerSector
    plan = [(0, 4096), (64 * 1024, 64 * 1024), (1 << 20, 200 * 1024),
            (size - 8 * block, 8 * block)]
    written: dict[int, bytes] = {}
    for offset, length in plan:
        data = rng.randbytes(length)
        result.bytes_written += w.WriteFile(handle, data, offset)
        written[offset] = data
    w.FlushFileBuffers(handle)
    for offset, data in written.items():
        buffer = bytearray(len(data))
        result.bytes_read += w.ReadFile(handle, buffer, offset)
        if buffer != data:
            result.mismatches.append(f"read back at offset {offset} differs")
    # several reads in flight at once: overlapped I/O
    pending = []
    for offset, data in written.items():
        buffer = bytearray(len(data))
        pending.append((offset, buffer, w.ReadFile(handle, buffer, offset, overlapped=True)))
    for offset, buffer, ov in pending:
        result.bytes_read += w.GetOverlappedResult(handle, ov)
        if buffer != written[offset]:
            result.mismatches.append(f"overlapped read at offset {offset} differs")
    # a misaligned request must be refused by the class driver, not reach the device
    try:
        w.ReadFile(handle, bytearray(100), 3)
        result.mismatches.append("misaligned read was accepted")
    except NtStatusError as e:
        result.notes.append(f"misaligned read refused: {e}")
    w.CloseHandle(handle)
    return result


def read_only(machine: Machine, sectors: int = 2048) -> WorkloadResult:
    """Capacity, then the first ``sectors`` sectors, in 64 KiB reads: safe on any stick."""
    w = machine.win32
    result = WorkloadResult()
    handle = w.CreateFile(DISK_PATH)
    _, size = w.DeviceIoControl(handle, io.IOCTL_DISK_GET_LENGTH_INFO, None, 8)
    _, descriptor = w.DeviceIoControl(handle, io.IOCTL_STORAGE_QUERY_PROPERTY,
                                      io.StoragePropertyQuery(io.StorageDeviceProperty))
    result.notes.append(f"{descriptor.VendorId} {descriptor.ProductId}, {size} bytes; "
                        "read-only")
    end = min(size, sectors * 512)
    buffer = bytearray(65536)
    for offset in range(0, end, len(buffer)):
        n = min(len(buffer), end - offset)
        result.bytes_read += w.ReadFile(handle, buffer, offset, n)
    w.CloseHandle(handle)
    return result
