"""The export's bytes are pinned: making ``usbtrace export`` faster must not change one.

Each case exports a session, from a live recording (its start time fixed, since a
live session's time zero is the wall clock) and from imported captures, in both
record formats and both containers, through the command line, and compares the
SHA-256 of what follows the pcapng Section Header Block (the block names the command
line that made the session, and so the temporary database's path) with the digest the
export wrote before its speed work (commit deff068).  The header block itself is checked
by structure: its comments, then an Interface Description Block of the linktype.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from usbtrace.capture.export import (
    DIRECT,
    FUNCTION_CODES,
    USBMON_FIELDS,
    USBPCAP_FIELDS,
    _fold,
    _framed,
    _prepare,
    _prepare_usbpcap,
    _usbmon_fast,
    _usbmon_pcap,
    _usbpcap_fast,
    classic_sql,
    prepared_sql,
    usbpcap_sql,
)
from usbtrace.cli import main
from usbtrace.errors import InputError

from .conftest import shared_capture

REPO = Path(__file__).resolve().parent.parent
LINKTYPES = {"usbpcap": 249, "usbmon": 220}

# (session, linktype, container, filter) -> SHA-256 of the bytes after the section header
EXPECTED: dict[tuple[str, str, str, str], str] = {
    ('live', 'usbpcap', 'pcapng', ''):
        "02ca6f46d524dc50d9fa15c7e79943e6209dfa79106f3354e6ee8f2a08761751",
    ('live', 'usbpcap', 'pcap', ''):
        "0f0d5829c56aa243154c6fd8d8149d04072c83299af7b5432936f00f92931448",
    ('live', 'usbmon', 'pcapng', ''):
        "509ea6f8794b8b0c3599c9edebc6a0147b7208e211c7b65510f85dd4be2da9a1",
    ('live', 'usbmon', 'pcap', ''):
        "af3729c032142f647d0b47085e91371e0a63cadcf894136a8b7e39fc6305c9cf",
    ('usbmon', 'usbpcap', 'pcapng', ''):
        "f4fc8d523f153052a6a7403b0078b66efa11b5f9412647a52efbc7b7fbab4120",
    ('usbmon', 'usbpcap', 'pcap', ''):
        "ed30451a3c57e23d15c75febee2a7352a169d9ae35b2ea133ca3da9ebda5ffef",
    ('usbmon', 'usbmon', 'pcapng', ''):
        "d10640913e4a39410ff189eb1e5bb2c4db23fe0e3b31b1d13d51eeae33cec6e7",
    ('usbmon', 'usbmon', 'pcap', ''):
        "062f7c8a41c29729688e2732288aca6ee1314c2101dd759c32e52f08cb4c3a93",
    ('usbpcap', 'usbpcap', 'pcapng', ''):
        "a18916afbc33c7a54b5ba772ce28d5dd579b3e88e5ce3c26053912b92d9b8c08",
    ('usbpcap', 'usbpcap', 'pcap', ''):
        "303841a76ded18376b02b75059acecb04f1a5cbe9d79e10dde677b7ccb61cb0b",
    ('usbpcap', 'usbmon', 'pcapng', ''):
        "c833dc3a8c82b93ccdf50818229c6d57468275fb2e74bb7bb59832f7997e1e61",
    ('usbpcap', 'usbmon', 'pcap', ''):
        "b8cd2d814dc2fc26902b241f40eff72f92da4223ee79b53a3118fee2f5619bb5",
    ('uas', 'usbpcap', 'pcapng', ''):
        "4247915fa63c7fdc8d9656294bd2c64f9ebbbd4e4f0184c986faebc5c68379c9",
    ('uas', 'usbpcap', 'pcap', ''):
        "6ad93d52f523064c71a5f05723cf637bd2ad6b04bfb9173243781678035daa5a",
    ('uas', 'usbmon', 'pcapng', ''):
        "a6dfa0028d7b98092d0fd693b56ccc3d5481757015215a004e9bb60da4f86dd4",
    ('uas', 'usbmon', 'pcap', ''):
        "331abf812050529be8a11f8164054cd0a9433e8e916381f51b862d69e67c586a",
    ('usbmon', 'usbmon', 'pcapng', '--opcode=read_10'):
        "c91b2a51fcaba30e9c2b111b4873609245c7bcbb42b9ade9e8ac33f6194fcaa3",
    ('usbpcap', 'usbpcap', 'pcapng', '--time=1-3'):
        "8fd467a85b5f520743e7f483de67fdc887622e4e5ed8efe909a8c4393bdc9051",
}


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One database a source, made once for the module."""
    folder = tmp_path_factory.mktemp("export-bytes")
    made = {}
    live = folder / "live.db"
    run("record", "--db", str(live), "--size", "4M")
    conn = sqlite3.connect(live)
    with conn:  # a live session starts at the wall clock: fix it
        conn.execute("UPDATE sessions SET started_at = '2024-02-29T23:59:59Z'")
    conn.close()
    made["live"] = live
    sources = {"usbmon": shared_capture("ajbanjara__usb_memory_stick.pcap"),
               "usbpcap": shared_capture("ajbanjara__USBMSC-USBPcap.pcapng"),
               "uas": REPO / "captures" / "multi-stream-uas-4M.pcapng"}
    for name, capture in sources.items():
        db = folder / f"{name}.db"
        run("import", str(capture), "--db", str(db), "--quiet", "--no-files")
        made[name] = db
    return made


