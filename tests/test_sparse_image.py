"""Sparse images: a stick of any size costs what is written to it; sizes are checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.devices.image import CHUNK, DiskImage, SparseImage, parse_size
from usbtrace.errors import InputError

TIB = 1 << 40


def test_a_1_tib_image_stores_only_written_chunks() -> None:
    image = DiskImage.in_memory(TIB)
    assert isinstance(image, SparseImage) and image.block_count == TIB // 512
    image.write(TIB - 512, b"\x77" * 512)  # the very last block
    image.write(CHUNK - 256, b"\x11" * 512)  # straddles chunks 0 and 1
    assert len(image.chunks) == 3 and image.stored_bytes == 3 * CHUNK
    assert bytes(image.read(TIB - 1024, 1024)) == bytes(512) + b"\x77" * 512
    assert bytes(image.read(CHUNK - 257, 514)) == b"\0" + b"\x11" * 512 + b"\0"
    assert bytes(image.read(5 * CHUNK, 4096)) == bytes(4096)  # a hole reads as zeros


def test_zeros_over_a_hole_store_nothing() -> None:
    image = DiskImage.in_memory(1 << 30)
    image.write(0, bytes(1 << 20))
    assert image.chunks == {}


def test_reads_and_writes_outside_the_image_are_refused() -> None:
    image = DiskImage.in_memory(1 << 20)
    with pytest.raises(IndexError):
        image.read((1 << 20) - 512, 1024)
    with pytest.raises(IndexError):
        image.write(1 << 20, b"x")


def test_view_slices_like_a_memoryview() -> None:
    image = DiskImage.in_memory(1 << 20)
    image.view[512:1024] = b"\x42" * 512
    assert image.view[500:520] == bytes(12) + b"\x42" * 8
    assert len(bytes(image.view)) == 1 << 20


def test_copy_on_write_never_changes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    original = os.urandom(3 * CHUNK + 1024)
    path.write_bytes(original)
    image = DiskImage.copy_on_write(path)
    assert image.size == len(original) and not image.chunks
    assert bytes(image.read(CHUNK - 10, 20)) == original[CHUNK - 10 : CHUNK + 10]
    image.write(CHUNK + 100, b"\xEE" * 50)
    assert len(image.chunks) == 1
    assert bytes(image.read(CHUNK, 200)) == original[CHUNK : CHUNK + 100] + b"\xEE" * 50 + \
        original[CHUNK + 150 : CHUNK + 200]
    # the tail chunk is partial in the file: it reads as the file, then nothing past it
    assert bytes(image.read(3 * CHUNK, 1024)) == original[3 * CHUNK :]
    image.close()
    assert path.read_bytes() == original


def test_image_files_are_created_sparse(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    image = DiskImage.open(path, create_size=1 << 40)
    image.write(0, b"\x01" * 512)
    image.close()
    assert path.stat().st_size == 1 << 40
    assert path.stat().st_blocks * 512 < 64 << 20  # a hole, not a terabyte of zeros


@pytest.mark.parametrize("text, size", [("64K", 64 << 10), ("1T", TIB), ("4096K", 4 << 20),
                                        ("1GiB", 1 << 30), ("4E", 1 << 62)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text, why", [
    ("0", "at least 64K"), ("-5", "whole number"), ("1000", "multiple of 512"),
    ("1.5G", "whole number"), ("8E", "at most 4E"), ("99999999999999999999999", "at most 4E"),
    ("", "whole number"), ("12Q", "whole number"),
])
def test_nonsense_sizes_are_refused(text: str, why: str) -> None:
    with pytest.raises(InputError, match=why):
        parse_size(text)


def test_record_on_a_1_tib_stick(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["record", "--db", str(tmp_path / "u.db"), "--size", "1T"])
    assert result.exit_code == 0, result.output
    assert "1099511627776 bytes" in result.stdout and "read back equals written" in result.stdout


def test_record_refuses_an_absurd_size_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["record", "--db", str(tmp_path / "u.db"), "--size", "64E"])
    assert result.exit_code == 2
    assert result.stderr == "usbtrace: error: bad size '64E': at most 4E\n"
