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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

from usbtrace.errors import InputError, UsbtraceError
from usbtrace.machine import DISK_PATH, Machine
from usbtrace.storage import ioctl as ioctls
from usbtrace.wdm.win32 import Win32
from usbtrace.workloads.result import FileOperation, WorkloadResult

SECTOR = 512
FAT_TYPES = {"fat12": 12, "fat16": 16, "fat32": 32}
# pyfatfs's format picks sectors per cluster by volume size from the tables of
# Microsoft's FAT specification (fatgen103, DskTableFAT16/DskTableFAT32: what
# Windows' format uses), and a doubling table for FAT12.  (sectors up to, sectors
# per cluster); 0: too small for the type.
CLUSTER_TABLES: dict[int, list[tuple[int, int]]] = {
    32: [(66600, 0), (532480, 1), (16777216, 8), (33554432, 16), (67108864, 32)],
    16: [(8400, 0), (32680, 2), (262144, 4), (524288, 8), (1048576, 16), (2097152, 32),
         (4194304, 64)],
    12: [(4084, 1), (8168, 2), (16336, 4), (32672, 8), (65344, 16), (130688, 32),
         (261376, 64)],  # 64 KiB clusters left out: fatgen103 allows 32 KiB at most
}
# The FAT type is decided by the count of clusters alone (fatgen103, "FAT Type
# Determination"): FAT12 below 4085, FAT16 below 65525, FAT32 from 65525 on.
# With the cluster sizes above, and 512-byte sectors, that makes these ranges:
SIZE_RANGES = {
    "fat12": "up to 127 MiB",
    "fat16": "from 4.1 MiB to just under 2 GiB",
    "fat32": "from 32.6 MiB to 32 GiB",
}
CLUSTER_RULES = {"fat12": "fewer than 4085 clusters", "fat16": "4085 to 65524 clusters",
                 "fat32": "at least 65525 clusters"}
ROOT_ENTRIES = {12: 224, 16: 512, 32: 0}  # pyfatfs's fixed root folder; FAT32: a cluster chain
DIRENT = 32
NUMBER_OF_FATS = 2


@dataclass(frozen=True)
class FatLayout:
    """The volume pyfatfs would format: cluster size and count."""

    fat: int
    sectors_per_cluster: int
    clusters: int

    @property
    def cluster_bytes(self) -> int:
        return self.sectors_per_cluster * SECTOR

    @property
    def valid(self) -> bool:
        """Whether the count of clusters makes the volume the FAT type asked for."""
        if self.sectors_per_cluster == 0 or self.clusters < 1:
            return False
        if self.fat == 12:
            return self.clusters < 4085
        if self.fat == 16:
            return 4085 <= self.clusters < 65525
        return self.clusters >= 65525

    @property
    def free_bytes(self) -> int:
        """Data space after formatting (a FAT32 root folder takes the first cluster)."""
        return (self.clusters - (1 if self.fat == 32 else 0)) * self.cluster_bytes


