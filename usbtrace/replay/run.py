"""``usbtrace replay``: load a recording, replay it in one mode, report."""

from __future__ import annotations

import time
from pathlib import Path

from usbtrace.devices.image import DiskImage, parse_size
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.errors import InputError
from usbtrace.replay.device import replay_device
from usbtrace.replay.host import replay_host
from usbtrace.replay.recording import Recording, load_capture, load_session
from usbtrace.replay.report import Report


def load(source: str, db: str | None = None) -> Recording:
    """A capture file path, or ``session:N`` / ``N`` for a session in ``db``."""
    text = source.removeprefix("session:")
    if text.isdigit() and not Path(source).exists():
        from usbtrace.store.database import Database

        return load_session(Database(db or "usbtrace.db", create=False, readonly=True),
                            int(text))
    return load_capture(Path(source))


def target_image(recording: Recording, against: str | None) -> DiskImage:
    """The medium a host replay runs against: a copy of ``against`` (never written),
    or a blank one of the recorded capacity."""
    if against:
        path = Path(against)
        if not path.is_file():
            raise InputError(f"--against {against}: no such image file")
        return DiskImage.from_bytes(path.read_bytes())
    if recording.capacity is not None:
        blocks, size = recording.capacity
        if size != 512:
            raise InputError(f"the recording's device has {size}-byte blocks; give --against")
        return DiskImage.in_memory(blocks * size)
    return DiskImage.in_memory(parse_size("64M"))


def replay(source: str, mode: str = "device", against: str | None = None,
           speed: float | None = None, max_gap: float | None = None,
           db: str | None = None) -> Report:
    if mode not in ("device", "host"):
        raise InputError(f"--mode must be device or host, not {mode!r}")
    recording = load(source, db)
    report = Report(source, mode, commands=len(recording.commands))
    t0 = time.perf_counter()
    if mode == "device":
        replay_device(recording, report)
    else:
        stick = SimulatedStick(target_image(recording, against), speed="high")
        replay_host(recording, stick, report, speed, max_gap)
    report.seconds = time.perf_counter() - t0
    return report
