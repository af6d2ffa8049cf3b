"""pytest plugin: recordings as regression tests, and fixtures for your own tests.

Set ``usbtrace_captures = captures/`` (ini) and every ``.pcap``/``.pcapng``
there becomes two test items, replayed in device mode and in host mode; an
item fails with the divergence report.  ``usbtrace_replay_modes`` narrows the
modes (e.g. ``device`` for third-party captures, whose devices the simulated
stick cannot stand in for).

Fixtures:

* ``usbtrace_stack`` — a started stack on a simulated stick; ``.win32`` to do
  I/O, ``.events`` what the tracer saw; torn down after the test.
* ``usbtrace_recorder`` — ``record(**options)`` runs ``usbtrace record`` into a
  temporary database and returns the summary.
* ``usbtrace_replayer`` — ``replay(source, mode="device", **options)`` returns
  the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("usbtrace_captures", "folder of recordings to replay as tests", default="")
    parser.addini("usbtrace_replay_modes", "replay modes for those recordings",
                  type="args", default=["device", "host"])


class ReplayFailed(Exception):  # noqa: N818
    pass


class ReplayItem(pytest.Item):
    def __init__(self, *, capture: Path, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capture = capture
        self.mode = mode

    def runtest(self) -> None:
        from usbtrace.replay.run import replay

        report = replay(str(self.capture), self.mode)
        if not report.identical:
            raise ReplayFailed(report.text())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ReplayFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.capture, 0, f"replay {self.capture.name} [{self.mode}]"


class CaptureFile(pytest.File):
    def collect(self) -> Iterator[ReplayItem]:
        for mode in self.config.getini("usbtrace_replay_modes"):
            yield ReplayItem.from_parent(self, name=f"replay[{mode}]", capture=self.path,
                                         mode=mode)


def _captures_dir(config: pytest.Config) -> Path | None:
    value = config.getini("usbtrace_captures")
    if not value:
        return None
    return (config.rootpath / str(value)).resolve()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> CaptureFile | None:
    folder = _captures_dir(parent.config)
    if folder is not None and file_path.suffix in CAPTURE_SUFFIXES and \
            folder in file_path.resolve().parents:
        return CaptureFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """On a plain ``pytest`` run, replay the captures folder even when it lies outside
    the test paths; naming files or folders on the command line collects only those."""
    folder = _captures_dir(config)
    if folder is None or not folder.is_dir() or config.option.file_or_dir:
        return
    if any(isinstance(item, ReplayItem) for item in items):
        return
    for path in sorted(folder.iterdir()):
        if path.suffix in CAPTURE_SUFFIXES:
            items.extend(CaptureFile.from_parent(session, path=path).collect())


class StackFixture:
    def __init__(self, size: int, speed: str) -> None:
        from usbtrace.devices.image import DiskImage
        from usbtrace.devices.simulated import SimulatedStick
        from usbtrace.machine import Machine
        from usbtrace.records import Event

        self.events: list[Event] = []
        self.stick = SimulatedStick(DiskImage.in_memory(size), speed=speed)
        self.machine = Machine(self.stick, sink=self.events.append).start()
        self.win32 = self.machine.win32

    def open(self) -> int:
        from usbtrace.machine import DISK_PATH

        return self.win32.CreateFile(DISK_PATH)


@pytest.fixture
def usbtrace_stack() -> Iterator[StackFixture]:
    stack = StackFixture(8 << 20, "super")
    yield stack
    stack.machine.stop()


@pytest.fixture
def usbtrace_recorder(tmp_path: Path) -> Callable[..., Any]:
    from usbtrace.recording import RecordOptions, record

    def run(**options: Any) -> Any:
        options.setdefault("db", str(tmp_path / "usbtrace.db"))
        options.setdefault("size", "8M")
        return record(RecordOptions(**options))

    return run


@pytest.fixture
def usbtrace_replayer() -> Callable[..., Any]:
    from usbtrace.replay.run import replay

    def run(source: str | Path, mode: str = "device", **options: Any) -> Any:
        return replay(str(source), mode, **options)

    return run