def fat_layout(fat: str, size: int) -> FatLayout:
    """What pyfatfs's mkfs makes of ``size`` bytes (its own arithmetic, reproduced)."""
    bits = FAT_TYPES[fat]
    sectors = -(-size // SECTOR)
    spc = next((n for limit, n in CLUSTER_TABLES[bits] if sectors <= limit), 0)
    if spc == 0:
        return FatLayout(bits, 0, 0)
    root = (ROOT_ENTRIES[bits] * DIRENT + SECTOR - 1) // SECTOR
    reserved = 32 if bits == 32 else 1
    per = 256 * spc + NUMBER_OF_FATS
    if bits == 32:
        per //= 2
    fat_sectors = -(-((size - (reserved + root) + per - 1) // per) // SECTOR)
    data = sectors - reserved - NUMBER_OF_FATS * fat_sectors - root
    return FatLayout(bits, spc, max(data // spc, 0))


def check_size(fat: str, size: int) -> FatLayout:
    """The layout of a ``fat`` volume of ``size`` bytes; a one-line error if none fits."""
    layout = fat_layout(fat, size)
    if not layout.valid:
        fitting = [f for f in FAT_TYPES if fat_layout(f, size).valid]
        hint = f"; use --fs {' or '.join(fitting)}" if fitting else ""
        raise InputError(f"--fs {fat} takes a stick {SIZE_RANGES[fat]} ({CLUSTER_RULES[fat]}); "
                         f"this one has {_human(size)}{hint}")
    return layout


def _human(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.4g} {unit}"
    return f"{size} bytes"


def _entries(name: str) -> int:
    """Directory entries a name takes: one, plus long-name entries (13 characters each)."""
    base, _, ext = name.partition(".")
    short = (name == name.upper() and 0 < len(base) <= 8 and len(ext) <= 3
             and name.count(".") <= 1 and " " not in name)
    return 1 if short else 1 + -(-len(name) // 13)


def space_needed(tree: dict[str, bytes], layout: FatLayout) -> int:
    """Bytes of clusters the workload takes: files, folders, and the rename it does."""
    cluster = layout.cluster_bytes
    children: dict[str, list[str]] = {}
    for path in tree:
        parts = PurePosixPath(path).parts[1:]
        for depth in range(len(parts)):
            parent = "/" + "/".join(parts[:depth])
            name = parts[depth]
            if name not in children.setdefault(parent, []):
                children[parent].append(name)
    names = sorted(p for p, d in tree.items() if d)
    if len(names) >= 2:  # the rename adds its long name beside the old one's entries
        renamed = PurePosixPath(names[0])
        children.setdefault(str(renamed.parent), []).append("renamed-" + renamed.name)
    need = sum(-(-len(data) // cluster) * cluster for data in tree.values())
    for folder, items in children.items():
        entries = sum(_entries(n) for n in items)
        if folder == "/":
            if layout.fat != 32:
                continue  # a fixed root folder; its limit is checked apart
            need += max(-(-entries * DIRENT // cluster) - 1, 0) * cluster
        else:
            need += -(-(entries + 2) * DIRENT // cluster) * cluster  # with "." and ".."
    return need


def check_fits(fat: str, size: int, tree: dict[str, bytes]) -> FatLayout:
    """One line, before anything is written, when the files cannot fit on the stick."""
    layout = check_size(fat, size)
    need, free = space_needed(tree, layout), layout.free_bytes
    if need > free:
        raise InputError(f"the files to copy need {need} bytes as {fat.upper()} with "
                         f"{layout.cluster_bytes}-byte clusters; the stick has {free} free")
    roots = {PurePosixPath(p).parts[1] for p in tree}
    entries = sum(_entries(n) for n in roots) + 1  # and the volume label
    if layout.fat != 32 and entries > ROOT_ENTRIES[layout.fat]:
        raise InputError(f"the files to copy need {entries} entries in the root folder; "
                         f"{fat.upper()} as pyfatfs formats it has {ROOT_ENTRIES[layout.fat]}")
    return layout


class DiskFile(io.RawIOBase):
    """The disk as a seekable binary file, for a file system written for files."""

    def __init__(self, win32: Win32, handle: int, size: int) -> None:
        super().__init__()
        self.win32 = win32
        self.handle = handle
        self.size = size
        self.position = 0
        self.dead = False  # the workload failed: pyfatfs's late unmount writes go nowhere

    def _gone(self) -> bool:
        """After a failure or an interrupt nothing more goes to the stick (pyfatfs still
        tries, from its destructors)."""
        return self.dead or self.win32.kernel.scheduler.halted is not None

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
        if self._gone():
            buffer[:n] = bytes(n)
            self.position += n
            return n
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
        if self._gone():
            self.position += n
            return n
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
        if not self._gone():
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


def _mkfs(disk: DiskFile, fat: str) -> None:
    import pyfatfs.PyFat as pyfat_module  # noqa: N813 - the module, not the class

    # pyfatfs formats a file it opens by name; hand it the disk instead.
    with mock.patch.object(pyfat_module, "open", lambda *a, **k: disk, create=True):
        fs = pyfat_module.PyFat()
        try:
            fs.mkfs("\\\\.\\PhysicalDrive0", FAT_TYPES[fat], size=disk.size,
                    label="USBTRACE")
            fs.close()
        finally:
            fs.initialized = False  # a failed format must not write again when collected


def simulated_size(image: str | None, size: str) -> int:
    """The simulated stick's size before it exists: its image file's, or ``--size``."""
    from usbtrace.devices.image import parse_size

    if image and Path(image).is_file():
        return Path(image).stat().st_size
    return parse_size(size)


def check(fat: str, copy: Iterable[str], size: int | None = None) -> dict[str, bytes]:
    """The options, checked before any session starts; the tree to copy.

    ``size``: the stick's size when it is known before the session (a simulated
    stick); a real device's is checked once it is open, still before writing.
    """
    if fat not in FAT_TYPES:
        raise InputError(f"unknown file system {fat!r}; choose fat12, fat16 or fat32 (no "
                         "Python library writes exFAT)")
    tree = tree_from(copy) if copy else sample_tree()
    if size is not None:
        check_fits(fat, size, tree)
    return tree


class _Mounted:
    """pyfatfs on the disk, closed on the way out; after a failure, dropped unwritten."""

    def __init__(self, disk: DiskFile) -> None:
        from pyfatfs.PyFatFS import PyFatBytesIOFS

        self.fs = PyFatBytesIOFS(disk, lazy_load=False)
        self.fs.tz = datetime.timezone.utc  # PyFatBytesIOFS leaves the time zone unset

    def __enter__(self) -> Any:
        return self.fs

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.fs.close()
        else:  # the disk may be gone or half-written: no unmount writes on top
            self.fs.fs.initialized = False


def _failure(e: BaseException) -> UsbtraceError:
    """The error a user sees when the file system fails: the stack's own if it caused it."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, UsbtraceError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return UsbtraceError(f"the files workload failed: pyfatfs: {type(e).__name__}: {e}")


def files(machine: Machine, fat: str = "fat16", copy: Iterable[str] = ()) -> WorkloadResult:
    tree = check(fat, copy)
    w = machine.win32
    handle = w.CreateFile(DISK_PATH)
    _, size = w.DeviceIoControl(handle, ioctls.IOCTL_DISK_GET_LENGTH_INFO, None, 8)
    check_fits(fat, size, tree)  # the stick's real size: still before anything is written
    disk = DiskFile(w, handle, size)
    try:
        result = _copy_and_check(disk, fat, tree)
    except UsbtraceError:
        disk.dead = True
        raise
    except Exception as e:  # pyfatfs and pyfilesystem2 errors: one line, never a traceback
        disk.dead = True
        raise _failure(e) from e
    except BaseException:  # Ctrl-C: the interrupt goes on as it is
        disk.dead = True
        raise
    w.CloseHandle(handle)
    return result


def _copy_and_check(disk: DiskFile, fat: str, tree: dict[str, bytes]) -> WorkloadResult:
    result = WorkloadResult()
    _mkfs(disk, fat)
    result.notes.append(f"formatted {disk.size // (1 << 20)} MiB as {fat.upper()} with pyfatfs")
    with _Mounted(disk) as fs:
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
    # mount again, so that reads come from the stick and not from pyfatfs's memory
    with _Mounted(disk) as fs:
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
    result.notes.append(f"{len(tree)} files copied, read back, one renamed, one deleted")
    return result
