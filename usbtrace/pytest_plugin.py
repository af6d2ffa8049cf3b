"""pytest plugin: recordings as regression tests, and fixtures for your own tests.

Set ``usbtrace_captures = captures/`` (ini, relative to the ini file) or pass
``--usbtrace-captures PATH``, and every ``.pcap``/``.pcapng`` there becomes two
test items, replayed in device mode and in host mode, marked ``usbtrace``; an
item fails with the divergence report.  ``usbtrace_replay_modes`` (ini) or
``--usbtrace-mode device|host|both`` narrows the modes (e.g. ``device`` for
third-party captures, whose devices the simulated stick cannot stand in for).
``--usbtrace-rerecord`` accepts a change: a diverging recording whose pcapng
header names the ``usbtrace record`` command that made it is made again.

Fixtures:

* ``usbtrace_stack`` — a started stack on a simulated stick; ``.win32`` to do
  I/O, ``.events`` what the tracer saw; torn down after the test.
* ``usbtrace_recorder`` — ``record(**options)`` runs ``usbtrace record`` into a
  temporary database and returns the summary.
* ``usbtrace_replayer`` — ``replay(source, mode="device", **options)`` returns
  the report.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")


MODES = {"device": ["device"], "host": ["host"], "both": ["device", "host"]}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("usbtrace_captures", "folder of recordings to replay as tests, relative "
                  "to the ini file", default="")
    parser.addini("usbtrace_replay_modes", "replay modes for those recordings",
                  type="args", default=["device", "host"])
    group = parser.getgroup("usbtrace", "usbtrace recordings as regression tests")
    group.addoption("--usbtrace-captures", metavar="PATH", default=None,
                    help="folder of recordings to replay as tests (relative to the current "
                    "folder); overrides the usbtrace_captures ini setting")
    group.addoption("--usbtrace-mode", choices=sorted(MODES), default=None,
                    help="replay the recordings in device mode, host mode or both; "
                    "overrides the usbtrace_replay_modes ini setting")
    group.addoption("--usbtrace-rerecord", action="store_true", default=False,
                    help="when a recording made by 'usbtrace record' diverges, accept the "
                    "change: record it again with the command line it was made with, "
                    "export it over the old file and replay it again")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "usbtrace: a replay of a recording (added to every replay item; "
        "'-m usbtrace' runs only those, '-m \"not usbtrace\"' skips them)")
    config.stash[_RERECORDED] = []


def _modes(config: pytest.Config) -> list[str]:
    chosen = config.getoption("usbtrace_mode")
    return MODES[chosen] if chosen else list(config.getini("usbtrace_replay_modes"))


def pytest_report_header(config: pytest.Config) -> str:
    folder = _captures_dir(config)
    if folder is None:
        return "usbtrace: no captures folder (usbtrace_captures, --usbtrace-captures)"
    count = sum(1 for p in folder.iterdir() if p.suffix in CAPTURE_SUFFIXES) \
        if folder.is_dir() else 0
    state = f"{count} recordings" if folder.is_dir() else "missing"
    rerecord = ", re-recording on divergence" if config.getoption("usbtrace_rerecord") else ""
    return f"usbtrace: captures {folder} ({state}), modes {', '.join(_modes(config))}{rerecord}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    done = config.stash.get(_RERECORDED, [])
    if done:
        terminalreporter.section("usbtrace re-recorded")
        for path, line in done:
            terminalreporter.write_line(f"{path}: made again with: {line}")


class ReplayFailed(Exception):  # noqa: N818
    pass


class ReplayItem(pytest.Item):
    def __init__(self, *, capture: Path, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capture = capture
        self.mode = mode
        self.add_marker("usbtrace")

    def runtest(self) -> None:
        from usbtrace.replay.run import replay

        report = replay(str(self.capture), self.mode)
        if report.identical:
            return
        if not self.config.getoption("usbtrace_rerecord"):
            raise ReplayFailed(report.text())
        why_not, line = rerecord(self.capture)
        if why_not:
            raise ReplayFailed(f"{report.text()}\ncannot re-record: {why_not}")
        self.config.stash[_RERECORDED].append((self.capture, line))
        again = replay(str(self.capture), self.mode)
        if not again.identical:
            raise ReplayFailed(f"re-recorded with: {line}\nand it still diverges:\n"
                               f"{again.text()}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ReplayFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.capture, 0, f"replay {self.capture.name} [{self.mode}]"


_RERECORDED = pytest.StashKey[list[tuple[Path, str]]]()
_GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"}
_UNSAFE = {"--device": "it records real hardware", "--image": "it writes an image file",
           "--copy": "it copies files from this machine, which may have changed"}


def record_arguments(line: str) -> tuple[str | None, list[str]]:
    """The ``usbtrace record`` arguments of a session's command line, without ``--db``;
    or why it cannot be run again unattended (not a record, real hardware, files)."""
    try:
        args = shlex.split(line)
    except ValueError as e:
        return f"its command line does not parse: {e}", []
    if not args or Path(args[0]).name != "usbtrace" or "record" not in args:
        return f"it was not made by 'usbtrace record' (made by: {line})", []
    at = args.index("record")
    if any(a not in _GLOBAL_FLAGS for a in args[1:at]):
        return f"its command line has options usbtrace does not know before 'record': {line}", []
    rest = args[at + 1:]
    kept: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _UNSAFE:
            return f"it was made with {name}: {_UNSAFE[name]} (make it again by hand)", []
        if name == "--db":
            skip = "=" not in arg
            continue
        kept.append(arg)
    return None, kept


def rerecord(capture: Path) -> tuple[str | None, str]:
    """Make ``capture`` again from the command line its pcapng header names: record
    into a temporary database, export over the file with the same link type.  Returns
    (why not, or None; the command line)."""
    import os
    import tempfile

    from usbtrace.capture.export import LINKTYPES, recorded_command_line
    from usbtrace.capture.pcap import pcapng_header
    from usbtrace.cli import DB_ENVVAR, main

    comments, linktype = pcapng_header(capture)
    line = recorded_command_line(comments)
    if line is None:
        return ("the capture does not say which command made it (export a session "
                "recorded by this usbtrace to pcapng: its header carries the command line)", "")
    kinds = {code: name for name, code in LINKTYPES.items()}
    if linktype not in kinds:
        return f"its link type {linktype} is not one export writes", line
    why_not, args = record_arguments(line)
    if why_not:
        return why_not, line
    with tempfile.TemporaryDirectory(prefix="usbtrace-rerecord-") as folder:
        before = os.environ.get(DB_ENVVAR)
        os.environ[DB_ENVVAR] = str(Path(folder) / "rerecord.db")  # kept out of the line
        try:
            for command in (["record", *args],
                            ["export", "1", "-o", str(capture), "--linktype", kinds[linktype],
                             "--format", "pcapng", "--force"]):
                try:
                    main.main(command, prog_name="usbtrace", standalone_mode=False)
                except SystemExit as e:
                    if e.code:
                        return f"'usbtrace {shlex.join(command)}' failed (exit {e.code})", line
        finally:
            if before is None:
                del os.environ[DB_ENVVAR]
            else:
                os.environ[DB_ENVVAR] = before
    return None, line


class CaptureFile(pytest.File):
    def collect(self) -> Iterator[ReplayItem]:
        for mode in _modes(self.config):
            yield ReplayItem.from_parent(self, name=f"replay[{mode}]", capture=self.path,
                                         mode=mode)


def _captures_dir(config: pytest.Config) -> Path | None:
    """``--usbtrace-captures`` against the current folder, else the ini setting against
    the ini file's folder (the rootdir when there is no ini file)."""
    given = config.getoption("usbtrace_captures")
    if given:
        return (config.invocation_params.dir / given).resolve()
    value = config.getini("usbtrace_captures")
    if not value:
        return None
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return (base / str(value)).resolve()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> CaptureFile | None:
    folder = _captures_dir(parent.config)
    if folder is not None and file_path.suffix in CAPTURE_SUFFIXES and \
            folder in file_path.resolve().parents:
        return CaptureFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)  # before -m and -k deselect: they see these items too
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
