"""Importing the way people capture: pcapng drop counters, gzip, and standard input
fed live by a capture tool (rows queryable while the capture still runs)."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from usbtrace.capture.pcap import CaptureReader
from usbtrace.errors import InputError
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .conftest import shared_capture

STICK = "ajbanjara__usb_memory_stick.pcap"  # usbmon 189, pcap, 1041 records
SHB, IDB, EPB, ISB = 0x0A0D0D0A, 1, 6, 5
ETHERNET = 1
REPO = Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds: a generous bound for the live tests on a busy machine


# ---- pcapng built from the specification (draft-ietf-opsawg-pcapng) --------------------


def option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def counter(code: int, value: int, order: str = "<") -> bytes:
    return option(code, struct.pack(order + "Q", value), order)


def block(kind: int, body: bytes, order: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", kind, len(body) + 12) + body + \
        struct.pack(order + "I", len(body) + 12)


def section(order: str = "<") -> bytes:
    return block(SHB, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def interface(linktype: int, order: str = "<") -> bytes:
    return block(IDB, struct.pack(order + "HHI", linktype, 0, 0), order)


def packet(iface: int, ticks: int, data: bytes, options: bytes = b"", order: str = "<") -> bytes:
    padded = data + b"\0" * (-len(data) % 4)
    return block(EPB, struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF,
                                  len(data), len(data)) + padded + options, order)


def statistics(iface: int, options: bytes, order: str = "<") -> bytes:
    return block(ISB, struct.pack(order + "III", iface, 0, 0) + options + option(0, b"", order),
                 order)


def usbmon_records() -> list[tuple[int, bytes]]:
    """(microseconds, record) of the shared usbmon capture, all 189."""
    with open(shared_capture(STICK), "rb") as f:
        return [(int(round(p.ts * 1e6)), p.data) for p in CaptureReader(f)]


def session(db: Path) -> dict[str, object]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM sessions ORDER BY id DESC LIMIT 1").fetchone()
    out = dict(row)
    out["gaps"] = conn.execute("SELECT seq, dropped FROM gaps WHERE session_id = ?",
                               (row["id"],)).fetchall()
    conn.close()
    return out


def rows_of(db: Path, sid: int | None = None) -> dict[str, list[tuple[object, ...]]]:
    """Every decoded row of a session, without its id: two imports of the same capture
    must give the same."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    if sid is None:
        sid = conn.execute("SELECT max(id) FROM sessions").fetchone()[0]
    out = {}
    for table, order in (("urbs", "seq"), ("scsi_commands", "seq"),
                         ("file_activity", "id"), ("devices", "bus, device")):
        cur = conn.execute(f"SELECT * FROM {table} WHERE session_id = ? ORDER BY {order}",
                           (sid,))
        names = [d[0] for d in cur.description]
        out[table] = [tuple(v for n, v in zip(names, r) if n != "session_id") for r in cur]
    out["session"] = [conn.execute(
        "SELECT record_count, command_count, dropped_count, malformed_count, duration, "
        "time_origin, linktype, state FROM sessions WHERE id = ?", (sid,)).fetchone()]
    conn.close()
    return out


# ---- drop counters ---------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
def test_interface_statistics_give_the_dropped_count_and_say_so(tmp_path: Path,
                                                                order: str) -> None:
    records = usbmon_records()[:200]
    blob = section(order) + interface(189, order) + interface(ETHERNET, order)
    blob += b"".join(packet(0, ts, data, order=order) for ts, data in records[:100])
    # counters run from the start: this early block is superseded by the last one
    blob += statistics(0, counter(5, 3, order) + counter(7, 4, order), order)
    blob += b"".join(packet(0, ts, data, order=order) for ts, data in records[100:])
    blob += statistics(1, counter(5, 1000, order), order)  # Ethernet: not USB, not counted
    blob += statistics(0, counter(4, 999, order) + counter(5, 5, order) +
                       counter(7, 7, order), order)
    path = tmp_path / "drops.pcapng"
    path.write_bytes(blob)
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    s = session(db)
    assert s["dropped_count"] == 12
    assert s["record_count"] == 200 and s["state"] == "complete"
    notes = str(s["notes"])
    assert "interface statistics say 12 packets were dropped (5 by the interface, 7 by the " \
           "operating system)" in notes
    assert "do not say where" in notes
    assert s["gaps"] == []  # no place is known, so none is invented


def test_the_report_says_the_count_is_the_captures(tmp_path: Path) -> None:
    from usbtrace.analysis.report import summary

    records = usbmon_records()[:20]
    blob = section() + interface(189) + b"".join(packet(0, ts, d) for ts, d in records)
    path = tmp_path / "drops.pcapng"
    path.write_bytes(blob + statistics(0, counter(5, 4)))
    db = tmp_path / "t.db"
    database = Database(db)
    sid = import_capture(database, path).session_id
    assert sid is not None
    fields = dict(summary(database, sid).fields)
    assert fields["drops"] == "4 records dropped (the capture's count: see notes)"