def _blocks(data: bytes) -> list[tuple[int, bytes]]:
    """A little-endian pcapng file's blocks: (type, body)."""
    blocks, pos = [], 0
    while pos < len(data):
        kind, total = struct.unpack_from("<II", data, pos)
        assert total >= 12 and total % 4 == 0 and pos + total <= len(data)
        assert struct.unpack_from("<I", data, pos + total - 4)[0] == total
        blocks.append((kind, data[pos + 8:pos + total - 4]))
        pos += total
    return blocks


CASES = [(session, linktype, container, "")
         for session in ("live", "usbmon", "usbpcap", "uas")
         for linktype in ("usbpcap", "usbmon") for container in ("pcapng", "pcap")]
CASES.append(("usbmon", "usbmon", "pcapng", "--opcode=read_10"))
CASES.append(("usbpcap", "usbpcap", "pcapng", "--time=1-3"))


@pytest.mark.parametrize("session,linktype,container,flt", CASES)
def test_export_bytes_are_what_they_were(sessions: dict[str, Path], tmp_path: Path,
                                         session: str, linktype: str, container: str,
                                         flt: str) -> None:
    out = tmp_path / f"out.{container}"
    said = run("export", "1", "--db", str(sessions[session]), "-o", str(out),
               "--linktype", linktype, *([flt] if flt else []))
    data = out.read_bytes()
    records = int(said.split(": ", 1)[1].split()[0])
    if container == "pcapng":
        blocks = _blocks(data)
        (shb_type, shb), (idb_type, idb) = blocks[:2]
        assert shb_type == 0x0A0D0D0A and shb[:4] == struct.pack("<I", 0x1A2B3C4D)
        assert b"usbtrace session command line: usbtrace " in shb
        assert idb_type == 1 and struct.unpack_from("<H", idb)[0] == LINKTYPES[linktype]
        assert sum(kind == 6 for kind, _ in blocks) == records
        pinned = data[struct.unpack_from("<I", data, 4)[0]:]
    else:
        magic, _, _, _, _, _, link = struct.unpack_from("<IHHiIII", data)
        assert (magic, link) == (0xA1B23C4D, LINKTYPES[linktype])  # nanoseconds
        pinned = data
    assert records > 0
    assert hashlib.sha256(pinned).hexdigest() == \
        EXPECTED[(session, linktype, container, flt)]


