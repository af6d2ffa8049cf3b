"""pcapng files whose interfaces change what a record means: several interfaces in one
section (``mergecap -I none``, usbmon0 beside usbmon1), sections joined end to end
(ring-buffer files, ``cat``), and devices whose URBs share ids.  Built with
``tests/blocks.py``."""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .blocks import READ_10, T0, TUR, command, epb, idb, shb


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def session(db: Path) -> tuple[str, float, str | None]:
    return sqlite3.connect(db).execute(
        "SELECT started_at, time_origin, notes FROM sessions").fetchone()


def test_one_address_through_two_interfaces_of_a_section_is_said_on_import_and_in_stats(
        tmp_path: Path) -> None:
    # usbmon0 (every bus) captured beside usbmon1: the same traffic twice, in one section,
    # as dumpcap -i usbmon0 -i usbmon1 writes it.  Events carry no interface, so the
    # decode takes both for one device: the note says so and how to split the file.
    records = command(1, TUR) + command(2, READ_10, bytes(512))
    blocks = [shb(), idb("usbmon0"), idb("usbmon1")]
    for i, r in enumerate(records):
        blocks += [epb(0, T0 * 10**6 + 10 * i, r), epb(1, T0 * 10**6 + 10 * i + 1, r)]
    path = tmp_path / "usbmon0-and-1.pcapng"
    path.write_bytes(b"".join(blocks))
    db = tmp_path / "t.db"
    code, out, err = invoke("import", "--db", str(db), str(path))
    assert code == 0, err
    _, _, notes = session(db)
    said = ("bus 1 address 5 through interfaces 0 (usbmon0) and 1 (usbmon1). To decode each "
            f"interface apart, split the file: tshark -r {path} -Y 'frame.interface_id == 0' "
            "-w part0.pcapng")
    assert said in notes and "decoded as one device" in notes
    assert "note: devices seen through more than one interface" in err and said in err
    code, out, err = invoke("stats", "1", "--db", str(db))
    assert code == 0 and said in out.splitlines()[-1]  # under the tables
    code, out, err = invoke("stats", "1", "--db", str(db), "--format", "csv")
    assert code == 0 and said in err and said not in out  # csv rows stay rows
    code, out, err = invoke("stats", "1", "--db", str(db), "--format", "json")
    assert code == 0 and said in json.loads(out)["notes"][0]


def test_sections_joined_end_to_end_continue_one_device_without_a_note(
        tmp_path: Path) -> None:
    # ring-buffer files of one host joined with cat: a command's CBW in one section, its
    # data and CSW in the next; interface 0 of each is the same bus, not another device
    records = command(1, TUR) + command(2, READ_10, bytes(512))
    cut = 7  # after the second command's CBW submission and completion
    first = [shb(), idb("usbmon1")] + [epb(0, T0 * 10**6 + i, r)
                                       for i, r in enumerate(records[:cut])]
    second = [shb(), idb("usbmon1")] + [epb(0, T0 * 10**6 + cut + i, r)
                                        for i, r in enumerate(records[cut:])]
    path = tmp_path / "ring.pcapng"
    path.write_bytes(b"".join(first + second))
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert (result.commands, result.malformed, result.caveats) == (2, [], [])
    rows = sqlite3.connect(db).execute(
        "SELECT tag, opcode, data_length, status FROM scsi_commands ORDER BY seq").fetchall()
    assert rows == [(1, 0x00, 0, "good"), (2, 0x28, 512, "good")]
    assert "interface" not in (session(db)[2] or "")


def test_two_buses_on_two_interfaces_are_two_devices_without_a_note(tmp_path: Path) -> None:
    # dumpcap -i usbmon1 -i usbmon2: each interface its own bus, so bus and address
    # tell the devices apart, and nothing is said
    blocks = [shb(), idb("usbmon1"), idb("usbmon2")]
    for i, (a, b) in enumerate(zip(command(1, TUR, bus=1), command(3, TUR, bus=2))):
        blocks += [epb(0, T0 * 10**6 + 2 * i, a), epb(1, T0 * 10**6 + 2 * i + 1, b)]
    path = tmp_path / "two-buses.pcapng"
    path.write_bytes(b"".join(blocks))
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert (result.commands, result.caveats) == (2, [])
    assert sqlite3.connect(db).execute(
        "SELECT bus, device, tag, status FROM scsi_commands ORDER BY seq").fetchall() == \
        [(1, 5, 1, "good"), (2, 5, 3, "good")]


