"""A small GPT writer for the tests, built from UEFI 2.x chapter 5, not from the decoder.

It writes what §5.2.3 and §5.3 lay down: a protective MBR at LBA 0, the primary
header at LBA 1 with its entry array from LBA 2, and the backup entry array and
header at the end of the disk, each header with its CRC32s.  File systems are
written by the tests themselves (pyfatfs, mkfs.ext4 or a bare signature).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
BASIC_DATA = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
SGDISK = shutil.which("sgdisk")
MKFS_EXT4 = shutil.which("mkfs.ext4")


@dataclass
class Part:
    first: int
    last: int  # inclusive, as EndingLBA
    type_guid: str
    name: str


def protective_mbr(disk_sectors: int) -> bytes:
    record = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                         min(disk_sectors - 1, 0xFFFFFFFF))
    return bytes(440) + bytes(4) + bytes(2) + record + bytes(48) + b"\x55\xaa"


def entry_array(parts: list[Part], count: int, size: int) -> bytes:
    out = bytearray(count * size)
    for i, p in enumerate(parts):
        name = p.name.encode("utf-16-le")[:72].ljust(72, b"\0")
        raw = (uuid.UUID(p.type_guid).bytes_le + uuid.uuid4().bytes_le +
               struct.pack("<QQQ", p.first, p.last, 0) + name)
        out[i * size : i * size + 128] = raw
    return bytes(out)


def header(my_lba: int, alternate: int, first_usable: int, last_usable: int, entry_lba: int,
           count: int, size: int, array_crc: int, disk_guid: bytes,
           header_size: int = 92) -> bytes:
    body = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x00010000, header_size,
                                 0, 0, my_lba, alternate, first_usable, last_usable, disk_guid,
                                 entry_lba, count, size, array_crc).ljust(SECTOR, b"\0"))
    struct.pack_into("<I", body, 16, zlib.crc32(bytes(body[:header_size])))
    return bytes(body)


def gpt_sectors(disk_sectors: int, parts: list[Part], count: int = 128, size: int = 128
                ) -> dict[int, bytes]:
    """LBA -> content of every sector the partition table occupies."""
    array = entry_array(parts, count, size)
    array_sectors = -(-len(array) // SECTOR)
    array = array.ljust(array_sectors * SECTOR, b"\0")
    last = disk_sectors - 1
    first_usable, last_usable = 2 + array_sectors, last - 1 - array_sectors
    crc = zlib.crc32(array[: count * size])
    guid = uuid.uuid4().bytes_le
    out = {0: protective_mbr(disk_sectors),
           1: header(1, last, first_usable, last_usable, 2, count, size, crc, guid),
           last: header(last, 1, first_usable, last_usable, last_usable + 1, count, size, crc,
                        guid)}
    for i in range(array_sectors):
        out[2 + i] = out[last_usable + 1 + i] = array[i * SECTOR : (i + 1) * SECTOR]
    return out


def write_gpt(path: Path, disk_sectors: int, parts: list[Part], use_sgdisk: bool) -> None:
    """A GPT on the image at ``path``: by sgdisk when asked, else by the writer above."""
    with open(path, "r+b") as f:
        if use_sgdisk:
            assert SGDISK is not None
            args = [SGDISK]
            codes = {BASIC_DATA: "0700", LINUX_FS: "8300"}
            for n, p in enumerate(parts, 1):
                args += [f"-n{n}:{p.first}:{p.last}", f"-t{n}:{codes[p.type_guid]}",
                         f"-c{n}:{p.name}"]
            subprocess.run([*args, str(path)], check=True, capture_output=True)
            return
        for lba, sector in gpt_sectors(disk_sectors, parts).items():
            f.seek(lba * SECTOR)
            f.write(sector)


def ext4_superblock() -> bytes:
    """The 1024 bytes at byte 1024 of an ext4 file system, as far as a reader needs them:
    s_log_block_size 2 (4 KiB blocks), s_magic 0xEF53, s_rev_level 1, extents and
    flex_bg in s_feature_incompat, has_journal in s_feature_compat."""
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 24, 2)
    struct.pack_into("<H", sb, 56, 0xEF53)
    struct.pack_into("<I", sb, 76, 1)
    struct.pack_into("<III", sb, 92, 0x4, 0x40 | 0x200, 0)
    return bytes(sb)
