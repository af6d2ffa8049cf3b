"""Big files through the modelled Windows stack: every byte of each file attributed to its
path, although pyfatfs writes all of a file's data before its FAT and directory entry
(thousands of commands: far past the attribution window)."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from pathlib import Path

import pytest

from usbtrace.recording import RecordOptions, record

from .fileactivity import rebuild

MB = 1 << 20


def copy_and_rebuild(tmp_path: Path, fs: str, size: str,
                     files: dict[str, int]) -> tuple[dict[str, bytes], sqlite3.Connection, list]:
    """Record the files workload copying ``files`` (name -> bytes); what the log rebuilds."""
    source = tmp_path / "source"
    source.mkdir()
    for name, length in files.items():
        (source / name).write_bytes(random.Random(name).randbytes(length))
    db = tmp_path / "big.db"
    summary = record(RecordOptions(db=str(db), size=size, workload="files", fs=fs,
                                   copy=tuple(str(source / n) for n in files)))
    assert summary.workload.ok
    conn = sqlite3.connect(db)
    written = {path: bytes(data) for path, data in rebuild(conn, 1, "write").items()}
    return written, conn, summary.workload.operations


# (file system, stick size): FAT32 on 512 MiB has 4 KiB clusters (on 64 MiB, 512-byte ones:
# eight times the commands for the same bytes)
CASES = [("fat12", "64M"), ("fat16", "64M"), ("fat32", "512M")]


@pytest.mark.parametrize(("fs", "size"), CASES)
def test_every_byte_of_1_and_30_mb_files_goes_to_its_path(tmp_path: Path, fs: str,
                                                          size: str) -> None:
    # the 1 MB file sorts first: the workload renames it (pyfatfs copies, then deletes)
    # and deletes the 30 MB one
    written, conn, operations = copy_and_rebuild(tmp_path, fs, size,
                                                 {"a1.bin": MB, "b30.bin": 30 * MB})
    writes = [op for op in operations if op.operation == "write" and op.size]
    assert {op.path for op in writes} >= {"/a1.bin", "/b30.bin"}
    for op in writes:
        data = written[op.path]
        assert len(data) == op.size and hashlib.sha256(data).hexdigest() == op.sha256, \
            op.path
    unresolved = conn.execute("SELECT count(*), sum(length) FROM file_activity WHERE "
                              "operation = 'write' AND kind = 'unallocated'").fetchone()
    assert unresolved == (0, None)
    events = conn.execute("SELECT operation, path FROM file_activity WHERE kind = 'event'"
                          ).fetchall()
    assert ("deleted", "/b30.bin") in events and ("deleted", "/a1.bin") in events
    assert ("created", "/renamed-a1.bin") in events  # a copy: new clusters, not a rename