def test_two_devices_whose_urbs_have_the_same_ids_pair_apart(tmp_path: Path) -> None:
    # QEMU records each device on its own (-device usb-storage,pcap=FILE), its URB ids
    # from 0; two such files merged with mergecap give two devices the same ids.  A
    # URB is its device's: keyed on the id and endpoint alone, the second device's CSW
    # request replaced the first's, the first's CSW completed it, and the first
    # device's command ended "missing" while the second got two CSWs.
    a = command(1, TUR, bus=0, device=1)
    b = command(2, TUR, bus=0, device=2)
    b = [struct.pack("<Q", 16 if i < 2 else 18) + r[8:] for i, r in enumerate(b)]  # a's ids
    merged = a[:2] + b[:2] + [a[2], b[2], a[3], b[3]]  # both wait for their CSW at once
    path = tmp_path / "qemu-two-sticks.pcapng"
    path.write_bytes(b"".join([shb(), idb()] + [epb(0, T0 * 10**6 + i, r)
                                                for i, r in enumerate(merged)]))
    db = tmp_path / "t.db"
    result = import_capture(Database(db), path)
    assert (result.commands, result.malformed) == (2, [])
    assert sqlite3.connect(db).execute(
        "SELECT device, tag, status FROM scsi_commands ORDER BY device"
    ).fetchall() == [(1, 1, "good"), (2, 2, "good")]


def test_a_shared_address_is_named_with_its_section_when_sections_follow(
        tmp_path: Path) -> None:
    # the interfaces' names and the section hold when another section comes after
    records = command(1, TUR)
    blocks = [shb(), idb("usbmon0"), idb("usbmon1")]
    blocks += [epb(i % 2, T0 * 10**6 + i, records[i // 2]) for i in range(2 * len(records))]
    blocks += [shb(), idb("usbmon1")] + [epb(0, T0 * 10**6 + 100 + i, r)
                                         for i, r in enumerate(command(2, TUR))]
    path = tmp_path / "then-a-section.pcapng"
    path.write_bytes(b"".join(blocks))
    result = import_capture(Database(tmp_path / "t.db"), path)
    shared, = [c for c in result.caveats if c.startswith("devices seen")]
    assert "bus 1 address 5 through interfaces 0 (usbmon0) and 1 (usbmon1) of section 0. " \
        in shared


def test_a_file_of_many_sections_keeps_what_it_says_bounded(tmp_path: Path) -> None:
    # every section describes an interface with a name and reports its statistics: what
    # the reader keeps of them stopped growing nowhere (630 bytes a section: 190 MB
    # for a 34 MB file), though the notes name a few
    import io

    from usbtrace.capture.pcap import KEPT, CaptureReader

    from .blocks import block, option

    isb = block(5, struct.pack("<III", 0, 0, 0) + option(5, struct.pack("<Q", 1)) +
                option(0, b""))
    sections = KEPT + 100
    data = b"".join([shb(), idb("usbmon1")] + [epb(0, T0 * 10**6 + i, r)
                                               for i, r in enumerate(command(1, TUR))])
    data += (shb() + idb("usbmon1") + isb) * sections
    reader = CaptureReader(io.BytesIO(data))
    assert len(list(reader.records())) == 4
    assert len(reader.drops) == len(reader.interface_names) == len(reader.linktypes) == KEPT
    assert reader.malformed == [(5, f"drop counts of more than {KEPT} interfaces: the rest "
                                    "are not counted")]
    assert sum(d.dropped() for d in reader.drops.values()) == KEPT  # the kept are counted
