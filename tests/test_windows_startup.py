"""The start-up and mount stream of Windows 10, recorded and compared with a real capture.

``ajbanjara__USBMSC-USBPcap.pcapng`` is USBPcap on Windows 10 while a Kingston stick
was plugged in and mounted (shared/captures/INDEX.md).  ``usbtrace record`` on the
simulated stick, exported as USBPcap, must show the same control requests and SCSI
commands, in the same order, up to the disk-arrival read of LBA 0 (after that the file
system decides, and the capture's is exFAT): the same setup packets, CDBs, directions,
transfer lengths and LUNs, apart from what the device answers (the configuration's
wTotalLength and a string's bLength, which the second step of each read asks for, and
the serial number's string index).

What pins the order, request by request:

* the descriptors, strings in two steps, SELECT_CONFIGURATION, SELECT_INTERFACE and
  GET_MAX_LUN: usbstor's start-up (ReactOS ``drivers/usb/usbstor/fdo.c`` and
  ``descriptor.c`` for the order; the two-step strings, SELECT_INTERFACE and the
  IRP reuse are Windows 10's, from the capture), and USBPcap's own SETUP packet for
  SELECT_INTERFACE (``USBPcapDriver/USBPcapURB.c``: bmRequestType 0x00);
* INQUIRY, READ FORMAT CAPACITIES (0xFC bytes, for a direct-access device):
  ReactOS ``pdo.c``, USBSTOR_CreatePDO; then INQUIRY VPD 0x80 (255 bytes);
* READ CAPACITY, MODE SENSE(6) page 0x1C then page 0x08 (192 bytes each), no TEST
  UNIT READY: classpnp/disk's DiskInitFdo (DiskDetectFailurePrediction) and
  DiskStartFdo (DiskGetCacheInformation);
* READ CAPACITY on each geometry or length request for removable media (disk.c,
  DiskIoctlGetDriveGeometry), and the partition table at LBA 0 (IoReadPartitionTableEx);
* every CBW's tag is the low 32 bits of the address of the IRP that carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from tests.conftest import shared_capture
from usbtrace.capture.reader import CaptureStats, events
from usbtrace.cli import main
from usbtrace.records import BULK, COMPLETE, CONTROL, SUBMIT
from usbtrace.storage import scsi

WINDOWS_10 = "ajbanjara__USBMSC-USBPcap.pcapng"
GET_DESCRIPTOR = 6
STRING = 3


@dataclass
class Stream:
    requests: list[tuple[object, ...]]  # control requests and CBWs, normalised
    control_irps: list[int]  # for each control request: which IRP (in order of first use)
    tags_are_irp_addresses: bool


def startup_stream(path: Path) -> Stream:
    """Control requests and CBWs up to and including the first READ(10)."""
    with path.open("rb") as f:
        evs = list(events(f, CaptureStats()))
    answers: dict[int, bytes] = {}  # control IRP -> the data of its latest completion
    requests: list[tuple[object, ...]] = []
    control_irps: list[int] = []
    irp_labels: dict[int, int] = {}
    tags_ok = True
    serial_index = None
    last_descriptor: tuple[int, int, int] | None = None  # (wValue, wIndex, answered length)
    pending: dict[int, tuple[int, int]] = {}  # IRP -> (wValue, wIndex) of a GET_DESCRIPTOR
    for e in evs:
        if e.kind == COMPLETE and e.transfer_type == CONTROL and e.irp_id in pending:
            value, index = pending.pop(e.irp_id)
            data = e.data
            answers[e.irp_id] = data
            kind = value >> 8
            if kind == 1 and len(data) >= 17:
                serial_index = data[16]  # iSerialNumber
            answered = (int.from_bytes(data[2:4], "little") if kind == 2 and len(data) >= 4
                        else data[0] if data else 0)
            last_descriptor = (value, index, answered)
            continue
        if e.kind != SUBMIT:
            continue
        if e.transfer_type == CONTROL and e.setup is not None:
            bm, request = e.setup[0], e.setup[1]
            value = int.from_bytes(e.setup[2:4], "little")
            index = int.from_bytes(e.setup[4:6], "little")
            length: object = int.from_bytes(e.setup[6:8], "little")
            shown_value: object = value
            if (bm, request) == (0x80, GET_DESCRIPTOR):
                if last_descriptor is not None and last_descriptor[:2] == (value, index):
                    assert length == last_descriptor[2], "the second step asks what was answered"
                    length = "as answered"
                if value >> 8 == STRING and value & 0xFF and value & 0xFF == serial_index:
                    shown_value = "iSerialNumber"
                pending[e.irp_id] = (value, index)
            requests.append(("control", e.urb_function, bm, request, shown_value, index, length))
            control_irps.append(irp_labels.setdefault(e.irp_id, len(irp_labels)))
            continue
        if e.transfer_type == BULK and e.endpoint is not None and not e.endpoint & 0x80 \
                and e.data[:4] == b"USBC" and len(e.data) >= 31:
            d = e.data
            tag = int.from_bytes(d[4:8], "little")
            tags_ok &= tag == e.irp_id & 0xFFFFFFFF
            cdb = bytes(d[15 : 15 + d[14]])
            requests.append(("scsi", int.from_bytes(d[8:12], "little"), d[12] & 0x80, d[13],
                             cdb.hex()))
            if cdb[0] == scsi.READ_10:
                break
    return Stream(requests, control_irps, tags_ok)


def recorded_stream(tmp_path: Path) -> Stream:
    db, out = str(tmp_path / "r.db"), tmp_path / "r.pcapng"
    runner = CliRunner()
    result = runner.invoke(main, ["record", "--db", db, "--size", "16M", "--workload", "read"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["export", "1", "--db", db, "-o", str(out),
                                  "--linktype", "usbpcap"])
    assert result.exit_code == 0, result.output
    return startup_stream(out)


def test_windows_10_capture_stream_is_what_the_references_say() -> None:
    """The capture itself: the stream the model must produce, spelled out."""
    windows = startup_stream(shared_capture(WINDOWS_10))
    control = [r[1:] for r in windows.requests if r[0] == "control"]
    assert control == [
        (0x0B, 0x80, 6, 0x0100, 0, 18),  # device descriptor
        (0x0B, 0x80, 6, 0x0200, 0, 9),  # configuration: its header ...
        (0x0B, 0x80, 6, 0x0200, 0, "as answered"),  # ... then wTotalLength
        (0x0B, 0x80, 6, 0x0300, 0, 2),  # language IDs: bLength ...
        (0x0B, 0x80, 6, 0x0300, 0, "as answered"),  # ... then all of it
        (0x0B, 0x80, 6, "iSerialNumber", 0x0409, 2),  # the serial number, the same way
        (0x0B, 0x80, 6, "iSerialNumber", 0x0409, "as answered"),
        (0x00, 0x00, 9, 1, 0, 0),  # SELECT_CONFIGURATION (SET_CONFIGURATION 1)
        (0x01, 0x00, 11, 0, 0, 0),  # SELECT_INTERFACE, as USBPcap writes its SETUP
        (0x1B, 0xA1, 0xFE, 0, 0, 1),  # GET_MAX_LUN
    ]
    # the device descriptor and GET_MAX_LUN on IRPs of their own; one IRP between
    assert windows.control_irps == [0, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    opcodes = [bytes.fromhex(str(r[4]))[0] for r in windows.requests if r[0] == "scsi"]
    assert opcodes == [scsi.INQUIRY, scsi.INQUIRY, scsi.READ_FORMAT_CAPACITIES, scsi.INQUIRY,
                       scsi.READ_CAPACITY_10, scsi.MODE_SENSE_6, scsi.MODE_SENSE_6,
                       scsi.READ_CAPACITY_10, scsi.INQUIRY, scsi.READ_CAPACITY_10,
                       scsi.READ_CAPACITY_10, scsi.READ_CAPACITY_10, scsi.READ_10]
    assert scsi.TEST_UNIT_READY not in opcodes
    assert windows.tags_are_irp_addresses


def test_recorded_start_up_and_mount_equal_windows_10(tmp_path: Path) -> None:
    windows = startup_stream(shared_capture(WINDOWS_10))
    model = recorded_stream(tmp_path)
    assert model.requests == windows.requests
    assert model.control_irps == windows.control_irps
    assert model.tags_are_irp_addresses
