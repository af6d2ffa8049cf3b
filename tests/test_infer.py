"""Attribution without the boot sector: the geometry inferred from what the capture shows."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
from pathlib import Path

import pytest

from usbtrace.fs.infer import dir_sector, fat_first_kinds, fat_index
from usbtrace.fs.shadow import Attributor
from usbtrace.importing import import_capture
from usbtrace.recording import RecordOptions, record
from usbtrace.store.database import Database

from .conftest import shared_capture
from .cutcapture import cut
from .fileactivity import rebuild


def _import(capture: Path, db: Path) -> tuple[sqlite3.Connection, str]:
    import_capture(Database(db), capture)
    conn = sqlite3.connect(db)
    notes = conn.execute("SELECT notes FROM sessions WHERE id = 1").fetchone()[0] or ""
    return conn, notes


def _truth_written(conn: sqlite3.Connection) -> None:
    """Every file the truth run wrote is named, with its size, and rebuilds its sha256."""
    truth = json.loads(shared_capture("linux-qemu-fat16-xhci.truth.json").read_text())
    renames = {op["path"]: op["new_path"] for op in truth["operations"] if op["op"] == "rename"}
    finals = {f["path"]: f for f in truth["final_files"]}
    written = rebuild(conn, 1, "write")
    checked = 0
    for op in truth["operations"]:
        if op["op"] != "write" or not op["bytes"]:
            continue
        name = renames.get(op["path"], op["path"])
        size, sha = (finals[name]["size"], finals[name]["sha256"]) if name in finals else \
            (op["bytes"], op["sha256"])
        data = bytes(written[name])
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha), name
        checked += 1
    assert checked == 5
    assert set(written) <= set(finals) | {op["path"] for op in truth["operations"]
                                          if "path" in op}


def test_truth_capture_cut_at_its_first_write(tmp_path: Path) -> None:
    """The acceptance case: everything before the first WRITE(10) removed (that write is
    Linux marking the boot sector dirty, so the boot sector itself is on the wire)."""
    capture = tmp_path / "cut.pcap"
    cut(shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"), capture)
    conn, _ = _import(capture, tmp_path / "t.db")
    _truth_written(conn)


def test_truth_capture_with_no_boot_sector_at_all(tmp_path: Path) -> None:
    """Cut at the first WRITE and every command on LBA 0 left out: nothing on the wire
    names the geometry, yet it is inferred, and every written file rebuilds."""
    capture = tmp_path / "blind.pcap"
    cut(shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"), capture,
        skip_lbas=frozenset({0}))
    conn, notes = _import(capture, tmp_path / "t.db")
    assert conn.execute("SELECT count(*) FROM file_activity WHERE lba = 0").fetchone() == (0,)
    _truth_written(conn)
    # the geometry of the truth image (mkfs.fat: 4 reserved sectors, 2 FATs of 128
    # sectors, 512 root entries, 2 KiB clusters), with the evidence for each number
    assert "FAT16 geometry inferred" in notes
    assert "FAT at LBA 4, 2 x 128 sectors" in notes
    assert "root directory at LBA 260, 32 sectors" in notes
    assert "cluster 2 at LBA 292" in notes and "2048-byte clusters" in notes
    assert '"." of cluster 3 at LBA 296' in notes
    assert "a FAT's first sector at LBA 132" in notes
    assert "boot sector start is not known" in notes
    # every row of the volume says it rests on an inferred geometry
    details = conn.execute("SELECT DISTINCT detail FROM file_activity WHERE kind IN "
                           "('data', 'directory', 'fat')").fetchall()
    assert details and all("inferred" in (d or "") for (d,) in details)
    # the rename's detail stays readable
    assert conn.execute("SELECT detail FROM file_activity WHERE operation = 'renamed'"
                        ).fetchall() == [("from /big.bin",)]


def test_a_late_boot_sector_checks_the_inference(tmp_path: Path) -> None:
    """Cut after the first WRITE: the boot sector shows only at unmount.  The window's
    commands are attributed again from it, and the notes compare it with the inference."""
    capture = tmp_path / "late.pcap"
    cut(shared_capture("linux-qemu-fat16-xhci.usbmon.pcap"), capture, nth_write=2)
    conn, notes = _import(capture, tmp_path / "t.db")
    _truth_written(conn)
    assert "a boot sector for LBA 0 was seen later: it agrees with the geometry " \
        "inferred" in notes
    assert conn.execute("SELECT count(*) FROM file_activity WHERE detail LIKE '%inferred%'"
                        ).fetchone() == (0,)


def test_a_mounted_stick_capture_alone_names_its_new_file(tmp_path: Path) -> None:
    """The Wireshark sample that starts with the stick mounted: its geometry is that of
    the boot sector in the sample before it (FAT at 33, root at 545, cluster 2 at 577)."""
    conn, notes = _import(shared_capture("ajbanjara__usb_memory_stick_create_file.pcap"),
                          tmp_path / "t.db")
    assert "FAT at LBA 33, 2 x 256 sectors" in notes
    assert "root directory at LBA 545, 32 sectors; cluster 2 at LBA 577" in notes
    assert "NEWFIL~1 (cluster 3) at LBA 581" in notes
    data = bytes(rebuild(conn, 1, "write")["/new file"])
    assert len(data) == 4320 and data.startswith(b"this is a test on a text file")
    # the log and the files table say that the names rest on an inferred geometry
    from click.testing import CliRunner

    from usbtrace.cli import main
    log = CliRunner().invoke(main, ["log", "1", "--db", str(tmp_path / "t.db")])
    assert "/new file @0 (inferred)" in log.output
    files = CliRunner().invoke(main, ["files", "1", "--db", str(tmp_path / "t.db")])
    assert "inferred: 2 paths are named from a FAT geometry inferred" in files.output


def test_fat32_recorded_then_cut_after_the_mount(tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    summary = record(RecordOptions(db=str(db), size="64M", workload="files", fs="fat32"))
    assert summary.workload.ok
    conn = sqlite3.connect(db)
    # the first write into the data region (past the FATs) is where the files start
    first = conn.execute("SELECT min(scsi_seq) FROM file_activity WHERE operation='write' "
                         "AND kind IN ('directory', 'data') AND session_id = 1").fetchone()[0]
    nth = conn.execute("SELECT count(*) FROM scsi_commands WHERE session_id = 1 AND "
                       "name = 'write_10' AND seq <= ?", (first,)).fetchone()[0]
    exported = tmp_path / "full.pcapng"
    from click.testing import CliRunner

    from usbtrace.cli import main
    result = CliRunner().invoke(main, ["export", "1", "--db", str(db), "-o", str(exported),
                                       "--linktype", "usbmon"])
    assert result.exit_code == 0, result.output
    capture = tmp_path / "cut.pcapng"
    # pyfatfs reads and writes the boot sector and its backup at every change: leave
    # them out, and FSInfo with them, so that nothing but FATs and directories is left
    cut(exported, capture, nth_write=nth, skip_lbas=frozenset({0, 1, 6, 7}))
    blind, notes = _import(capture, tmp_path / "cut.db")
    assert "FAT32 geometry inferred" in notes
    assert "FAT at LBA 32, 2 x 1017 sectors" in notes and "cluster 2 at LBA 2066" in notes
    assert "root directory at cluster 2 (LBA 2066 holds the volume label" in notes
    written = rebuild(blind, 1, "write")
    checked = 0
    for op in summary.workload.operations:
        if op.operation == "write" and op.size:
            assert hashlib.sha256(bytes(written[op.path])).hexdigest() == op.sha256, op.path
            checked += 1
    assert checked >= 4
    assert blind.execute("SELECT count(*) FROM file_activity WHERE kind = 'data' AND "
                         "detail NOT LIKE '%inferred%'").fetchone() == (0,)


# ---- synthetic evidence: too little, and contradictory ----------------------------------

def _fat16_first() -> bytes:
    """Entries 0 and 1, clusters 3..5 one-cluster chains, a chain through 6..20."""
    entries = [0xFFF8, 0xFFFF, 0, 0xFFFF, 0xFFFF, 0xFFFF, *range(7, 21), 0xFFFF]
    return struct.pack(f"<{len(entries)}H", *entries).ljust(512, b"\0")


def _entry(name: bytes, attr: int, cluster: int, size: int = 0) -> bytes:
    return name.ljust(11) + bytes([attr]) + bytes(8) + b"\0\0" + bytes(4) + \
        struct.pack("<HI", cluster, size)


def _subdir(cluster: int, parent: int = 0) -> bytes:
    return (_entry(b".", 0x10, cluster) + _entry(b"..", 0x10, parent)).ljust(512, b"\0")


def _feed(sectors: dict[int, bytes]) -> tuple[list[str], list[str]]:
    a = Attributor(window=0)
    rows = []
    for seq, (lba, sector) in enumerate(sorted(sectors.items()), 1):
        rows += a.feed(seq, 0x2A, lba, 1, sector, "good")
    rows += a.feed(99, 0x2A, 1000, 4, b"x" * 2048, "good") + a.flush()
    return [r.kind for r in rows], a.notes()


def test_too_little_evidence_says_unknown_and_why() -> None:
    root = (_entry(b"LABEL", 0x08, 0) + _entry(b"A       TXT", 0x20, 5, 100)).ljust(512, b"\0")
    kinds, notes = _feed({4: _fat16_first(), 260: root, 296: _subdir(3)})
    assert set(kinds) == {"unknown"}
    assert any("does not decide a FAT geometry" in n and "one FAT copy seen, at LBA 4" in n
               for n in notes), notes
    # with the second copy, the cluster size is still open: one "." entry, no match
    kinds, notes = _feed({4: _fat16_first(), 132: _fat16_first(), 260: root,
                          296: _subdir(3)})
    assert set(kinds) == {"unknown"}
    assert any("the cluster size and where cluster 2 is not decided" in n for n in notes), \
        notes


def test_contradictory_evidence_is_refused_with_the_reason() -> None:
    root = _entry(b"LABEL", 0x08, 0).ljust(512, b"\0")
    base = {4: _fat16_first(), 132: _fat16_first(), 260: root}
    # "." of clusters 3, 4 and 5: the first two give 4 sectors a cluster, the third is off
    a = Attributor()
    for seq, lba in enumerate([4, 132, 260, 305, 296, 300], 1):
        sector = {**base, 296: _subdir(3), 300: _subdir(4), 305: _subdir(5)}[lba]
        a.feed(seq, 0x2A, lba, 1, sector, "good")
    rows = a.feed(7, 0x2A, 1000, 4, b"x" * 2048, "good") + a.flush()
    assert {r.kind for r in rows} == {"unknown"}
    assert any('the "." entry of cluster 5 is at LBA 305, but cluster 5 would be at LBA 304'
               in n for n in a.notes()), a.notes()
    # the same, the contradiction seen after the geometry was used: it is withdrawn
    kinds, notes = _feed({**base, 296: _subdir(3), 300: _subdir(4), 305: _subdir(5)})
    assert kinds[-1] == "unknown"
    assert any("refuses the geometry inferred before it: the \".\" entry of cluster 5 is at "
               "LBA 305" in n for n in notes), notes
    assert any("FAT16 geometry inferred" in n for n in notes)
    # two "." entries 5 sectors a cluster apart: no cluster size is 5 sectors
    kinds, notes = _feed({**base, 296: _subdir(3), 301: _subdir(4)})
    assert set(kinds) == {"unknown"}
    assert any("5 sectors for 1 clusters is no cluster size" in n for n in notes), notes
    # the same evidence, consistent, is accepted: the write lands in the data region
    kinds, notes = _feed({**base, 296: _subdir(3), 300: _subdir(4)})
    assert "unknown" not in kinds[-1:] and "unallocated" in kinds, (kinds, notes)


def test_sector_recognisers() -> None:
    assert fat_first_kinds(_fat16_first()) == {"fat12", "fat16"}
    fat32 = struct.pack("<3I", 0x0FFFFFF8, 0x0FFFFFFF, 0x0FFFFFFF).ljust(512, b"\0")
    assert fat_first_kinds(fat32) == {"fat12", "fat32"}
    assert fat_first_kinds(b"hello".ljust(512, b"\0")) == set()
    # sector 3 of a FAT16 FAT: one chain through clusters 768..1023
    chained = struct.pack("<256H", *range(769, 1025))
    assert fat_index(chained, "fat16") == 3
    assert fat_index(bytes(range(256)) * 2, "fat16") is None
    assert dir_sector(_subdir(7, 3)) is not None and dir_sector(_subdir(7, 3)).dot == 7
    assert dir_sector(b"lorem ipsum dolor sit amet " * 19 + b"xxxxxxx") is None
    assert dir_sector(bytes(512)) is None


@pytest.mark.parametrize("junk", [b"\xff" * 512, b"\xf8\xff\xff\xff" + b"\x01" * 508,
                                  _subdir(0x7FFF, 0xFFFF)])
def test_junk_never_raises(junk: bytes) -> None:
    a = Attributor(window=0)
    rows = []
    for seq in range(1, 6):
        rows += a.feed(seq, 0x2A, seq * 100, 1, junk, "good")
    rows += a.flush()
    assert {r.kind for r in rows} == {"unknown"}


def _boot_sector(spc: int) -> bytes:
    """FAT16 as the synthetic evidence has it: 4 reserved sectors, 2 FATs of 128, 512
    root entries; ``spc`` sectors a cluster."""
    bpb = struct.pack("<3s8sHBHBHHBHHHII", b"\xeb\x3c\x90", b"MSWIN4.1", 512, spc, 4, 2, 512,
                      0, 0xF8, 128, 32, 2, 0, 131072)
    return (bpb + bytes([0x80, 0, 0x29]) + bytes(4)).ljust(510, b"\0") + b"\x55\xaa"


@pytest.mark.parametrize(("spc", "verdict"), [(4, "it agrees with the geometry inferred"),
                                              (8, "it DISAGREES with the geometry inferred: "
                                                  "sectors per cluster 4 (boot sector: 8)")])
def test_a_boot_sector_read_after_the_inference_governs(spc: int, verdict: str) -> None:
    root = _entry(b"LABEL", 0x08, 0).ljust(512, b"\0")
    a = Attributor(window=0)
    evidence = {4: _fat16_first(), 132: _fat16_first(), 260: root, 296: _subdir(3),
                300: _subdir(4)}
    for seq, (lba, sector) in enumerate(sorted(evidence.items()), 1):
        a.feed(seq, 0x2A, lba, 1, sector, "good")
    rows = a.feed(10, 0x28, 0, 1, _boot_sector(spc), "good")
    rows += a.feed(11, 0x2A, 300, 1, _subdir(4), "good") + a.flush()
    assert [(r.kind, r.detail) for r in rows if r.scsi_seq == 10] == [("boot_sector", None)]
    last = [(r.kind, r.path, r.detail) for r in rows if r.scsi_seq == 11]
    # rows after the boot sector rest on it, not on the inference
    assert last and all("inferred" not in (detail or "") for _, _, detail in last), last
    assert any(f"a boot sector for LBA 0 was seen later: {verdict}" in n
               for n in a.notes()), a.notes()


def test_evidence_of_an_earlier_session_carries_over(tmp_path: Path) -> None:
    """--after: the earlier session's metadata counts as evidence, its commands never
    become rows of the later session."""
    root = _entry(b"LABEL", 0x08, 0).ljust(512, b"\0")
    earlier = [(seq, 0x2A, lba, 1, sector, "good") for seq, (lba, sector) in enumerate(
        sorted({4: _fat16_first(), 132: _fat16_first(), 260: root, 296: _subdir(3)}.items()),
        100)]
    a = Attributor()
    a.warm(earlier)
    rows = a.feed(1, 0x2A, 300, 1, _subdir(4), "good") + a.flush()
    assert {r.scsi_seq for r in rows} == {1}
    assert all((r.detail or "").endswith("inferred") for r in rows), rows
    assert any("FAT16 geometry inferred" in n for n in a.notes())


def test_one_dot_entry_and_one_matched_write_decide_together() -> None:
    """Neither alone decides: "." of cluster 3 at LBA 296, and A.TXT (1500 bytes, cluster
    5) written as 3 blocks at LBA 304; only 4 sectors a cluster fits both."""
    root = (_entry(b"LABEL", 0x08, 0) + _entry(b"A       TXT", 0x20, 5, 1500)).ljust(512, b"\0")
    a = Attributor()
    for seq, (lba, sector) in enumerate(sorted({4: _fat16_first(), 132: _fat16_first(),
                                                260: root, 296: _subdir(3)}.items()), 1):
        a.feed(seq, 0x2A, lba, 1, sector, "good")
    rows = a.feed(9, 0x2A, 304, 3, b"a" * 1536, "good") + a.flush()
    data = [(r.path, r.file_offset, r.length, r.detail) for r in rows if r.kind == "data"]
    assert data == [("/A.TXT", 0, 1500, "36 bytes past the end of the file; inferred")]
    assert any("cluster 2 at LBA 292 with 2048-byte clusters (\".\" entries of cluster 3 at "
               "LBA 296; writes of exactly one entry's size in blocks: A.TXT (cluster 5) at "
               "LBA 304)" in n for n in a.notes()), a.notes()