def _malformed(path: Path) -> tuple[int, list[str]]:
    """How many frames tshark reads, and the numbers of those it finds malformed."""
    shown = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number",
                            "-e", "_ws.malformed"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return len(shown), [line.split("\t")[0] for line in shown if line.split("\t")[1:] != [""]]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("session,capture", [
    ("usbmon", "ajbanjara__usb_memory_stick.pcap"),
    ("usbpcap", "ajbanjara__USBMSC-USBPcap.pcapng")])
def test_tshark_reads_every_record(sessions: dict[str, Path], tmp_path: Path, session: str,
                                   capture: str) -> None:
    """Wireshark reads as many records as export says, in either format, and finds
    malformed exactly the frames it finds malformed in the original capture (truncated
    descriptors and sense data the capturing host cut short)."""
    frames, malformed = _malformed(shared_capture(capture))
    assert malformed, "the captures hold frames tshark finds malformed"
    for linktype in ("usbmon", "usbpcap"):
        out = tmp_path / f"{linktype}.pcapng"
        said = run("export", "1", "--db", str(sessions[session]), "-o", str(out),
                   "--linktype", linktype)
        assert int(said.split(": ", 1)[1].split()[0]) == frames
        assert _malformed(out) == (frames, malformed)


# ---- the fast path writes what the general one writes ------------------------------------

_TIMES = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0]),  # equal times
                   st.floats(0, 3, allow_nan=False).map(lambda t: round(t, 3)))


def _lengths_of_data(row: tuple[Any, ...], same: bool) -> tuple[Any, ...]:
    """The row, with requested and actual length its data's if ``same`` (as most rows of
    a mass storage session: classic pcap's SQL folds such lengths into the shape)."""
    return (*row[:9], len(row[12] or b""), len(row[12] or b""), *row[11:]) if same else row


_ROWS = st.lists(st.builds(_lengths_of_data, st.tuples(
    st.integers(0, (1 << 64) - 1).map(lambda i: f"{i:x}"),   # irp_id
    _TIMES, _TIMES,                                           # submitted, completed
    st.one_of(st.none(), st.integers(0, 4)),                  # bus
    st.one_of(st.none(), st.integers(0, 127)),                # device
    st.sampled_from([0, 0x01, 0x81, 0x02, 0x83]),             # endpoint
    st.sampled_from(["control", "bulk", "interrupt", "isochronous", "other"]),
    st.sampled_from(["in", "out"]),
    st.one_of(st.none(), st.just(b""), st.binary(min_size=8, max_size=8)),  # setup
    st.one_of(st.none(), st.integers(0, 1 << 20)),            # requested
    st.one_of(st.none(), st.integers(0, 1 << 20)),            # actual
    st.sampled_from([None, "success", "stall_pid", "canceled", "0xc0000011", "odd"]),
    st.one_of(st.none(), st.binary(max_size=40),
              st.integers(0, 3).map(lambda k: bytes([k]) * (DIRECT + k))),  # data
), st.booleans()), max_size=40)


@settings(max_examples=300)
@given(rows=_ROWS, origin=st.sampled_from([0.0, 1.5, 1_700_000_000.0078125]),
       pcapng=st.booleans())
def test_usbmon_fast_is_what_the_heap_writes(rows: list[tuple[Any, ...]], origin: float,
                                             pcapng: bool) -> None:
    """Rows that overlap, share times, lack times or carry more data than the buffer
    takes directly: the fast usbmon writer's bytes are those of the general one,
    which orders every record through the heap (``_framed``), in pcapng and in
    classic pcap."""
    fast, general = io.BytesIO(), io.BytesIO()
    as_fields = [(seq, irp, sub, done, bus, dev, ep, ttype, None, *rest)
                 for seq, (irp, sub, done, bus, dev, ep, ttype, *rest) in enumerate(rows, 1)]
    assert _usbmon_fast(map(_prepare, rows), fast, origin, pcapng) == \
        _framed(as_fields, general, "usbmon", origin, pcapng)
    assert fast.getvalue() == general.getvalue()


