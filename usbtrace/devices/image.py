"""The medium behind a simulated stick: a disk image file, or sparse blocks in memory.

A file is memory-mapped so that a READ copies straight from the page cache
into the IRP's buffer; writes land in the file, which is created sparse.  A
stick in memory keeps only the 64 KiB chunks that were written (unwritten
blocks read as zeros), so a 1 TiB stick costs what was written to it, not
1 TiB of RAM.  A sparse image may sit over a read-only file: reads fall through
to the file, writes stay in memory (copy-on-write), so host replay can start
from an image without reading it whole or ever changing it.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path
from typing import BinaryIO

from usbtrace.errors import InputError

BLOCK_SIZE = 512
CHUNK = 64 * 1024  # the unit a sparse image allocates
MIN_SIZE = 64 * 1024
# bytes: READ CAPACITY(16) could count more, but a database stores sizes and offsets as
# signed 64-bit integers (SQLite's INTEGER), and 4 EiB is already absurd for a stick
MAX_SIZE = 1 << 62
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGTPE]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50,
          "E": 1 << 60}
_ZEROS = bytes(CHUNK)


def parse_size(text: str) -> int:
    """'64M', '1G', '1T', '4096' -> bytes: a whole number of 512-byte blocks from 64K up to
    4 EiB.  Anything else is an :class:`InputError` of one line."""
    match = _SIZE.match(text)
    if not match:
        raise InputError(f"bad size {text!r}: use a whole number with an optional K, M, G, T, "
                         "P or E, e.g. 64M")
    size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if size > MAX_SIZE:
        raise InputError(f"bad size {text!r}: at most 4E")
    if size % BLOCK_SIZE:
        raise InputError(f"bad size {text!r}: must be a multiple of {BLOCK_SIZE} bytes")
    if size < MIN_SIZE:
        raise InputError(f"bad size {text!r}: a stick must be at least 64K")
    return size


class DiskImage:
    """Blocks of a medium, read and written by byte offset.

    ``view`` supports slicing (``view[a:b]`` and ``view[a:b] = data``) on every kind
    of image, for tests and tools that poke at the medium directly.
    """

    path: Path | None = None

    def __init__(self, size: int) -> None:
        self.size = size
        self.block_size = BLOCK_SIZE
        self.block_count = size // BLOCK_SIZE

    @property
    def view(self) -> memoryview | SparseView:
        raise NotImplementedError

    def read(self, offset: int, length: int) -> bytes | memoryview:
        """``length`` bytes from ``offset`` (within the image)."""
        raise NotImplementedError

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``offset`` (within the image)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the memory or the file."""

    @classmethod
    def in_memory(cls, size: int) -> SparseImage:
        """A blank medium of ``size`` bytes that costs only what is written to it."""
        return SparseImage(size)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> SparseImage:
        image = SparseImage(len(data))
        image.write(0, data)
        return image

    @classmethod
    def copy_on_write(cls, path: str | os.PathLike[str]) -> SparseImage:
        """A medium that starts as the image file at ``path``; the file is never written."""
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not a disk image")
        try:
            stream = open(p, "rb")
        except OSError as e:
            raise InputError(f"{p}: cannot open image: {e.strerror}") from None
        size = os.fstat(stream.fileno()).st_size
        if size < BLOCK_SIZE or size % BLOCK_SIZE:
            stream.close()
            raise InputError(f"{p}: image size {size} is not a whole number of 512-byte blocks")
        return SparseImage(size, base=stream)

    @classmethod
    def open(cls, path: str | os.PathLike[str], create_size: int | None = None) -> MappedImage:
        """Map an image file read-write; create it (sparse) at ``create_size`` if missing."""
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not a disk image")
        if not p.exists():
            if create_size is None:
                raise InputError(f"{p}: no such image file (give --size to create one)")
            try:
                with open(p, "wb") as f:
                    f.truncate(create_size)  # a hole, not zeros: no disk space, no time
            except (OSError, OverflowError) as e:
                p.unlink(missing_ok=True)
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise InputError(f"{p}: cannot create a {create_size}-byte image: "
                                 f"{reason}") from None
        try:
            size = p.stat().st_size
            if size == 0 or size % BLOCK_SIZE:
                raise InputError(f"{p}: image size {size} is not a whole number of 512-byte "
                                 "blocks")
            with open(p, "r+b") as stream:
                mapped = mmap.mmap(stream.fileno(), size)
        except (OSError, OverflowError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InputError(f"{p}: cannot open image: {reason}") from None
        return MappedImage(mapped, p)


class MappedImage(DiskImage):
    """An image file, memory-mapped read-write."""

    def __init__(self, mapped: mmap.mmap, path: Path) -> None:
        super().__init__(len(mapped))
        self.path = path
        self._mapped = mapped
        self._view = memoryview(mapped)

    @property
    def view(self) -> memoryview:
        return self._view

    def read(self, offset: int, length: int) -> memoryview:
        return self._view[offset : offset + length]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._view[offset : offset + len(data)] = data

    def close(self) -> None:
        self._view.release()
        self._mapped.flush()
        self._mapped.close()


class SparseImage(DiskImage):
    """Only written chunks are stored (chunk index -> 64 KiB bytearray); the rest read as
    zeros, or as ``base``, a read-only file underneath."""

    def __init__(self, size: int, base: BinaryIO | None = None) -> None:
        if size < 0 or size % BLOCK_SIZE:
            raise InputError(f"image size {size} is not a whole number of 512-byte blocks")
        super().__init__(size)
        self.chunks: dict[int, bytearray] = {}
        self._base = base
        self._view = SparseView(self)

    @property
    def view(self) -> SparseView:
        return self._view

    def _bounds(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise IndexError(f"bytes {offset}..{offset + length} are outside a "
                             f"{self.size}-byte image")

    def _underneath(self, index: int) -> bytes:
        """Chunk ``index`` as it was before any write: zeros, or the base file's bytes."""
        if self._base is None:
            return _ZEROS
        self._base.seek(index * CHUNK)
        data = self._base.read(CHUNK)
        return data + bytes(CHUNK - len(data)) if len(data) < CHUNK else data

    def read(self, offset: int, length: int) -> bytes | memoryview:
        if offset < 0 or length < 0 or offset + length > self.size:  # _bounds, inline
            self._bounds(offset, length)
        index, start = divmod(offset, CHUNK)
        if start + length <= CHUNK:  # the common case: one chunk
            chunk = self.chunks.get(index)
            if chunk is not None:
                return memoryview(chunk)[start : start + length]
            if self._base is None:
                return _ZEROS[start : start + length] if length < CHUNK else _ZEROS
        out = bytearray(length)
        pos = 0
        while pos < length:
            index, start = divmod(offset + pos, CHUNK)
            n = min(CHUNK - start, length - pos)
            chunk = self.chunks.get(index)
            if chunk is not None:
                out[pos : pos + n] = memoryview(chunk)[start : start + n]
            elif self._base is not None:
                out[pos : pos + n] = self._underneath(index)[start : start + n]
            pos += n
        return bytes(out)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        source = memoryview(data).cast("B")
        length = len(source)
        if offset < 0 or length < 0 or offset + length > self.size:  # _bounds, inline
            self._bounds(offset, length)
        index, start = divmod(offset, CHUNK)
        if start + length <= CHUNK:  # the common case: into one chunk already stored
            chunk = self.chunks.get(index)
            if chunk is not None:
                chunk[start : start + length] = source
                return
        pos = 0
        while pos < length:
            index, start = divmod(offset + pos, CHUNK)
            n = min(CHUNK - start, length - pos)
            piece = source[pos : pos + n]
            chunk = self.chunks.get(index)
            if chunk is None:
                if self._base is None and piece.tobytes() == _ZEROS[:n]:
                    pos += n  # zeros over a hole: nothing to store
                    continue
                chunk = self.chunks[index] = bytearray(self._underneath(index))
            chunk[start : start + n] = piece
            pos += n

    @property
    def stored_bytes(self) -> int:
        """Memory the image's data takes: the chunks written so far."""
        return len(self.chunks) * CHUNK

    def close(self) -> None:
        if self._base is not None:
            self._base.close()
            self._base = None


class SparseView:
    """Slicing over a sparse image, like a memoryview over a flat one."""

    def __init__(self, image: SparseImage) -> None:
        self._image = image

    def __len__(self) -> int:
        return self._image.size

    def _range(self, key: slice) -> tuple[int, int]:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a sparse image is sliced with [start:stop]")
        start, stop, _ = key.indices(self._image.size)
        return start, max(stop - start, 0)

    def __getitem__(self, key: slice) -> bytes:
        start, length = self._range(key)
        return bytes(self._image.read(start, length))

    def __setitem__(self, key: slice, data: bytes | bytearray | memoryview) -> None:
        start, length = self._range(key)
        if len(data) != length:
            raise ValueError(f"{len(data)} bytes do not fit a {length}-byte slice")
        self._image.write(start, data)

    def __bytes__(self) -> bytes:
        return self[:]
