"""A recording of several storage devices: replay takes one, says so, and lets the user
pick; ``--json -`` leaves standard output to the JSON alone."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from usbtrace.capture import usbmon
from usbtrace.cli import main
from usbtrace.replay.run import replay

from .test_capture_variants import EINPROGRESS, READ_10, TUR, cbw, csw, pcap


def _record(device: int, urb: int, kind: str, endpoint: int, length: int,
            payload: bytes) -> bytes:
    """A usbmon bulk record (48-byte header) of bus 1, ``device``."""
    status = EINPROGRESS if kind == "S" else 0
    flag_data = 0 if payload else ord("<" if endpoint & 0x80 else ">")
    return usbmon.HEADER_LE.pack(urb, ord(kind), 3, endpoint, device, 1, ord("-"), flag_data,
                                 0, 0, status, length, len(payload), bytes(8)) + payload


def _command(device: int, tag: int, cdb: bytes, data_in: bytes = b"") -> list[bytes]:
    urb = (device << 20) + tag * 16
    out = [_record(device, urb, "S", 0x02, 31, cbw(tag, len(data_in), bool(data_in), cdb)),
           _record(device, urb, "C", 0x02, 31, b"")]
    if data_in:
        out += [_record(device, urb + 1, "S", 0x81, len(data_in), b""),
                _record(device, urb + 1, "C", 0x81, len(data_in), data_in)]
    return out + [_record(device, urb + 2, "S", 0x81, 13, b""),
                  _record(device, urb + 2, "C", 0x81, 13, csw(tag))]


def _two_sticks(tmp_path: Path) -> Path:
    """Device 1.5 sends the first command (two in all), device 1.6 three."""
    records = (_command(5, 1, TUR) + _command(6, 1, TUR) + _command(5, 2, READ_10, bytes(512))
               + _command(6, 2, TUR) + _command(6, 3, TUR))
    path = tmp_path / "two.pcap"
    path.write_bytes(pcap(records))
    return path


def test_the_other_devices_commands_are_named_not_passed_over(tmp_path: Path) -> None:
    report = replay(str(_two_sticks(tmp_path)), "host")
    assert (report.commands, report.replayed) == (2, 2)
    assert report.identical  # what it replayed matched, and the text says what it left out
    assert any("3 more command(s) on 1 other device(s) (1.6: 3)" in note and
               "--recorded-device" in note for note in report.notes), report.notes
    assert "caveat" in report.text()


def test_recorded_device_picks_the_device_replayed(tmp_path: Path) -> None:
    report = replay(str(_two_sticks(tmp_path)), "host", recorded="1.6")
    assert (report.commands, report.replayed, report.identical) == (3, 3, True)
    assert any("(1.5: 2)" in note and "--recorded-device" not in note
               for note in report.notes), report.notes


def test_a_recorded_device_without_commands_is_one_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["replay", str(_two_sticks(tmp_path)),
                                       "--recorded-device", "1.9"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "usbtrace: error: two.pcap: no SCSI commands of device 1.9; the recording has "
        "commands of 1.5, 1.6"]
    result = CliRunner().invoke(main, ["replay", str(_two_sticks(tmp_path)),
                                       "--recorded-device", "5"])
    assert result.exit_code == 2 and "give BUS.ADDRESS" in result.stderr


def test_json_to_standard_output_is_the_json_alone(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["replay", str(_two_sticks(tmp_path)), "--mode", "host",
                                       "--json", "-"])
    assert result.exit_code == 0
    body = json.loads(result.stdout)  # no text report before it
    assert (body["commands"], body["identical"]) == (2, True)
    assert result.stderr.startswith("replay of ")  # the report people read, apart