def test_each_section_has_its_own_interfaces(tmp_path: Path) -> None:
    """Interface 0 of a second section is another interface: both counts add up."""
    records = usbmon_records()[:20]
    one = section() + interface(189) + b"".join(packet(0, ts, d) for ts, d in records[:10])
    two = section(">") + interface(189, ">") + \
        b"".join(packet(0, ts, d, order=">") for ts, d in records[10:])
    blob = one + statistics(0, counter(5, 2)) + two + statistics(0, counter(7, 5, ">"), ">")
    path = tmp_path / "sections.pcapng"
    path.write_bytes(blob)
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    assert session(db)["dropped_count"] == 7


def test_the_old_packet_block_drop_count(tmp_path: Path) -> None:
    records = usbmon_records()[:10]
    blob = section() + interface(189)
    for i, (ts, data) in enumerate(records):
        drops = {3: 0xFFFF, 6: 2}.get(i, 0)  # 0xFFFF: the count is not available
        padded = data + b"\0" * (-len(data) % 4)
        blob += block(2, struct.pack("<HHIIII", 0, drops, ts >> 32, ts & 0xFFFFFFFF,
                                     len(data), len(data)) + padded)
    path = tmp_path / "pb.pcapng"
    path.write_bytes(blob)
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    s = session(db)
    assert s["dropped_count"] == 2 and [g[1] for g in s["gaps"]] == [2]


def test_filter_accepted_but_not_delivered_counts_when_no_os_count(tmp_path: Path) -> None:
    records = usbmon_records()[:20]
    blob = section() + interface(189)
    blob += b"".join(packet(0, ts, data) for ts, data in records)
    blob += statistics(0, counter(6, 100) + counter(8, 90))
    path = tmp_path / "accepted.pcapng"
    path.write_bytes(blob)
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    assert session(db)["dropped_count"] == 10


def test_packet_drop_counts_are_gaps_where_they_happened(tmp_path: Path) -> None:
    records = usbmon_records()[:60]
    flags = option(2, struct.pack("<I", 0x1))  # epb_flags: inbound; no count of losses
    blob = section() + interface(189)
    for i, (ts, data) in enumerate(records):
        options = flags + (option(4, struct.pack("<Q", 6)) if i == 40 else b"") + option(0, b"")
        blob += packet(0, ts, data, options)
    blob += statistics(0, counter(5, 6))  # the same six, counted again at the end
    path = tmp_path / "epb.pcapng"
    path.write_bytes(blob)
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    s = session(db)
    assert s["dropped_count"] == 6  # one loss, told twice: not twelve
    assert [g[1] for g in s["gaps"]] == [6]
    assert "lost before records 41 (gaps there)" in str(s["notes"])
    assert "6 records were dropped in 1 gaps" in str(s["notes"])


def test_editcap_pcapng_with_statistics_appended(tmp_path: Path) -> None:
    """editcap writes the packet blocks (it does not carry statistics blocks through:
    checked with 4.0), and a statistics block after them counts."""
    import shutil

    if shutil.which("editcap") is None:
        pytest.skip("editcap is not on PATH")
    out = tmp_path / "edited.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(shared_capture(STICK)), str(out)],
                   check=True, capture_output=True)
    with open(out, "ab") as f:
        f.write(statistics(0, counter(5, 2) + counter(7, 1)))
    db = tmp_path / "t.db"
    import_capture(Database(db), out)
    s = session(db)
    assert (s["dropped_count"], s["record_count"]) == (3, 1041)


def test_a_broken_statistics_block_is_listed_and_ignored(tmp_path: Path) -> None:
    records = usbmon_records()[:10]
    blob = section() + interface(189) + b"".join(packet(0, ts, d) for ts, d in records)
    blob += block(ISB, struct.pack("<III", 0, 0, 0) + struct.pack("<HH", 5, 200))
    blob += statistics(7, counter(5, 1))  # an interface the section does not describe
    path = tmp_path / "broken.pcapng"
    path.write_bytes(blob)
    db = tmp_path / "t.db"
    import_capture(Database(db), path)
    s = session(db)
    assert s["dropped_count"] == 0 and s["record_count"] == 10
    assert "runs past its block; ignored" in str(s["notes"])
    assert "interface 7, which the section does not describe" in str(s["notes"])


