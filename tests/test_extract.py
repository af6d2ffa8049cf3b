"""usbtrace extract: the files of the shared FAT16 run come back with the truth's sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.analysis.extract import Ranges, Renames, safe_relative, slice_segments
from usbtrace.cli import main
from usbtrace.errors import InputError
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .conftest import shared_capture


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def truth_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    db = tmp_path_factory.mktemp("extract") / "t.db"
    database = Database(db)
    import_capture(database, shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"))
    import_capture(database, shared_capture("ctfs__fore2.pcap"))
    database.close()
    truth = json.loads(shared_capture("linux-qemu-fat16-xhci.truth.json").read_text())
    return str(db), truth


def final_name(path: str, truth: dict) -> str:
    for op in truth["operations"]:
        if op["op"] == "rename" and op["path"] == path:
            path = op["new_path"]
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_file_written_or_read_has_the_truth_sha256(truth_db: tuple[str, dict],
                                                         tmp_path: Path) -> None:
    db, truth = truth_db
    out = tmp_path / "x"
    code, stdout, err = invoke("extract", "1", "--db", db, "-o", str(out))
    assert code == 0, err
    manifest = {f["path"]: f for f in json.loads((out / "manifest.json").read_text())["files"]}
    finals = {f["path"]: f for f in truth["final_files"]}
    checked = set()
    for op in truth["operations"]:
        if op["op"] not in ("write", "read", "append"):
            continue
        name = final_name(op["path"], truth)
        expected = finals[name]["sha256"] if name in finals else op["sha256"]
        extracted = out / "files" / name.lstrip("/")
        assert sha(extracted) == expected, name
        assert manifest[name]["sha256"] == expected and manifest[name]["complete"], name
        checked.add(name)
    assert set(finals) <= checked  # every file that is left, renamed ones by final name
    assert manifest["/README.TXT"]["deleted"]
    assert manifest["/big-renamed.bin"]["earlier_names"] == ["/big.bin"]
    assert not (out / "files" / "big.bin").exists()
    sums = (out / "SHA256SUMS").read_text().splitlines()
    for line in sums:
        digest, name = line.split("  ", 1)
        assert sha(out / name) == digest


def test_lba_range_is_written_raw(truth_db: tuple[str, dict], tmp_path: Path) -> None:
    db, truth = truth_db
    extents = [op for op in truth["operations"] if op["op"] == "extents"][-1]["extents"]
    (medium,) = extents["/docs/medium.bin"]
    first, last = medium["lba"], medium["lba"] + medium["sectors"] - 1
    out = tmp_path / "x"
    code, _, err = invoke("extract", "1", "--db", db, "-o", str(out), "--lba",
                          f"{first}-{last}")
    assert code == 0, err
    raw = out / f"sectors-{first}-{last}.bin"
    expected = next(f["sha256"] for f in truth["final_files"]
                    if f["path"] == "/docs/medium.bin")
    assert sha(raw) == expected
    # the files filtered to the range: medium.bin alone
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["/docs/medium.bin"]
    assert manifest["files"][0]["complete"] and manifest["files"][0]["sha256"] == expected
    assert manifest["sectors"][0]["complete"]


def test_truncated_capture_leaves_holes_it_names(truth_db: tuple[str, dict],
                                                 tmp_path: Path) -> None:
    db, _ = truth_db
    # fore2: a 472-block WRITE(10) at 273056 of which usbmon kept 61440 bytes (120 blocks)
    out = tmp_path / "x"
    code, _, err = invoke("extract", "2", "--db", db, "-o", str(out), "--lba",
                          "273056-273527")
    assert code == 0, err
    (sectors,) = json.loads((out / "manifest.json").read_text())["sectors"]
    assert not sectors["complete"] and sectors["truncated_in_capture"]
    assert sectors["unknown_lbas"] == [[273056 + 120, 273527]]
    data = (out / "sectors-273056-273527.bin").read_bytes()
    assert len(data) == 472 * 512 and any(data[: 120 * 512])


def test_file_filter_and_outputs(truth_db: tuple[str, dict], tmp_path: Path) -> None:
    db, _ = truth_db
    out = tmp_path / "x"
    code, _, err = invoke("extract", "1", "--db", db, "-o", str(out), "--file", "/docs/*")
    assert code == 0, err
    names = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert names == {"/docs/medium.bin", "/docs/nested-moved.txt"}
    code, _, err = invoke("extract", "1", "--db", db, "-o", str(out))
    assert code == 2 and "--force" in err and err.count("\n") == 1
    code, _, err = invoke("extract", "1", "--db", db, "-o", str(out), "--force")
    assert code == 0 and len(json.loads((out / "manifest.json").read_text())["files"]) == 6
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, err = invoke("extract", "1", "--db", db, "-o", str(other), "--force")
    assert code == 2 and "not an earlier extract" in err
    assert (other / "keep.txt").read_text() == "mine"
    code, _, err = invoke("extract", "1", "--db", db, "-o", str(tmp_path / "y"), "--lba", "5-")
    assert code == 2 and "both ends" in err and not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".part", ".old"))]


def test_pieces() -> None:
    r = Ranges()
    for start, end in [(0, 10), (20, 30), (5, 12), (28, 40)]:
        r.add(start, end)
    assert r.holes(50) == [(12, 20), (40, 50)] and r.known(50) == 32
    segments = [(0, b"abcd"), (10, b"klmn")]  # bytes 4..9 cut from the capture
    assert list(slice_segments(segments, 2, 10)) == [(0, b"cd"), (8, b"kl")]
    renames = Renames([(5, "/a", "/b"), (9, "/b", "/c")], [(1, "/a"), (12, "/a")])
    assert renames.final("/a", 3) == "/c" and renames.final("/a", 13) == "/a"
    with pytest.raises(InputError):
        safe_relative("/docs/../../etc/passwd")
    assert str(safe_relative("/docs/x.txt")) == "docs/x.txt"