# USBPcap's rows (``USBPCAP_FIELDS``): a URB function, a device past 8 bits (USBPcap
# has 16), setup bytes of an odd length (a hand-made row: through the heap)
_USBPCAP_ROWS = st.lists(st.tuples(
    st.integers(0, (1 << 64) - 1).map(lambda i: f"{i:x}"),   # irp_id
    _TIMES, _TIMES,                                           # submitted, completed
    st.one_of(st.none(), st.integers(0, 4), st.just(65535)),  # bus
    st.one_of(st.none(), st.integers(0, 127), st.just(300)),  # device
    st.sampled_from([None, 0, 0x01, 0x81, 0x02, 0x83]),       # endpoint
    st.sampled_from(["control", "bulk", "interrupt", "isochronous", "other"]),
    st.one_of(st.none(), st.just(""), st.just("odd"),         # URB function
              st.sampled_from(sorted(FUNCTION_CODES))),
    st.sampled_from(["in", "out"]),
    st.one_of(st.none(), st.just(b""), st.binary(min_size=8, max_size=8),
              st.binary(min_size=1, max_size=12)),            # setup
    st.sampled_from([None, "success", "stall_pid", "canceled", "0xc0000011", "odd"]),
    st.one_of(st.none(), st.binary(max_size=40),
              st.integers(0, 3).map(lambda k: bytes([k]) * (DIRECT + k))),  # data
), max_size=40)


@settings(max_examples=300)
@given(rows=_USBPCAP_ROWS, origin=st.sampled_from([0.0, 1.5, 1_700_000_000.0078125]),
       pcapng=st.booleans())
def test_usbpcap_fast_is_what_the_heap_writes(rows: list[tuple[Any, ...]], origin: float,
                                              pcapng: bool) -> None:
    """The fast USBPcap writer's bytes, in either container, are those of the general
    one, for rows of every kind: control transfers' stages (SETUP, DATA going out,
    COMPLETE), overlapping rows, rows with one time or none, long data."""
    fast, general = io.BytesIO(), io.BytesIO()
    as_fields = [(seq, irp, sub, done, bus, dev, ep, ttype, function, direction, setup,
                  None, None, status, data)
                 for seq, (irp, sub, done, bus, dev, ep, ttype, function, direction, setup,
                           status, data) in enumerate(rows, 1)]
    assert _usbpcap_fast(map(_prepare_usbpcap, rows), fast, origin, pcapng) == \
        _framed(as_fields, general, "usbpcap", origin, pcapng)
    assert fast.getvalue() == general.getvalue()


# times where classic pcap's writers leave their fast path: a fraction that rounds up to
# the next microsecond or second (in either header), a second of its own, the last
# seconds classic pcap holds (a usbmon header's seconds rounded up to 2**32, the record
# header's still 2**32 - 1) and the first it does not
_EDGE_TIMES = st.builds(lambda second, fraction: second + fraction, st.integers(0, 2),
                        st.sampled_from([0.0, 0.25, 0.4999995, 0.9999995, 0.99999949,
                                         0.9999999995, 0.9999999996, 0.99999999949,
                                         1.0 - 2.0 ** -21, 1.0 - 2.0 ** -30,
                                         1.0 - 2.0 ** -40, 1.0 - 2.0 ** -45]))
_EDGE_ORIGINS = st.sampled_from([0.0, 0.0, 1_700_000_000.0, 1_700_000_000.9999995,
                                 4_294_967_293.0, 4_294_967_294.0])
_LAST = 1.0 - 2.0 ** -40  # 2 + _LAST: 3e9 ns, rounded, but not 3 s


