"""Shared fixtures: a started stack on a simulated stick, and leak checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from usbtrace.devices.image import DiskImage
from usbtrace.devices.simulated import SimulatedStick
from usbtrace.machine import Machine
from usbtrace.records import Event
from usbtrace.wdm import removelock

# Hypothesis checks properties, not speed: a busy machine must not fail a test by
# its per-example deadline (speed is the benchmarks' business).
settings.register_profile("usbtrace", deadline=None)
settings.load_profile("usbtrace")

# the tests run a checked build's remove locks: every driver's lock tracks its tags, so a
# release under the wrong IRP is a bug check wherever it happens (the benchmarks and the
# CLI run the free build, which only counts)
removelock.CHECKED_BUILD = True

CAPTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "captures"
# the third-party captures with mass-storage traffic (see ../shared/captures/INDEX.md)
STORAGE_CAPTURES = [
    "ajbanjara__usb_memory_stick.pcap",
    "ajbanjara__usb_memory_stick_create_file.pcap",
    "ajbanjara__STM32L052-Nucleo-via-hub-usbmon.pcapng",
    "ajbanjara__USBMSC-USBPcap.pcapng",
    "ctfs__fore2.pcap",
    "linux-qemu-fat16-xhci.usbmon.pcap",
    "linux-qemu-fat16-xhci.qemu.pcap",
]


def shared_capture(name: str) -> Path:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"third-party capture {name} not found beside the repository "
                    f"({CAPTURES}); see shared/captures/INDEX.md")
    return path


class Stack:
    """A started machine with the events its tracer saw."""

    def __init__(self, size: int = 8 << 20, speed: str = "super",
                 positions: tuple[str, ...] = ("lower", "upper")) -> None:
        self.events: list[Event] = []
        self.stick = SimulatedStick(DiskImage.in_memory(size), speed=speed)
        self.machine = Machine(self.stick, sink=self.events.append, positions=positions)
        self.machine.start()
        self.win32 = self.machine.win32

    def open(self) -> int:
        from usbtrace.machine import DISK_PATH

        return self.win32.CreateFile(DISK_PATH)


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    # a test that leaves an IRP in the host controller leaks it: fail loudly
    pending = s.machine.scheduler.pending()
    if s.machine.root is not None:
        s.machine.stop()
    assert pending == 0, f"{pending} kernel events still pending at the end of the test"
    loaded = [n for n in s.machine.kernel.drivers if n != "\\Driver\\PnpManager"]
    assert not loaded, f"drivers left loaded: {loaded}"


@pytest.fixture(scope="module")
def recorded_4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with one session recorded on a 4 MiB simulated stick, for a test module
    that only reads it (or copies it before changing it)."""
    from click.testing import CliRunner

    from usbtrace.cli import main

    db = tmp_path_factory.mktemp("recorded") / "r.db"
    result = CliRunner().invoke(main, ["record", "--db", str(db), "--size", "4M"])
    assert result.exit_code == 0, result.output
    return db
