"""Running inputs in a separate process, each under a time and a memory limit.

A worker is a long-lived forked process (it inherits the parsed seed captures
copy-on-write) that sets its address-space limit once (``RLIMIT_AS``), then takes
inputs from a pipe: the bytes of a file, or a campaign's (seed, index), which it makes
itself.  Each input gets a CPU-time timer (``setitimer(ITIMER_PROF)``, user and system
time) for all its targets together: the limit is the work an input costs, so a long
campaign can run at low priority beside other work (or be stopped and continued) without
a starved input counting as slow.  Wall time is reported as well.  Linux's peak-RSS
counter is reset before each input (``clear_refs``) so the peak reported is this
input's (the worker's baseline included, so it never under-reports).
The parent replaces a worker whose input timed out, whose resident size after an input
stayed above ``RESTART_RSS`` (so that a leak cannot eat the next inputs' 500 MB), or,
where the peak cannot be reset, whose lifetime peak passed it.  It kills a worker that
does not answer (:class:`Watch`): one that spent the limit plus a grace period of CPU
time (a loop in C code the timer cannot interrupt), or that made no progress at all for
``STALL`` seconds while not stopped (blocked), and starts another.
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

from fuzz.capture import Capture
from fuzz.generate import make_input

TIME_LIMIT = 5.0  # seconds per input, all its targets together
MEMORY_LIMIT = 500 << 20  # bytes of address space
RESTART_RSS = 200 << 20  # bytes resident after an input past which the worker is replaced
GRACE = 10.0  # CPU seconds past the limit before the parent kills a silent worker
STALL = 120.0  # wall seconds without any CPU progress before a silent worker is hung
POLL = 2.0  # wall seconds between the parent's looks at a silent worker
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
    seconds: float = 0.0  # CPU time (user + system) of all the input's targets
    peak_rss: int = 0  # bytes, this input's (or the worker's, where it cannot be reset)
    refused: list[str] = field(default_factory=list)  # targets that refused with one line
    source: str = ""  # the seed capture a generated input came from
    rss_after: int = 0  # bytes resident in the worker once the input was done
    peak_is_input: bool = True  # False where the peak counter could not be reset
    wall: float = 0.0  # wall-clock time, which includes waiting for a busy machine's CPU


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


def scratch_dir() -> str | None:
    """Memory-backed ``/dev/shm`` where there is one: an input's file and the import
    database are written for every input, and a disk's syncs would cost more than the
    import.  Elsewhere the system's temporary directory."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _on_alarm(signum: int, frame: Any) -> None:
    raise InputTimeout()


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory() -> tuple[int, int]:
    """(peak, current) resident bytes of this process."""
    peak = current = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    current = int(line.split()[1]) * 1024
    except OSError:
        pass
    if not peak:
        peak = current = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak, current


def run_input(workspace: Any, data: bytes, targets: tuple[str, ...],
              time_limit: float = TIME_LIMIT) -> Outcome:
    """Run ``data`` through ``targets`` in this process, under the alarm."""
    from usbtrace.errors import UsbtraceError

    outcome = Outcome()
    path = workspace.root / "input.bin"
    path.write_bytes(data)
    workspace.begin()
    outcome.peak_is_input = _reset_peak()
    started, cpu_started = time.perf_counter(), time.process_time()
    signal.signal(signal.SIGPROF, _on_alarm)
    signal.setitimer(signal.ITIMER_PROF, time_limit)
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
        signal.setitimer(signal.ITIMER_PROF, 0)
    outcome.seconds = time.process_time() - cpu_started
    outcome.wall = time.perf_counter() - started
    outcome.peak_rss, outcome.rss_after = _memory()
    return outcome


