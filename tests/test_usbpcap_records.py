"""USBPcap records that are not plain transfers: pipe requests (ABORT_PIPE) and the
control STATUS stage, from the record layout of USBPcap's driver (USBPcapURB.c)."""

from __future__ import annotations

import io
import sqlite3
import struct
from pathlib import Path

import pytest

from usbtrace.capture.usbpcap import (
    HEADER,
    STAGE_DATA,
    STAGE_SETUP,
    STAGE_STATUS,
    TRANSFER_CONTROL,
    TRANSFER_IRP_INFO,
    TRANSFER_UNKNOWN,
)
from usbtrace.importing import import_capture
from usbtrace.store.database import Database
from usbtrace.usb.urb import URB_FUNCTION_ABORT_PIPE, URB_FUNCTION_CONTROL_TRANSFER

DOWN, UP = 0, 1  # the info byte: FDO -> PDO (submission), PDO -> FDO (completion)


def record(irp: int, info: int, endpoint: int, transfer: int, payload: bytes = b"",
           function: int = URB_FUNCTION_CONTROL_TRANSFER, stage: int | None = None) -> bytes:
    extra = bytes([stage]) if stage is not None else b""
    return HEADER.pack(27 + len(extra), irp, 0, function, info, 1, 5, endpoint, transfer,
                       len(payload)) + extra + payload


def pcap(path: Path, records: list[bytes]) -> Path:
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 249))
    for i, data in enumerate(records):
        out.write(struct.pack("<IIII", 1_000_000, i, len(data), len(data)) + data)
    path.write_bytes(out.getvalue())
    return path


def imported(tmp_path: Path, records: list[bytes]) -> tuple[sqlite3.Connection, int]:
    result = import_capture(Database(tmp_path / "t.db"), pcap(tmp_path / "c.pcap", records))
    assert result.malformed == []
    return sqlite3.connect(tmp_path / "t.db"), result.records


ABORT = dict(function=URB_FUNCTION_ABORT_PIPE)


@pytest.mark.parametrize("records", [
    # sent down and back, on the aborted pipe
    [record(0xA0, DOWN, 0x81, TRANSFER_IRP_INFO, **ABORT),  # type: ignore[arg-type]
     record(0xA0, UP, 0x81, TRANSFER_IRP_INFO, **ABORT)],  # type: ignore[arg-type]
    # both records with the direction bit of the way down
    [record(0xA0, DOWN, 0x81, TRANSFER_IRP_INFO, **ABORT),  # type: ignore[arg-type]
     record(0xA0, DOWN, 0x81, TRANSFER_IRP_INFO, **ABORT)],  # type: ignore[arg-type]
    # the return no longer names the pipe
    [record(0xA0, DOWN, 0x81, TRANSFER_IRP_INFO, **ABORT),  # type: ignore[arg-type]
     record(0xA0, UP, 0x00, TRANSFER_UNKNOWN, **ABORT)],  # type: ignore[arg-type]
], ids=["down-up", "down-down", "pipe-forgotten"])
def test_abort_pipe_is_one_paired_row(tmp_path: Path, records: list[bytes]) -> None:
    conn, _ = imported(tmp_path, records)
    rows = conn.execute("SELECT record_number, submitted_at IS NOT NULL, "
                        "completed_at IS NOT NULL, endpoint, urb_function FROM urbs").fetchall()
    assert rows == [(1, 1, 1, 0x81, "abort_pipe")]


def test_status_stage_completes_an_out_control_transfer_and_folds_after_data(
        tmp_path: Path) -> None:
    set_configuration = bytes.fromhex("0009010000000000")
    get_descriptor = bytes.fromhex("8006000100001200")
    bulk_reset = bytes.fromhex("21ff000000000000")
    conn, file_records = imported(tmp_path, [
        # OUT, no data: SETUP down, STATUS up — the STATUS stage is the only return
        record(1, DOWN, 0x00, TRANSFER_CONTROL, set_configuration, stage=STAGE_SETUP),
        record(1, UP, 0x00, TRANSFER_CONTROL, stage=STAGE_STATUS),
        # IN with data: SETUP down, DATA up, STATUS up — the STATUS stage adds nothing
        record(2, DOWN, 0x80, TRANSFER_CONTROL, get_descriptor, stage=STAGE_SETUP),
        record(2, UP, 0x80, TRANSFER_CONTROL, bytes(18), stage=STAGE_DATA),
        record(2, UP, 0x80, TRANSFER_CONTROL, stage=STAGE_STATUS),
        # a Bulk-Only reset: OUT, its end is its STATUS stage
        record(3, DOWN, 0x00, TRANSFER_CONTROL, bulk_reset, stage=STAGE_SETUP),
        record(3, UP, 0x00, TRANSFER_CONTROL, stage=STAGE_STATUS),
    ])
    rows = conn.execute("SELECT record_number, completed_at IS NOT NULL, actual_length, "
                        "captured_length FROM urbs ORDER BY seq").fetchall()
    assert rows == [(1, 1, None, 0), (3, 1, 18, 18), (6, 1, None, 0)]
    count, notes = conn.execute("SELECT record_count, notes FROM sessions").fetchone()
    assert (file_records, count) == (7, 6)
    assert notes.startswith("1 USBPcap control-stage records were folded into their transfers")
