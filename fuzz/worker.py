"""Running inputs in a separate process, each under a time and a memory limit.

The worker process sets its address-space limit once (``RLIMIT_AS``), then takes
inputs from a pipe.  Each input gets a ``SIGALRM`` timer (``setitimer``) for all its
targets together; Linux's peak-RSS counter is reset before it (``clear_refs``) so the
peak reported is this input's.  The parent kills a worker that does not answer within
the limit plus a grace period (a hang in C code the alarm cannot interrupt) and starts
another.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

TIME_LIMIT = 5.0  # seconds per input, all its targets together
MEMORY_LIMIT = 500 << 20  # bytes of address space
GRACE = 10.0  # seconds past the limit before the parent kills a silent worker
ROOT = Path(__file__).resolve().parent.parent


class InputTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` hides it."""


@dataclass
class Finding:
    target: str
    kind: str  # "exception", "timeout", "memory", "crash", "hang"
    exc_type: str
    message: str
    file: str  # innermost frame in the project, relative to the repository
    function: str
    line: int
    trace: str = ""

    @property
    def signature(self) -> tuple[str, str, str, str]:
        """What makes two findings the same bug (no line: it moves as code changes)."""
        return (self.kind, self.exc_type, self.file, self.function)

    def describe(self) -> str:
        return (f"{self.target}: {self.kind} {self.exc_type} at {self.file}:{self.line} "
                f"({self.function}): {self.message[:200]}")


@dataclass
class Outcome:
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss: int = 0  # bytes, this input's (or the worker's, where it cannot be reset)
    refused: list[str] = field(default_factory=list)  # targets that refused with one line


def where(exc: BaseException) -> tuple[str, str, int]:
    """The innermost frame of the traceback that is the project's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    chosen = None
    for frame in frames:
        path = Path(frame.filename)
        if "usbtrace" in path.parts and "fuzz" not in path.parts:
            chosen = frame
    if chosen is None and frames:
        chosen = frames[-1]
    if chosen is None:
        return ("?", "?", 0)
    path = Path(chosen.filename)
    parts = path.parts
    rel = "/".join(parts[parts.index("usbtrace"):]) if "usbtrace" in parts else path.name
    return (rel, chosen.name, chosen.lineno or 0)


def _on_alarm(signum: int, frame: Any) -> None:
    raise InputTimeout()


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_input(workspace: Any, data: bytes, targets: tuple[str, ...],
              time_limit: float = TIME_LIMIT) -> Outcome:
    """Run ``data`` through ``targets`` in this process, under the alarm."""
    from usbtrace.errors import UsbtraceError

    outcome = Outcome()
    path = workspace.root / "input.bin"
    path.write_bytes(data)
    _reset_peak()
    started = time.perf_counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    current = targets[0] if targets else "?"
    try:
        for current in targets:
            try:
                workspace.run(current, path)
            except UsbtraceError:
                outcome.refused.append(current)
            except MemoryError as e:
                outcome.findings.append(_finding(current, "memory", e))
            except InputTimeout:
                raise
            except Exception as e:  # the point of the fuzzer: anything else is a bug
                outcome.findings.append(_finding(current, "exception", e))
    except InputTimeout as e:
        outcome.findings.append(_finding(current, "timeout", e))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    outcome.seconds = time.perf_counter() - started
    outcome.peak_rss = _peak_rss()
    return outcome


def _finding(target: str, kind: str, exc: BaseException) -> Finding:
    file, function, line = where(exc)
    return Finding(target, kind, type(exc).__name__, str(exc), file, function, line,
                   "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])


def _worker_main(channel: Connection, memory_limit: int, time_limit: float) -> None:
    """The worker's loop: set the limits, then run inputs until told to stop."""
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    from fuzz.targets import Workspace

    with tempfile.TemporaryDirectory(prefix="usbtrace-fuzz-") as tmp:
        workspace = Workspace(Path(tmp))
        try:
            while (message := channel.recv()) is not None:
                data, targets = message
                channel.send(run_input(workspace, data, targets, time_limit))
        finally:
            workspace.close()


class Worker:
    """A worker process and the pipe to it; restarted after it dies or hangs."""

    def __init__(self, memory_limit: int = MEMORY_LIMIT, time_limit: float = TIME_LIMIT) -> None:
        self.memory_limit = memory_limit
        self.time_limit = time_limit
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("fork")
        self.channel, child = context.Pipe()
        self.process = context.Process(target=_worker_main,
                                       args=(child, self.memory_limit, self.time_limit),
                                       daemon=True)
        self.process.start()
        child.close()

    def run(self, data: bytes, targets: tuple[str, ...]) -> Outcome:
        started = time.perf_counter()
        try:
            self.channel.send((data, targets))
            if self.channel.poll(self.time_limit + GRACE):
                outcome: Outcome = self.channel.recv()
                if any(f.kind == "timeout" for f in outcome.findings):
                    self.restart()  # the alarm may have left state half-changed
                return outcome
            kind, message = "hang", f"no answer within {self.time_limit + GRACE:.0f} s"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join(1)
            kind, message = "crash", f"the worker died (exit code {self.process.exitcode})"
        self.restart()
        finding = Finding(",".join(targets), kind, kind, message, "?", "?", 0)
        return Outcome([finding], time.perf_counter() - started, 0)

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self._start()

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.channel.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.channel.close()
