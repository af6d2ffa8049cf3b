"""Recorded timing kept against deadlines, and how well it was kept.

With ``--speed``, command *n* is due at ``start + offset(n)``, where ``offset``
adds up the recorded gaps between submissions, each divided by the speed and cut
to ``--max-gap``.  The replayer sleeps until that deadline, never for "the gap
since the previous command": the time the commands themselves take is not added
to the schedule, so a long replay does not drift.  A command the replayer could
not send on time (the previous one took longer than the gap) is sent at once, and
the ones after it are due as planned, catching up.  How late each one went out
is measured and reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

MAX_SLEEP = 3600.0  # seconds: the longest gap between two commands
LATE = 0.001  # seconds: a command sent later than this after its deadline counts as late


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's monotonic clock (tests pass a fake one)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass
class Timing:
    """The schedule's outcome: how late commands went out against their deadlines."""

    speed: float
    max_gap: float | None = None
    commands: int = 0
    late: int = 0  # sent more than LATE after the deadline
    lateness_max: float = 0.0
    lateness_total: float = 0.0
    planned_seconds: float = 0.0  # the last deadline, from the first command
    elapsed_seconds: float = 0.0  # from the first command to the last one's sending

    @property
    def lateness_mean(self) -> float:
        return self.lateness_total / self.commands if self.commands else 0.0

    def text(self) -> str:
        return (f"timing at speed {self.speed:g}: {self.commands} commands on a "
                f"{self.planned_seconds:.3f} s schedule, sent over {self.elapsed_seconds:.3f} s; "
                f"late by {self.lateness_max * 1000:.3f} ms at most, "
                f"{self.lateness_mean * 1000:.3f} ms on average; {self.late} more than "
                f"{LATE * 1000:g} ms late")

    def to_dict(self) -> dict[str, Any]:
        return {"speed": self.speed, "max_gap": self.max_gap, "commands": self.commands,
                "late": self.late, "late_threshold": LATE,
                "lateness_max": self.lateness_max, "lateness_mean": self.lateness_mean,
                "planned_seconds": self.planned_seconds,
                "elapsed_seconds": self.elapsed_seconds}


class Schedule:
    """Deadlines from recorded submission times; ``wait`` before sending each command."""

    def __init__(self, speed: float, max_gap: float | None = None,
                 clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.timing = Timing(speed, max_gap)
        self._start: float | None = None
        self._offset = 0.0  # seconds from the start to the current deadline
        self._previous: float | None = None  # the latest recorded submission time
        self.notes: list[str] = []

    def wait(self, recorded_at: float | None, index: int) -> float:
        """Sleep until command ``index`` is due; returns how late it is (seconds)."""
        now = self.clock.monotonic()
        if self._start is None:
            self._start = now
        if recorded_at is not None and math.isfinite(recorded_at):
            if self._previous is not None and recorded_at > self._previous:
                gap = (recorded_at - self._previous) / self.timing.speed
                if self.timing.max_gap is not None:
                    gap = min(gap, self.timing.max_gap)
                if not gap <= MAX_SLEEP:
                    self.notes.append(f"command {index}: a gap of {gap:g} s in the recorded "
                                      f"timing was cut to {MAX_SLEEP:g} s")
                    gap = MAX_SLEEP
                self._offset += gap
            if self._previous is None or recorded_at > self._previous:
                self._previous = recorded_at  # a timestamp going back adds no time
        deadline = self._start + self._offset
        while now < deadline:
            self.clock.sleep(deadline - now)
            now = self.clock.monotonic()
        lateness = now - deadline
        t = self.timing
        t.commands += 1
        t.lateness_total += lateness
        t.lateness_max = max(t.lateness_max, lateness)
        t.late += lateness > LATE
        t.planned_seconds = self._offset
        t.elapsed_seconds = now - self._start
        return lateness
