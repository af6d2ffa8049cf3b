"""The medium behind a simulated stick: a disk image file or a buffer in memory.

A file is memory-mapped so that a READ copies straight from the page cache
into the IRP's buffer; writes land in the file.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

from usbtrace.errors import InputError

BLOCK_SIZE = 512
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'64M', '1G', '4096' -> bytes; a whole number of 512-byte blocks, at least 64 KiB."""
    match = _SIZE.match(text)
    if not match:
        raise InputError(f"bad size {text!r}: use a number with an optional K, M, G or T, e.g. 64M")
    size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if size % BLOCK_SIZE:
        raise InputError(f"bad size {text!r}: must be a multiple of {BLOCK_SIZE} bytes")
    if size < 64 * 1024:
        raise InputError(f"bad size {text!r}: a stick must be at least 64K")
    if size > 1 << 40:
        raise InputError(f"bad size {text!r}: at most 1T")
    return size


class DiskImage:
    """Blocks of a medium; ``view`` is a writable memoryview over all of it."""

    def __init__(self, view: memoryview, path: Path | None, owner: object) -> None:
        self.view = view
        self.path = path
        self.size = len(view)
        self.block_size = BLOCK_SIZE
        self.block_count = self.size // BLOCK_SIZE
        self._owner = owner

    @classmethod
    def in_memory(cls, size: int) -> DiskImage:
        buffer = bytearray(size)
        return cls(memoryview(buffer), None, buffer)

    @classmethod
    def from_bytes(cls, data: bytes) -> DiskImage:
        buffer = bytearray(data)
        return cls(memoryview(buffer), None, buffer)

    @classmethod
    def open(cls, path: str | os.PathLike[str], create_size: int | None = None) -> DiskImage:
        """Map an image file read-write; create it at ``create_size`` if it is missing."""
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not a disk image")
        if not p.exists():
            if create_size is None:
                raise InputError(f"{p}: no such image file (give --size to create one)")
            try:
                with open(p, "wb") as f:
                    f.truncate(create_size)
            except OSError as e:
                raise InputError(f"{p}: cannot create image: {e.strerror}") from None
        size = p.stat().st_size
        if size == 0 or size % BLOCK_SIZE:
            raise InputError(f"{p}: image size {size} is not a whole number of 512-byte blocks")
        try:
            stream = open(p, "r+b")
        except OSError as e:
            raise InputError(f"{p}: cannot open image: {e.strerror}") from None
        with stream:
            mapped = mmap.mmap(stream.fileno(), size)
        return cls(memoryview(mapped), p, mapped)

    def close(self) -> None:
        self.view.release()
        if isinstance(self._owner, mmap.mmap):
            self._owner.flush()
            self._owner.close()
