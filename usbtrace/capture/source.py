"""Where a capture's bytes come from: a file or standard input, plain or gzip.

A capture tool writing into a pipe (``dumpcap -w -``, ``USBPcapCMD -o -``) sends
records as they happen, with long pauses on a quiet bus.  ``Tap`` therefore hands
over what is there instead of waiting for a full buffer; while it waits it lets
the importer commit what it holds (``idle``) and gives up when Ctrl-C asks
(``stop``).  It hashes the bytes as they pass, since a stream cannot be read twice.

gzip is told by its magic number (1f 8b, RFC 1952), not by the name, and is
decompressed as it streams: never to disk, never whole into memory.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import select
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from usbtrace.capture.reader import SourceError

GZIP_MAGIC = b"\x1f\x8b"
POLL = 0.2  # seconds between looks at ``stop`` while the input is quiet


def sha256_of(path: Path) -> str:
    """A file's SHA-256, as stored (compressed or not), read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Tap:
    """A readable that returns what its source has now (``read1`` semantics), counts and
    hashes what passed, and can wait for input without blocking Ctrl-C."""

    def __init__(self, source: BinaryIO | int, digest: bool = False) -> None:
        """``source``: a descriptor (standard input, a pipe: polled on POSIX, so a quiet
        input can be waited on) or a binary file object (read through ``read1``)."""
        self._fd: int | None = None
        self._read: Callable[[int], bytes]
        if isinstance(source, int):
            fd = source
            self._fd = fd if os.name == "posix" else None
            self._read = lambda n: os.read(fd, n)
        else:
            read1 = getattr(source, "read1", None)
            self._read = read1 if callable(read1) else source.read
        self._pushed = b""
        self.bytes_read = 0
        self.at_end = False  # the source said it has no more
        self.sha256 = hashlib.sha256() if digest else None
        self.idle: Callable[[], None] | None = None  # called before waiting for input
        self.stop: Callable[[], bool] = lambda: False  # true: stop waiting (Ctrl-C)

    def read1(self, n: int = -1) -> bytes:
        if self._pushed:
            cut = len(self._pushed) if n < 0 else n
            data, self._pushed = self._pushed[:cut], self._pushed[cut:]
            return data
        if n < 0:
            n = 1 << 16
        if self._fd is not None:
            self._wait()
        data = self._read(n)
        if not data:
            self.at_end = True
        self.bytes_read += len(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        return data

    read = read1  # gzip reads short and asks again: no need to fill the request

    def _wait(self) -> None:
        """Return when input (or its end) is there; commit first if none is."""
        assert self._fd is not None
        if select.select([self._fd], [], [], 0)[0]:
            return
        if self.idle is not None:
            self.idle()
        while not select.select([self._fd], [], [], POLL)[0]:
            if self.stop():
                raise KeyboardInterrupt  # no record is half-read: the session closes whole

    def peek_magic(self) -> bytes:
        """The first two bytes (fewer only if the input is shorter), pushed back."""
        head = b""
        while len(head) < 2 and (part := self.read1(2 - len(head))):
            head += part
        self._pushed = head + self._pushed
        return head

    def hexdigest(self) -> str | None:
        """The SHA-256 of the whole input, once it has all been read; None before (a
        hash of part of it would name bytes nobody has)."""
        if self.sha256 is None or not self.at_end:
            return None
        return self.sha256.hexdigest()


class Gunzip:
    """The decompressed bytes of a gzip stream, read as they come; a corrupt or cut
    stream raises ``SourceError`` after what came before it."""

    def __init__(self, tap: Tap) -> None:
        self._file = gzip.GzipFile(fileobj=tap, mode="rb")  # type: ignore[call-overload]

    def read1(self, n: int = -1) -> bytes:
        try:
            return self._file.read1(n)
        except EOFError:
            raise SourceError("the gzip stream ends before its end marker (cut short)") \
                from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise SourceError(f"the gzip stream is corrupt: {e}") from None

    read = read1

    def verify(self) -> None:
        """Read to the end of the gzip stream: its checksums are at the end, and a
        capture whose framing stopped early (damage inside) still says whether the
        gzip is whole.  Work bounded by the bytes stored."""
        while self.read1(1 << 16):
            pass


def capture_stream(tap: Tap) -> BinaryIO:
    """The capture inside: gunzipped when the bytes say gzip."""
    if tap.peek_magic() == GZIP_MAGIC:
        return Gunzip(tap)  # type: ignore[return-value]
    return tap  # type: ignore[return-value]


def standard_input() -> BinaryIO | int:
    """Standard input as the importer reads it: its descriptor where it can be polled
    (POSIX), else its binary buffer, whose ``read1`` returns what is there."""
    if os.name == "posix":
        return sys.stdin.fileno()
    return sys.stdin.buffer
