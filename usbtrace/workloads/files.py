"""The ``files`` workload: a real FAT implementation on top of the stack.

pyfatfs formats the stick and mounts it; every sector it reads or writes goes
through ``DiskFile``, a file object over CreateFile/ReadFile/WriteFile on
``\\\\.\\PhysicalDrive0`` (sector-aligned, with read-modify-write for the small
updates a file system makes).  The workload copies files and folders (a
built-in sample set unless ``--copy`` gives paths), reads them back and
compares, renames one, deletes one, and unmounts.  Its result lists every
operation with sizes and SHA-256 sums, which tests compare with the log.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from unittest import mock

from usbtrace.errors import InputError
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.storage import ioctl as ioctls
from usbtrace.wdm.win32 import Win32
from usbtrace.workloads.result import FileOperation, WorkloadResult

SECTOR = 512
FAT_TYPES = {"fat12": 12, "fat16": 16, "fat32": 32}


class DiskFile(io.RawIOBase):
    """The disk as a seekable binary file, for a file system written for files."""

    def __init__(self, win32: Win32, handle: int, size: int) -> None:
        super().__init__()
        self.win32 = win32
        self.handle = handle
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def truncate(self, size: int | None = None) -> int:
        if size is not None and size > self.size:
            raise OSError(f"the stick holds {self.size} bytes, not {size}")
        return self.size

    def _span(self, n: int) -> tuple[int, int]:
        start = self.position - self.position % SECTOR
        end = -(-(self.position + n) // SECTOR) * SECTOR
        return start, min(end, self.size)

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.position)
        if n <= 0:
            return 0
        start, end = self._span(n)
        block = bytearray(end - start)
        self.win32.ReadFile(self.handle, block, start)
        skip = self.position - start
        buffer[:n] = block[skip : skip + n]
        self.position += n
        return n

    def write(self, data: Any) -> int:
        data = bytes(data)
        n = len(data)
        if n == 0:
            return 0
        start, end = self._span(n)
        skip = self.position - start
        if skip or (self.position + n) % SECTOR:
            block = bytearray(end - start)  # read-modify-write of partial sectors
            self.win32.ReadFile(self.handle, block, start)
            block[skip : skip + n] = data
        else:
            block = bytearray(data)
        self.win32.WriteFile(self.handle, block, start)
        self.position += n
        return n

    def flush(self) -> None:
        self.win32.FlushFileBuffers(self.handle)

    def close(self) -> None:
        """The handle belongs to the workload, which closes it after unmounting."""


def sample_tree(seed: int = 7) -> dict[str, bytes]:
    """A small set of files: sizes across cluster boundaries, nesting, a long name."""
    rng = random.Random(seed)
    return {
        "/README.TXT": b"usbtrace sample volume\r\n" * 40,
        "/docs/report.pdf": rng.randbytes(150_000),
        "/docs/notes/todo.txt": b"- attribute every block to its file\n" * 120,
        "/photos/holiday picture with a long name.jpg": rng.randbytes(70_000),
        "/empty.dat": b"",
        "/data.bin": rng.randbytes(9_000),
    }


def tree_from(paths: Iterable[str]) -> dict[str, bytes]:
    """Files and folders named on the command line, as volume paths -> contents."""
    tree: dict[str, bytes] = {}
    for name in paths:
        source = Path(name)
        if not source.exists():
            raise InputError(f"--copy {name}: no such file or folder")
        if source.is_file():
            tree["/" + source.name] = source.read_bytes()
            continue
        for item in sorted(source.rglob("*")):
            if item.is_file():
                rel = item.relative_to(source.parent).as_posix()
                tree["/" + rel] = item.read_bytes()
    if not tree:
        raise InputError("--copy: nothing to copy")
    return tree


def _mkfs(disk: DiskFile, fat_type: str) -> None:
    import pyfatfs.PyFat as pyfat_module  # noqa: N813 - the module, not the class

    # pyfatfs formats a file it opens by name; hand it the disk instead.
    with mock.patch.object(pyfat_module, "open", lambda *a, **k: disk, create=True):
        fs = pyfat_module.PyFat()
        fs.mkfs("\\\\.\\PhysicalDrive0", FAT_TYPES[fat_type], size=disk.size,
                label="USBTRACE")
        fs.close()


def check(fat: str, copy: Iterable[str]) -> dict[str, bytes]:
    """The options, checked before any session starts; the tree to copy."""
    if fat == "exfat":
        raise InputError("the files workload formats with pyfatfs, which writes FAT12/16/32 "
                         "only; exFAT is decoded from captures but cannot be written here")
    if fat not in FAT_TYPES:
        raise InputError(f"unknown file system {fat!r}; choose fat12, fat16 or fat32")
    return tree_from(copy) if copy else sample_tree()


def files(machine: Machine, fat: str = "fat16", copy: Iterable[str] = ()) -> WorkloadResult:
    from pyfatfs.PyFatFS import PyFatBytesIOFS

    tree = check(fat, copy)
    result = WorkloadResult()
    w = machine.win32
    handle = w.CreateFile(DISK_PATH)
    _, size = w.DeviceIoControl(handle, ioctls.IOCTL_DISK_GET_LENGTH_INFO, None, 8)
    disk = DiskFile(w, handle, size)
    _mkfs(disk, fat)
    result.notes.append(f"formatted {size // (1 << 20)} MiB as {fat.upper()} with pyfatfs")

    fs = PyFatBytesIOFS(disk, lazy_load=False)
    fs.tz = datetime.timezone.utc  # PyFatBytesIOFS leaves the time zone unset
    try:
        for path in sorted({str(Path(p).parent) for p in tree} - {"/"}, key=len):
            if not fs.exists(path):
                fs.makedirs(path, recreate=True)
                result.operations.append(FileOperation("mkdir", path))
        for path, data in tree.items():
            with fs.openbin(path, "w") as f:
                f.write(data)
            result.bytes_written += len(data)
            result.operations.append(FileOperation("write", path, len(data),
                                                   hashlib.sha256(data).hexdigest()))
    finally:
        fs.close()
    # mount again, so that reads come from the stick and not from pyfatfs's memory
    fs = PyFatBytesIOFS(disk, lazy_load=False)
    fs.tz = datetime.timezone.utc
    try:
        for path, data in tree.items():
            with fs.openbin(path, "r") as f:
                back = f.read()
            result.bytes_read += len(back)
            result.operations.append(FileOperation("read", path, len(back),
                                                   hashlib.sha256(back).hexdigest()))
            if back != data:
                result.mismatches.append(f"{path}: read back differs from what was written")
        names = sorted(p for p, d in tree.items() if d)
        if len(names) >= 2:
            renamed, deleted = names[0], names[-1]
            target = str(Path(renamed).with_name("renamed-" + Path(renamed).name))
            fs.move(renamed, target)
            result.operations.append(FileOperation("rename", renamed, len(tree[renamed]),
                                                   new_path=target))
            fs.remove(deleted)
            result.operations.append(FileOperation("delete", deleted, len(tree[deleted])))
    finally:
        fs.close()
    w.CloseHandle(handle)
    result.notes.append(f"{len(tree)} files copied, read back, one renamed, one deleted")
    return result
