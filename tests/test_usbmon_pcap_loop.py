"""usbmon records are framed and decoded in one loop (in ``reader._events``): a
classic pcap file's, and a pcapng file's Enhanced Packet Blocks; anything that loop
does not take goes to the general one.  The two must give the same events and the
same statistics, record for record, whatever the file: real captures (usbmon,
USBPcap, macOS, several sections and interfaces), captures appended, cut, corrupted."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CAPTURES
from usbtrace.capture import reader as reader_module
from usbtrace.capture.reader import CaptureStats, events
from usbtrace.errors import CaptureFormatError
from usbtrace.records import Event


def decoded(data: bytes, monkeypatch: pytest.MonkeyPatch | None = None
            ) -> tuple[list[Event], dict[str, Any], str | None, int]:
    stats = CaptureStats()
    out: list[Event] = []
    failure = None
    reports: list[int] = []
    try:
        out.extend(events(io.BytesIO(data), stats, progress=reports.append))
    except CaptureFormatError as e:
        failure = str(e)
    state = {k: (list(v), v.total) if k == "malformed" else v for k, v in vars(stats).items()}
    return out, state, failure, sum(reports)


def same_either_way(data: bytes, monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    fast = decoded(data)
    with monkeypatch.context() as m:
        m.setattr(reader_module, "USBMON_PCAP_LOOP", False)
        general = decoded(data)
    assert fast == general
    return fast[0]


def pcap_captures() -> list[Path]:
    """Every capture of the shared folder, classic pcap and pcapng."""
    found = sorted(p for p in CAPTURES.glob("*") if p.is_file()
                   and p.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4",
                                              b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a"))
    if len(found) < 2:
        pytest.skip(f"no captures in {CAPTURES}")
    return found


def test_real_captures_decode_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = 0
    kinds = set()
    for path in pcap_captures():
        taken += len(same_either_way(path.read_bytes(), monkeypatch))
        kinds.add(path.read_bytes()[:4])
    assert taken > 20000 and len(kinds) >= 2


def test_appended_cut_and_corrupted_captures_decode_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(12)
    captures = [p.read_bytes() for p in pcap_captures()]
    ng = [data for data in captures if data[:4] == b"\x0a\x0d\x0d\x0a"]
    variants = [captures[0] + captures[-1], captures[-1] + captures[0], ng[0] + ng[-1],
                ng[-1] + ng[0]]
    for data in captures:
        variants += [data[:cut] for cut in rng.sample(range(24, len(data)), 8)]
        for _ in range(12):
            damaged = bytearray(data[:20000])
            for _ in range(rng.randint(1, 6)):
                damaged[rng.randrange(24, len(damaged))] = rng.randrange(256)
            variants.append(bytes(damaged))
    for data in variants:
        same_either_way(data, monkeypatch)


def mmapped_iso_record(ndesc: int, data: bytes, kind: bytes = b"C") -> bytes:
    """A usbmon 220 isochronous completion whose data follows ``ndesc`` descriptors."""
    header = struct.pack("<QBBBBHBBqiiII8s", 0xABC, kind[0], 0, 0x81, 3, 1, 0x2D, 0,
                         1, 2, 0, len(data), 16 * ndesc + len(data), b"\0" * 8)
    extension = struct.pack("<iiII", 1, 0, 0, ndesc)
    body = header + extension + b"\0" * (16 * ndesc) + data
    return struct.pack("<IIII", 1, 5, len(body), len(body)) + body


def test_isochronous_descriptors_and_big_endian_files(monkeypatch: pytest.MonkeyPatch) -> None:
    head220 = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 220)
    records = [mmapped_iso_record(n, bytes(range(n, n + 7))) for n in (0, 1, 3)]
    got = same_either_way(head220 + b"".join(records), monkeypatch)
    assert [e.data for e in got] == [bytes(range(n, n + 7)) for n in (0, 1, 3)]
    # a big-endian file: the headers in the capturing host's order
    header = struct.pack(">QBBBBHBBqiiII8s", 7, 0x53, 3, 0x02, 4, 1, 0x2D, 0, 1, 2, -115,
                         3, 3, b"\0" * 8) + b"abc"
    big = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 189) + \
        struct.pack(">IIII", 9, 10, len(header), len(header)) + header
    event, = same_either_way(big, monkeypatch)
    assert (event.irp_id, event.data, event.device) == (7, b"abc", 4)