def _finding(target: str, kind: str, exc: BaseException) -> Finding:
    file, function, line = where(exc)
    return Finding(target, kind, type(exc).__name__, str(exc), file, function, line,
                   "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])


Job = bytes | tuple[int, int]  # a file's bytes, or a campaign's (seed, index)


def _worker_main(channel: Connection, memory_limit: int, time_limit: float,
                 seeds: list[Capture]) -> None:
    """The worker's loop: set the limits, then run inputs until told to stop.  Ctrl-C and
    SIGTERM are the campaign's to take (it saves its state, then stops the workers): a
    terminal's Ctrl-C or a ``pkill`` reaches the workers too, and must not print their
    tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    from fuzz.targets import Workspace

    with tempfile.TemporaryDirectory(prefix="usbtrace-fuzz-", dir=scratch_dir()) as tmp:
        workspace = Workspace(Path(tmp))
        try:
            while (message := channel.recv()) is not None:
                job, targets = message
                source = ""
                if isinstance(job, tuple):
                    capture = make_input(job[0], job[1], seeds)
                    job, source = capture.to_bytes(), capture.name
                outcome = run_input(workspace, job, targets, time_limit)
                outcome.source = source
                channel.send(outcome)
        finally:
            workspace.close()


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_and_state(pid: int) -> tuple[float, str] | None:
    """A process's CPU seconds (user + system) and its state letter, from
    ``/proc/PID/stat``; None where there is no such file."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS, fields[0]


class Watch:
    """Whether a worker that has not answered yet is still working on its input.

    It is hung once it has spent the time limit plus ``GRACE`` of CPU time on the
    input (a loop the timer cannot interrupt), or made no CPU progress for ``STALL``
    seconds while not stopped (blocked).  A worker starved by busier processes, or
    stopped with SIGSTOP, is neither.  Without ``/proc`` it is judged by wall time.
    """

    def __init__(self, pid: int, time_limit: float) -> None:
        self.pid, self.time_limit = pid, time_limit
        self.started = self.progressed = time.perf_counter()
        sample = cpu_and_state(pid)
        self.cpu_started = self.cpu_seen = sample[0] if sample else 0.0

    def spent(self) -> float:
        """CPU seconds the worker has spent on this input so far."""
        sample = cpu_and_state(self.pid)
        return sample[0] - self.cpu_started if sample else time.perf_counter() - self.started

    def verdict(self) -> str | None:
        """None while the worker may still answer; else why it is hung."""
        now = time.perf_counter()
        sample = cpu_and_state(self.pid)
        if sample is None:
            if now - self.started > self.time_limit + GRACE:
                return f"no answer within {self.time_limit + GRACE:.0f} s"
            return None
        cpu, state = sample
        if cpu - self.cpu_started > self.time_limit + GRACE:
            return f"no answer after {cpu - self.cpu_started:.0f} s of CPU time"
        if cpu > self.cpu_seen or state in "Tt":
            self.cpu_seen, self.progressed = cpu, now
        elif now - self.progressed > STALL:
            return f"no progress for {STALL:.0f} s (blocked)"
        return None


FORK_RSS = 100 << 20  # resident bytes of the parent above which a worker is spawned


def start_method() -> str:
    """``fork`` from a small parent (the campaign's: the worker shares its parsed seeds
    copy-on-write and starts at once); ``spawn`` from a large one, such as a test run
    that has loaded everything, whose memory a forked worker would start with, inside
    its own 500 MB (the seeds then cross the pipe, about 20 MB)."""
    return "fork" if _memory()[1] < FORK_RSS else "spawn"


class Worker:
    """A worker process and the pipe to it; restarted after it dies or hangs."""

    def __init__(self, memory_limit: int = MEMORY_LIMIT, time_limit: float = TIME_LIMIT,
                 seeds: list[Capture] | None = None) -> None:
        self.memory_limit = memory_limit
        self.time_limit = time_limit
        self.seeds = seeds or []
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("fork") if start_method() == "fork" \
            else multiprocessing.get_context("spawn")
        self.channel, child = context.Pipe()
        self.process = context.Process(target=_worker_main,
                                       args=(child, self.memory_limit, self.time_limit,
                                             self.seeds),
                                       daemon=True)
        self.process.start()
        child.close()

    def send(self, job: Job, targets: tuple[str, ...]) -> Watch:
        """Give the worker an input; the watch says whether it is still on it."""
        self.channel.send((job, targets))
        return Watch(self.process.pid or 0, self.time_limit)

    def run(self, job: Job, targets: tuple[str, ...]) -> Outcome:
        started = time.perf_counter()
        watch: Watch | None = None
        try:
            watch = self.send(job, targets)
            while not self.channel.poll(POLL):
                if (message := watch.verdict()) is not None:
                    return self.hung(targets, message, watch)
            outcome: Outcome = self.channel.recv()
            self.check(outcome)
            return outcome
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join(1)
            message = f"the worker died (exit code {self.process.exitcode})"
        self.restart()
        finding = Finding(",".join(targets), "crash", "crash", message, "?", "?", 0)
        return Outcome([finding], watch.spent() if watch else 0.0, 0,
                       wall=time.perf_counter() - started)

    def hung(self, targets: tuple[str, ...], message: str, watch: Watch) -> Outcome:
        """The outcome of an input the worker never answered; the worker is replaced."""
        spent, wall = watch.spent(), time.perf_counter() - watch.started
        self.restart()
        return Outcome([Finding(",".join(targets), "hang", "hang", message, "?", "?", 0)],
                       spent, 0, wall=wall)

    def check(self, outcome: Outcome) -> None:
        """Replace the worker after an input that may have left it unfit for the next."""
        if any(f.kind == "timeout" for f in outcome.findings):
            self.restart()  # the alarm may have left state half-changed
        elif outcome.rss_after > RESTART_RSS or (not outcome.peak_is_input
                                                 and outcome.peak_rss > RESTART_RSS):
            self.restart()  # the next input's peak is measured from a fresh baseline

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
