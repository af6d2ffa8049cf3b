"""Reading Wireshark's own decode of a capture, for field-by-field comparison."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FIELDS = ["frame.number", "usbms.dCBWSignature", "usbms.dCSWSignature", "usbms.dCBWTag",
          "scsi_sbc.opcode", "scsi.spc.opcode", "scsi_sbc.rdwr10.lba",
          "scsi_sbc.rdwr10.xferlen", "usbms.dCSWStatus"]


@dataclass
class TsharkCommand:
    frame: int
    tag: int
    opcode: int | None
    lba: int | None
    blocks: int | None
    status: int | None = None  # None: no CSW seen


def available() -> bool:
    return shutil.which("tshark") is not None


def _int(text: str) -> int | None:
    text = text.split(",")[0].strip()
    return int(text, 0) if text else None


def scsi_commands(path: Path) -> list[TsharkCommand]:
    args = ["tshark", "-r", str(path), "-Y", "usbms", "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=f"]
    for field in FIELDS:
        args += ["-e", field]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    commands: list[TsharkCommand] = []
    open_by_tag: dict[int, TsharkCommand] = {}
    for line in out.splitlines():
        cols = line.split("\t") + [""] * len(FIELDS)
        frame, cbw, csw, tag, sbc, spc, lba, xfer, status = cols[: len(FIELDS)]
        if cbw:
            t = _int(tag)
            assert t is not None
            cmd = TsharkCommand(int(frame), t, _int(sbc) if sbc else _int(spc), _int(lba),
                                _int(xfer))
            commands.append(cmd)
            open_by_tag[t] = cmd
        elif csw:
            t = _int(tag)
            cmd_open = open_by_tag.pop(t, None) if t is not None else None
            if cmd_open is not None:
                cmd_open.status = _int(status)
    return commands


@dataclass
class SrtRow:
    opcode: int
    procedure: str
    calls: int
    min: float
    max: float
    avg: float
    sum: float


def scsi_srt(path: Path) -> dict[int, SrtRow]:
    """Wireshark's SCSI service response time table (``-z scsi,srt,0``), by opcode."""
    out = subprocess.run(["tshark", "-r", str(path), "-q", "-z", "scsi,srt,0"],
                         capture_output=True, text=True, check=True).stdout
    table: dict[int, SrtRow] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 7 and parts[0].isdigit():
            *name, calls, lo, hi, avg, total = parts[1:]
            table[int(parts[0])] = SrtRow(int(parts[0]), " ".join(name), int(calls),
                                          float(lo), float(hi), float(avg), float(total))
    return table


def srt_from_frames(path: Path) -> dict[int, tuple[int, float]]:
    """Where Wireshark decodes CBWs and CSWs but keeps no SRT table (a capture that
    starts after enumeration): per opcode, the count and mean of CBW frame time to
    the time of the CSW frame with the same tag, which is what its SRT measures."""
    args = ["tshark", "-r", str(path), "-Y", "usbms", "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=f"]
    for field in ("frame.time_epoch", "usbms.dCBWSignature", "usbms.dCSWSignature",
                  "usbms.dCBWTag", "scsi_sbc.opcode", "scsi.spc.opcode"):
        args += ["-e", field]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    pending: dict[int, tuple[float, int]] = {}
    times: dict[int, list[float]] = {}
    for line in out.splitlines():
        when, cbw, csw, tag, sbc, spc = (line.split("\t") + [""] * 6)[:6]
        t = _int(tag)
        if cbw and t is not None:
            opcode = _int(sbc) if sbc else _int(spc)
            if opcode is not None:
                pending[t] = (float(when), opcode)
        elif csw and t is not None and t in pending:
            start, opcode = pending.pop(t)
            times.setdefault(opcode, []).append(float(when) - start)
    return {op: (len(v), sum(v) / len(v)) for op, v in times.items()}


DATA_ONLY = "usb.transfer_type==3 && usb.data_len>0"  # bulk records that carry bytes


def data_only(path: Path, out: Path) -> Path:
    """The capture as Wireshark's "Export Specified Packets" of the records that carry
    bulk data gives it: no IN submissions, no OUT completions."""
    subprocess.run(["tshark", "-r", str(path), "-Y", DATA_ONLY, "-w", str(out)],
                   capture_output=True, check=True)
    return out


@dataclass
class BulkRecord:
    frame: int
    bus: int
    device: int
    endpoint: int
    from_host: bool
    payload: bytes  # the bytes the record carries, as captured


def bulk_records(path: Path) -> list[BulkRecord]:
    """Every bulk record that carries bytes, its payload cut from the raw frame after
    the header Wireshark names (USBPcap's own length; usbmon 48 or 64 bytes)."""
    args = ["tshark", "-r", str(path), "-Y", DATA_ONLY, "-T", "ek", "-x", "-J", "frame usb"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    records: list[BulkRecord] = []
    for line in out.splitlines():
        layers = json.loads(line).get("layers")
        if not layers or "frame_raw" not in layers:
            continue
        usb = layers["usb"]
        raw = bytes.fromhex(layers["frame_raw"])
        if "usb_usb_usbpcap_header_len" in usb:
            header = int(usb["usb_usb_usbpcap_header_len"])
        else:
            header = 64 if "usb_usb_iso_numdesc" in usb else 48
        number = int(layers["frame"]["frame_frame_number"])
        records.append(BulkRecord(number, int(usb["usb_usb_bus_id"]),
                                  int(usb["usb_usb_device_address"]),
                                  int(usb["usb_usb_endpoint_address"], 0),
                                  usb["usb_usb_src"] == "host", raw[header:]))
    return records


def csw_frames(path: Path) -> dict[int, int]:
    """The frame of the CSW that closes each command, by the frame of its CBW."""
    args = ["tshark", "-r", str(path), "-Y", "usbms", "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=f", "-e", "frame.number", "-e", "usbms.dCBWSignature",
            "-e", "usbms.dCSWSignature", "-e", "usbms.dCBWTag"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    open_by_tag: dict[int, int] = {}
    closed: dict[int, int] = {}
    for line in out.splitlines():
        frame, cbw, csw, tag = (line.split("\t") + [""] * 4)[:4]
        t = _int(tag)
        if t is None:
            continue
        if cbw:
            open_by_tag[t] = int(frame)
        elif csw and t in open_by_tag:
            closed[open_by_tag.pop(t)] = int(frame)
    return closed