def _bulk_in(sub: float, done: float) -> tuple[Any, ...]:
    """A row (``USBMON_FIELDS``) of 13 bytes read in, at these times."""
    return ("f740d0c0", sub, done, 1, 2, 0x81, "bulk", "in", None, 13, 13, "success",
            bytes(13))
# rows of a bulk transfer in, or out, or a control transfer, whose times are edge times
_EDGE_ROWS = st.lists(st.builds(
    lambda kind, sub, done, n: (
        "f740d0c0", sub, done, 1, 2, *kind, n, n, "success", bytes(n) or None),
    st.sampled_from([(0x81, "bulk", "in", None), (0x02, "bulk", "out", None),
                     (0x00, "control", "in", bytes.fromhex("8006000100001200"))]),
    _EDGE_TIMES, _EDGE_TIMES, st.sampled_from([0, 13, 512])), min_size=1, max_size=12)


def _same_or_same_error(fast: Any, general: Any) -> None:
    """Both writers write the same bytes, or both refuse the rows with the same words."""
    outcomes = []
    for write in (fast, general):
        stream = io.BytesIO()
        try:
            outcomes.append((write(stream), stream.getvalue()))
        except InputError as e:
            outcomes.append(("refused", str(e)))
    assert outcomes[0] == outcomes[1]


@settings(max_examples=300)
@given(rows=_EDGE_ROWS, origin=_EDGE_ORIGINS, linktype=st.sampled_from(["usbmon", "usbpcap"]))
@example(rows=[_bulk_in(2.25, 2.5), _bulk_in(2 + _LAST, 2 + _LAST), _bulk_in(3.5, 3.75)],
         origin=0.0, linktype="usbpcap")
@example(rows=[_bulk_in(0.5, 0.75), _bulk_in(0.75, 1.0 - 2.0 ** -21), _bulk_in(1.5, 1.75)],
         origin=4_294_967_295.0, linktype="usbmon")  # usbmon's seconds rounded up to 2**32
def test_classic_pcap_times_at_the_edges_are_what_the_heap_writes(
        rows: list[tuple[Any, ...]], origin: float, linktype: str) -> None:
    """Classic pcap's fast writers take a time's seconds from the time before it and
    its nanoseconds from a difference of floats; near a second's end (rounded up to
    the next one), at the last seconds classic pcap holds and past them, their bytes
    (or their refusal) are the general path's."""
    if linktype == "usbmon":
        as_fields = [(seq, irp, sub, done, bus, dev, ep, ttype, None, *rest)
                     for seq, (irp, sub, done, bus, dev, ep, ttype, *rest)
                     in enumerate(rows, 1)]
        _same_or_same_error(lambda out: _usbmon_fast(map(_prepare, rows), out, origin, False),
                            lambda out: _framed(as_fields, out, "usbmon", origin, False))
    else:
        usbpcap_rows = [(irp, sub, done, bus, dev, ep, ttype, None, direction, setup, status,
                         data) for (irp, sub, done, bus, dev, ep, ttype, direction, setup, _,
                                    _, status, data) in rows]
        as_fields = [(seq, irp, sub, done, bus, dev, ep, ttype, None, direction, setup,
                      None, None, status, data)
                     for seq, (irp, sub, done, bus, dev, ep, ttype, _, direction, setup,
                               status, data) in enumerate(usbpcap_rows, 1)]
        _same_or_same_error(
            lambda out: _usbpcap_fast(map(_prepare_usbpcap, usbpcap_rows), out, origin, False),
            lambda out: _framed(as_fields, out, "usbpcap", origin, False))


