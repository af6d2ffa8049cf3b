"""``usbtrace replay``: load a recording, replay it in one mode, report."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from usbtrace.devices.base import DeviceBackend
from usbtrace.devices.image import DiskImage, parse_size
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.errors import InputError
from usbtrace.replay.device import replay_device
from usbtrace.replay.host import replay_host
from usbtrace.replay.recording import Recording, load_capture, load_session
from usbtrace.replay.report import Report
from usbtrace.replay.timing import Clock

logger = logging.getLogger(__name__)
MAX_SESSION = (1 << 63) - 1  # session ids are signed 64-bit integers


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long, or with a NUL in it
        return False


def session_number(source: str) -> int | None:
    """N for ``session:N`` (or a bare N that is not a file here); None for a path."""
    text = source.removeprefix("session:")
    if not (text.isascii() and text.isdigit()) or (text == source and _exists(source)):
        if source.startswith("session:") and not _exists(source):
            raise InputError(f"{source}: a session is session:N, N a number from 1")
        return None
    number = int(text)
    if not 1 <= number <= MAX_SESSION:
        raise InputError(f"{source}: no such session (sessions are numbered from 1)")
    return number


def recorded_device(text: str) -> tuple[int, int]:
    """``BUS.ADDRESS`` (``1.8``): a device of the recording, as ``log`` shows it."""
    bus, dot, address = text.partition(".")
    if dot and bus.isascii() and bus.isdigit() and address.isascii() and address.isdigit() \
            and int(bus) <= 0xFFFF and int(address) <= 127:
        return int(bus), int(address)
    raise InputError(f"--recorded-device {text}: give BUS.ADDRESS, as usbtrace log shows "
                     "it (1.8)")


def load(source: str, db: str | None = None,
         device: tuple[int, int] | None = None) -> Recording:
    """A capture file path, or ``session:N`` / ``N`` for a session in ``db``; its
    storage device ``device`` (bus, address), or the one whose command came first."""
    number = session_number(source)
    if number is not None:
        from usbtrace.store.database import Database

        database = Database(db or "usbtrace.db", create=False, readonly=True)
        return load_session(database, number, device)
    if "\0" in source:
        raise InputError("the source's name has a NUL byte in it")
    return load_capture(Path(source), device)


def target_image(recording: Recording, against: str | None) -> DiskImage:
    """The medium a host replay runs against: ``against`` seen copy-on-write (the file is
    never written, nor read whole), or a blank sparse one of the recorded capacity."""
    if against:
        path = Path(against)
        if not path.is_file():
            raise InputError(f"--against {against}: no such image file")
        return DiskImage.copy_on_write(path)
    if recording.capacity is not None:
        blocks, size = recording.capacity
        if size != 512:
            raise InputError(f"the recording's device has {size}-byte blocks; give --against")
        if blocks >= 1:
            return DiskImage.in_memory(blocks * size)  # sparse: any capacity costs nothing
    return DiskImage.in_memory(max(parse_size("64M"), recording.survey.highest_block * 512))


def check_options(mode: str, speed: float | None, max_gap: float | None) -> None:
    """Refuse what cannot run, before anything runs."""
    if mode not in ("device", "host"):
        raise InputError(f"--mode must be device or host, not {mode!r}")
    if speed is not None and not (math.isfinite(speed) and speed > 0):
        raise InputError(f"--speed must be a number above 0, not {speed}")
    if max_gap is not None and not (math.isfinite(max_gap) and max_gap >= 0):
        raise InputError(f"--max-gap must be 0 or more seconds, not {max_gap}")


def writing_commands(recording: Recording) -> tuple[int, str | None]:
    """How many recorded commands a read-only device would refuse (they write, or change
    the device's state), and the first one's name: a replay to real hardware needs
    ``--allow-write`` for them, as ``record`` does for a writing workload."""
    from usbtrace.devices.hardware import read_only_cdb

    count, first = 0, None
    for cmd in recording.commands():
        if not read_only_cdb(bytes(cmd.cdb)) or (cmd.data_direction == "out"
                                                 and cmd.expected_length):
            count += 1
            first = first or cmd.info.name
    return count, first


def hardware_target(recording: Recording, device: str, usb_backend: str,
                    allow_write: bool) -> DeviceBackend:
    """The real device a host replay sends to, under ``record``'s write safety: refused
    before anything is sent when the recording writes and ``allow_write`` is not given,
    and read-only at the transfer level (``HardwareDevice``) all the same."""
    from usbtrace.recording import RecordOptions, open_hardware

    writes, first = writing_commands(recording)
    if writes and not allow_write:
        raise InputError(f"the recording has {writes} command(s) that write to the device or "
                         f"change it (the first: {first}); pass --allow-write if nothing on "
                         "it matters (see README: real hardware)")
    logger.info("host replay to %s (%s): %d writing commands", device, usb_backend, writes)
    return open_hardware(RecordOptions(device=device, usb_backend=usb_backend,
                                       allow_write=allow_write))


def replay(source: str, mode: str = "device", against: str | None = None,
           speed: float | None = None, max_gap: float | None = None,
           db: str | None = None, clock: Clock | None = None, device: str | None = None,
           usb_backend: str = "libusb", allow_write: bool = False,
           recorded: str | None = None) -> Report:
    check_options(mode, speed, max_gap)
    if device is not None and mode != "host":
        raise InputError("--device replays the recorded host to a real device: it needs "
                         "--mode host")
    if device is not None and against is not None:
        raise InputError("--against is the simulated target's image; a --device has its own "
                         "medium: give one of them")
    recording = load(source, db, recorded_device(recorded) if recorded is not None else None)
    logger.info("replaying %s in %s mode: %d commands", source, mode, recording.count)
    report = Report(source, mode, commands=recording.count)
    for note in recording.notes:
        report.note(note)
    t0 = time.perf_counter()
    if mode == "device":
        replay_device(recording, report)
    else:
        target = hardware_target(recording, device, usb_backend, allow_write) if device \
            else SimulatedStick(target_image(recording, against), speed="high",
                                protocol="uas" if recording.uas is not None else "bot")
        try:
            replay_host(recording, target, report, speed, max_gap, clock)
        finally:
            target.close()
    report.seconds = time.perf_counter() - t0
    logger.info("replay done in %.3f s: %s", report.seconds,
                "identical" if report.identical else "diverged")
    return report