def test_a_pcap_file_says_nothing_about_drops(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    import_capture(Database(db), shared_capture(STICK))
    s = session(db)
    assert s["dropped_count"] == 0 and "drop" not in str(s["notes"] or "")


# ---- gzip --------------------------------------------------------------------------------


def test_gzip_is_told_by_its_magic_and_gives_the_same_rows(tmp_path: Path) -> None:
    plain = shared_capture(STICK)
    packed = tmp_path / "capture.bin"  # no .gz: the bytes say what it is
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    import_capture(Database(a), plain)
    import_capture(Database(b), packed)
    assert rows_of(a) == rows_of(b)
    assert session(b)["file_sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()
    again = import_capture(Database(b), packed)
    assert again.duplicate_of == 1  # as stored: the compressed bytes


@pytest.mark.parametrize("damage", ["cut", "corrupt"])
def test_a_damaged_gzip_keeps_what_was_read_and_fails(tmp_path: Path, damage: str) -> None:
    packed = gzip.compress(shared_capture(STICK).read_bytes())
    if damage == "cut":
        packed = packed[: len(packed) // 2]
    else:
        middle = len(packed) // 2
        packed = packed[:middle] + bytes(b ^ 0x5A for b in packed[middle:middle + 64]) + \
            packed[middle + 64:]
    path = tmp_path / "damaged.pcap.gz"
    path.write_bytes(packed)
    db = tmp_path / "t.db"
    done = subprocess.run([sys.executable, "-m", "usbtrace", "import", str(path), "--db",
                           str(db)], capture_output=True, text=True, cwd=REPO, timeout=WAIT)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "gzip stream" in done.stderr and "marked failed" in done.stderr
    s = session(db)
    assert s["state"] == "failed" and "gzip stream" in str(s["notes"])
    assert 0 < int(s["record_count"]) < 1041  # type: ignore[call-overload]


# ---- standard input ----------------------------------------------------------------------


def test_zcat_into_import_dash(tmp_path: Path) -> None:
    plain = shared_capture(STICK)
    packed = tmp_path / "x.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    import_capture(Database(a), plain)
    zcat = subprocess.Popen(["zcat", str(packed)], stdout=subprocess.PIPE)
    done = subprocess.run([sys.executable, "-m", "usbtrace", "import", "-", "--db", str(b)],
                          stdin=zcat.stdout, capture_output=True, text=True, cwd=REPO,
                          timeout=WAIT)
    assert zcat.stdout is not None
    zcat.stdout.close()
    assert zcat.wait(WAIT) == 0
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stdin: session 1: 1041 records")
    assert rows_of(a) == rows_of(b)
    s = session(b)
    assert s["source_name"] == "stdin"
    assert s["file_sha256"] == hashlib.sha256(plain.read_bytes()).hexdigest()


def test_gzip_on_standard_input(tmp_path: Path) -> None:
    plain = shared_capture(STICK)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    import_capture(Database(a), plain)
    done = subprocess.run([sys.executable, "-m", "usbtrace", "import", "-", "--db", str(b)],
                          input=gzip.compress(plain.read_bytes()), capture_output=True,
                          cwd=REPO, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert rows_of(a) == rows_of(b)


def test_the_same_bytes_twice_on_standard_input_are_imported_and_noted(tmp_path: Path) -> None:
    data = shared_capture(STICK).read_bytes()
    db = tmp_path / "t.db"
    for _ in range(2):
        r, w = os.pipe()
        writer = threading.Thread(target=lambda w=w: (os.write(w, data), os.close(w)))
        writer.start()
        try:
            result = import_capture(Database(db), Path("-"), stdin=r)
        finally:
            writer.join()
            os.close(r)
        assert result.duplicate_of is None and result.records == 1041
    s = session(db)
    assert s["id"] == 2 and "the same bytes as session 1" in str(s["notes"])


def test_drop_counters_through_standard_input(tmp_path: Path) -> None:
    records = usbmon_records()[:50]
    blob = section() + interface(189) + b"".join(packet(0, ts, d) for ts, d in records)
    blob += statistics(0, counter(5, 9))
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, blob), os.close(w)))
    writer.start()
    db = tmp_path / "t.db"
    try:
        import_capture(Database(db), Path("-"), stdin=r)
    finally:
        writer.join()
        os.close(r)
    s = session(db)
    assert (s["dropped_count"], s["record_count"], s["source_name"]) == (9, 50, "stdin")
    assert s["file_sha256"] == hashlib.sha256(blob).hexdigest()


def _whole_records(data: bytes) -> list[int]:
    """Offsets where each pcap record ends."""
    ends, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        pos += 16 + caplen
        ends.append(pos)
    return ends


def _urbs_now(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM urbs").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the schema is still being created
        return 0


def _wait_for_rows(db: Path, importer: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        n = _urbs_now(db)
        if n:
            return n
        assert importer.poll() is None, "the importer ended before the capture did"
        time.sleep(0.1)
    raise AssertionError(f"no rows became visible within {WAIT} s")


def _importer(db: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "usbtrace", "import", "-", "--db", str(db)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)


def test_a_trickled_capture_is_queryable_before_the_writer_finishes(tmp_path: Path) -> None:
    data = shared_capture(STICK).read_bytes()
    ends = _whole_records(data)
    reference, db = tmp_path / "file.db", tmp_path / "live.db"
    import_capture(Database(reference), shared_capture(STICK))
    importer = _importer(db)
    assert importer.stdin is not None
    pipe = importer.stdin
    # the file header in pieces, then 50 records at a time
    for piece in (data[:3], data[3:10], data[10:24]):
        pipe.write(piece)
        pipe.flush()
        time.sleep(0.05)
    sent, start = 0, 24
    seen_while_running = 0
    for i in range(49, len(ends), 50):
        pipe.write(data[start:ends[i]])
        pipe.flush()
        start = ends[i]
        sent = i + 1
        if sent == 300:  # the writer pauses: what it sent must be there to query
            seen_while_running = _wait_for_rows(db, importer)
            s = session(db)
            assert s["state"] == "running" and s["source_name"] == "stdin"
            assert 0 < int(s["record_count"]) <= 300  # type: ignore[call-overload]
        time.sleep(0.02)
    pipe.write(data[start:])
    pipe.close()
    assert importer.wait(WAIT) == 0, importer.stderr.read()  # type: ignore[union-attr]
    assert 0 < seen_while_running < 1041
    assert rows_of(db) == rows_of(reference)


def test_a_pipe_closed_mid_record_keeps_the_whole_records(tmp_path: Path) -> None:
    data = shared_capture(STICK).read_bytes()
    ends = _whole_records(data)
    cut = ends[499] + 30  # inside record 501
    db = tmp_path / "t.db"
    done = subprocess.run([sys.executable, "-m", "usbtrace", "import", "-", "--db", str(db)],
                          input=data[:cut], capture_output=True, cwd=REPO, timeout=WAIT)
    assert done.returncode == 0
    assert b"record 501: record data cut short at end of file" in done.stderr
    s = session(db)
    assert s["state"] == "complete" and s["record_count"] == 500 and s["malformed_count"] == 1
    assert "record 501: record data cut short at end of file" in str(s["notes"])


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_on_a_quiet_live_import_interrupts_at_once(tmp_path: Path) -> None:
    data = shared_capture(STICK).read_bytes()
    ends = _whole_records(data)
    db = tmp_path / "t.db"
    importer = _importer(db)
    assert importer.stdin is not None
    importer.stdin.write(data[: ends[199]])
    importer.stdin.flush()
    _wait_for_rows(db, importer)
    importer.send_signal(signal.SIGINT)  # the pipe stays open and quiet
    try:
        code = importer.wait(WAIT)
    finally:
        importer.stdin.close()
    assert code == 130
    s = session(db)
    assert s["state"] == "interrupted" and s["record_count"] == 200
    assert s["file_sha256"] is None  # the input never ended: no hash names part of it


def test_rows_commit_on_time_while_events_flow(tmp_path: Path) -> None:
    """With ``flush_every`` the writer commits by time too: here at every exchange."""
    from usbtrace.capture.reader import CaptureStats, events
    from usbtrace.store.writer import SessionWriter

    db = tmp_path / "t.db"
    database = Database(db)
    sid = database.new_session("usbmon", "stdin", "2007-01-01T00:00:00Z", "capture", 189)
    writer = SessionWriter(database, sid, flush_every=0.0)
    with open(shared_capture(STICK), "rb") as f:
        stream = events(f, CaptureStats())
        while _urbs_now(db) == 0:
            writer.feed(next(stream))
        assert session(db)["record_count"] > 0  # the counts come with the rows
    writer.close()


def test_standard_input_twice_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "usbtrace", "import", "-", "-", "--db",
                           str(tmp_path / "t.db")], input=b"", capture_output=True,
                          text=False, cwd=REPO, timeout=WAIT)
    assert done.returncode == 2 and b"once per command" in done.stderr


def test_empty_standard_input_is_one_line(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        with pytest.raises(InputError, match="stdin: file is too short"):
            import_capture(Database(tmp_path / "t.db"), Path("-"), stdin=r)
    finally:
        os.close(r)


class Trickle:
    """A stream that hands over at most seven bytes a read: headers come in pieces."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read1(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + min(n, 7)]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("name", [STICK, "ajbanjara__USBMSC-USBPcap.pcapng"])
def test_a_header_in_pieces_reads_the_same(name: str) -> None:
    with open(shared_capture(name), "rb") as f:
        whole = [(p.number, p.ts, p.data) for p in CaptureReader(f)]
    trickle = Trickle(shared_capture(name).read_bytes())
    pieces = [(p.number, p.ts, p.data) for p in CaptureReader(trickle)]  # type: ignore[arg-type]
    assert pieces == whole and len(whole) > 400