@settings(max_examples=300)
@given(rows=_USBPCAP_ROWS)
def test_sqlite_prepares_usbpcap_rows_as_python_does(rows: list[tuple[Any, ...]]) -> None:
    """``usbpcap_sql`` computes what ``_prepare_usbpcap`` computes, for rows of every
    kind; which the test above takes to the bytes."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE urbs (seq INTEGER PRIMARY KEY, {', '.join(USBPCAP_FIELDS)})")
    conn.executemany(f"INSERT INTO urbs ({', '.join(USBPCAP_FIELDS)}) VALUES "
                     f"({', '.join('?' * len(USBPCAP_FIELDS))})", rows)
    prepared = conn.execute(f"SELECT {usbpcap_sql('u')} FROM urbs u ORDER BY seq").fetchall()
    raw = conn.execute(f"SELECT {', '.join(USBPCAP_FIELDS)} FROM urbs ORDER BY seq").fetchall()
    conn.close()
    assert prepared == [_prepare_usbpcap(row) for row in raw]


def test_a_field_usbpcap_cannot_hold_fails_in_sqlite_as_in_python() -> None:
    """A bus or device past 16 bits, an endpoint past 8 or below 0: no shape, from
    SQLite as from ``_prepare_usbpcap``, and the writer refuses the row as the general
    one does (struct refuses the field)."""
    row = ["0x1", 0.5, 1.0, 1, 2, 0x81, "bulk", "bulk_or_interrupt_transfer", "in", None,
           "success", b"x"]
    for index, value in ((3, 1 << 16), (4, 1 << 16), (5, 256), (5, -1), (4, -3)):
        bad = list(row)
        bad[index] = value
        conn = sqlite3.connect(":memory:")
        conn.execute(f"CREATE TABLE urbs ({', '.join(USBPCAP_FIELDS)})")
        conn.execute(f"INSERT INTO urbs VALUES ({', '.join('?' * len(bad))})", bad)
        prepared = conn.execute(f"SELECT {usbpcap_sql('u')} FROM urbs u").fetchone()
        conn.close()
        assert prepared[3] is None and _prepare_usbpcap(bad)[3] is None
        for pcapng in (True, False):
            with pytest.raises(struct.error, match="does not fit a USBPcap header"):
                _usbpcap_fast([prepared], io.BytesIO(), 0.0, pcapng)
            with pytest.raises(struct.error):
                _framed([(1, *bad[:8], *bad[8:10], None, None, *bad[10:])], io.BytesIO(),
                        "usbpcap", 0.0, pcapng)
    assert _prepare_usbpcap(row)[3] is not None


@pytest.mark.parametrize("linktype", ["usbpcap", "usbmon"])
@pytest.mark.parametrize("at", [5e9, -2.0])
def test_a_time_classic_pcap_cannot_hold_is_refused_as_the_heap_refuses_it(
        linktype: str, at: float) -> None:
    """Classic pcap's seconds are 32 bits from 1970: a row past them (or before) is
    refused by the fast writers with what ``PcapWriter`` says, as by the general path."""
    raw = [(1, "0x1", 0.5, 1.0, 1, 2, 0x81, "bulk", None, "in", None, 512, 512, "success",
            b"x"), (2, "0x2", at, at + 0.5, 1, 2, 0x81, "bulk", None, "in", None, 512, 512,
                    "success", b"x"), (3, "0x3", at + 1, at + 2, 1, 2, 0x81, "bulk", None,
                                       "in", None, 512, 512, "success", b"x")]
    with pytest.raises(InputError, match="32-bit seconds") as general:
        _framed(raw, io.BytesIO(), linktype, 0.0, False)
    if linktype == "usbmon":
        prepared = [_prepare([*row[1:8], *row[9:]]) for row in raw]
        with pytest.raises(InputError, match="32-bit seconds") as fast:
            _usbmon_fast(prepared, io.BytesIO(), 0.0, False)
    else:
        prepared = [_prepare_usbpcap([*row[1:11], *row[13:]]) for row in raw]
        with pytest.raises(InputError, match="32-bit seconds") as fast:
            _usbpcap_fast(prepared, io.BytesIO(), 0.0, False)
    assert str(fast.value) == str(general.value)


@settings(max_examples=300)
@given(rows=_ROWS)
def test_sqlite_prepares_rows_as_python_does(rows: list[tuple[Any, ...]]) -> None:
    """What SQLite computes for the fast writer (``prepared_sql``: a row's shape, its
    lengths, its IRP id with the setup bytes) is what ``_prepare`` computes from the
    row's columns, for rows of every kind; which the test above takes to the bytes."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE urbs (seq INTEGER PRIMARY KEY, {', '.join(USBMON_FIELDS)})")
    conn.executemany(f"INSERT INTO urbs ({', '.join(USBMON_FIELDS)}) VALUES "
                     f"({', '.join('?' * len(USBMON_FIELDS))})", rows)
    prepared = conn.execute(f"SELECT {prepared_sql('u')} FROM urbs u ORDER BY seq").fetchall()
    raw = conn.execute(f"SELECT {', '.join(USBMON_FIELDS)} FROM urbs ORDER BY seq").fetchall()
    conn.close()
    assert prepared == [_prepare(row) for row in raw]


@settings(max_examples=300)
@given(rows=_ROWS)
def test_sqlite_prepares_classic_pcap_rows_as_python_does(rows: list[tuple[Any, ...]]) -> None:
    """For usbmon in classic pcap, SQLite folds a row's lengths into its shape
    (``classic_sql``): what it computes is ``_prepare``'s row folded by ``_fold``, the
    rows ``_usbmon_fast`` writes in classic pcap (pinned against the heap above)."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE urbs (seq INTEGER PRIMARY KEY, {', '.join(USBMON_FIELDS)})")
    conn.executemany(f"INSERT INTO urbs ({', '.join(USBMON_FIELDS)}) VALUES "
                     f"({', '.join('?' * len(USBMON_FIELDS))})", rows)
    prepared = conn.execute(f"SELECT {classic_sql('u')} FROM urbs u ORDER BY seq").fetchall()
    raw = conn.execute(f"SELECT {', '.join(USBMON_FIELDS)} FROM urbs ORDER BY seq").fetchall()
    conn.close()
    assert prepared == [_fold(_prepare(row)) for row in raw]
    # a successful row whose lengths are its data's keeps an integer shape
    assert all((shape.__class__ is int) == (raw[i][11] == "success" and
                                            (raw[i][9] or 0) == (raw[i][10] or 0)
                                            == len(raw[i][12] or b""))
               for i, (_, _, _, shape, _) in enumerate(prepared) if shape is not None)


def test_a_field_usbmon_cannot_hold_fails_in_sqlite_as_in_python() -> None:
    """A bus past 16 bits, a device or endpoint past 8, a length past 32: no shape,
    from SQLite as from ``_prepare``, and the writer refuses the row (as struct
    refused the field before rows were prepared)."""
    row = ["0x1", 0.5, 1.0, 1, 2, 0x81, "bulk", "in", None, 512, 512, "success", b"x"]
    for index, value in ((3, 1 << 16), (4, 256), (5, -1), (9, 1 << 32), (10, -5)):
        bad = list(row)
        bad[index] = value
        conn = sqlite3.connect(":memory:")
        conn.execute(f"CREATE TABLE urbs ({', '.join(USBMON_FIELDS)})")
        conn.execute(f"INSERT INTO urbs VALUES ({', '.join('?' * len(bad))})", bad)
        prepared = conn.execute(f"SELECT {prepared_sql('u')} FROM urbs u").fetchone()
        classic = conn.execute(f"SELECT {classic_sql('u')} FROM urbs u").fetchone()
        conn.close()
        assert prepared[3] is None and _prepare(bad)[3] is None and classic[3] is None
        with pytest.raises(struct.error, match="does not fit a usbmon header"):
            _usbmon_fast([prepared], io.BytesIO(), 0.0)
        with pytest.raises(struct.error, match="does not fit a usbmon header"):
            _usbmon_fast([prepared], io.BytesIO(), 0.0, False)
        with pytest.raises(struct.error, match="does not fit a usbmon header"):
            _usbmon_pcap([classic, classic], io.BytesIO(), 0.0)
    assert _prepare(row)[3] is not None


# ---- bad input: one line, exit 2, as from the commands that open the database otherwise ---


def _bad_databases(folder: Path, good: Path) -> dict[str, str]:
    """Files that are no usbtrace database a reader can use, by what is wrong."""
    (folder / "a-folder").mkdir()
    (folder / "text.db").write_text("not a database\n")
    (folder / "empty.db").touch()
    corrupt = good.read_bytes()
    (folder / "corrupt.db").write_bytes(corrupt[:100] + b"\xff" * 4000)
    conn = sqlite3.connect(folder / "foreign.db")
    conn.execute("CREATE TABLE things (x)")
    conn.close()
    conn = sqlite3.connect(folder / "no-tables.db")
    conn.execute("PRAGMA user_version = 7")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("DROP TABLE t")
    conn.close()
    for name, version in (("old.db", "2"), ("new.db", "99")):
        shutil.copy(good, folder / name)
        conn = sqlite3.connect(folder / name)
        with conn:
            conn.execute("UPDATE usbtrace_meta SET value = ? WHERE key = 'schema_version'",
                         (version,))
        conn.close()
    return {name: str(folder / name) for name in (
        "a-folder", "missing.db", "text.db", "empty.db", "corrupt.db", "foreign.db",
        "no-tables.db", "old.db", "new.db")}


def test_a_bad_database_is_one_line_as_for_sessions(sessions: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """export reads SQLite without SQLAlchemy; what it says of a bad file is word for
    word what ``usbtrace sessions`` (through ``Database``) says, exit code 2."""
    for what, db in _bad_databases(tmp_path, sessions["live"]).items():
        ours = CliRunner().invoke(main, ["export", "1", "--db", db, "-o",
                                         str(tmp_path / "o.pcapng")])
        theirs = CliRunner().invoke(main, ["sessions", "--db", db])
        assert ours.exit_code == theirs.exit_code == 2, (what, ours.stderr, theirs.stderr)
        assert ours.stderr == theirs.stderr and ours.stderr.count("\n") == 1, what
        assert ours.stderr.startswith("usbtrace: error: "), what
        assert not (tmp_path / "o.pcapng").exists()


def test_a_bad_filter_is_one_line(sessions: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.pcapng"
    for where, says in (("no_such_column > 1", "query failed: no such column"),
                        ("(SELECT count(*) FROM pragma_writable_schema(1)) > 0",
                         "query failed: ")):
        result = CliRunner().invoke(main, ["export", "1", "--db", str(sessions["usbmon"]),
                                           "-o", str(out), "--where", where])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert says in result.stderr and not out.exists()


def test_ctrl_c_stops_an_export_and_leaves_no_file(tmp_path: Path) -> None:
    """SIGINT in the middle of a large export: exit 130, one line, no output, no part."""
    import os
    import signal
    import sys
    import time

    from .tiling import tile

    capture = tmp_path / "big.pcap"
    tile(shared_capture("ajbanjara__usb_memory_stick.pcap"), capture, 200_000)
    db = tmp_path / "big.db"
    run("import", str(capture), "--db", str(db), "--quiet", "--no-files")
    out = tmp_path / "o.pcapng"
    child = subprocess.Popen([sys.executable, "-m", "usbtrace", "export", "1", "--db",
                              str(db), "-o", str(out)], cwd=tmp_path,
                             env=dict(os.environ, PYTHONPATH=str(REPO)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".part") for p in tmp_path.iterdir()):
        assert child.poll() is None and time.monotonic() < deadline, "export ended first"
        time.sleep(0.005)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and err == "usbtrace: interrupted\n", err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".part" in p.name]
