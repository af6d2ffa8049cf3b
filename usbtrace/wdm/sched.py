"""A deterministic kernel scheduler: virtual clock, IRQL, interrupts and DPCs.

There is one thread of kernel execution.  Hardware (a host controller)
schedules an event for the moment a transfer would finish; when the clock
reaches it, the interrupt's service routine runs at device IRQL and queues a
DPC, and the DPC runs at DISPATCH_LEVEL once the ISR returns, which is where
``IoCompleteRequest`` runs for URBs.  Waiting (``KeWaitForSingleObject``) is
the only thing that advances time: the waiter runs events until its event is
signalled.  Runs are therefore reproducible to the nanosecond, and latencies
are those of the modelled bus, not of Python.

For real hardware the clock can be the wall clock instead (``clock="wall"``);
the ordering rules stay the same.

IRQL is tracked and checked: waiting at DISPATCH_LEVEL or above, or calling a
PASSIVE_LEVEL-only routine from a DPC, raises :class:`BugCheck` just as Driver
Verifier would stop the machine.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from typing import Any

PASSIVE_LEVEL = 0
APC_LEVEL = 1
DISPATCH_LEVEL = 2
DIRQL = 5  # the host controller's device IRQL

IRQL_NAMES = {0: "PASSIVE_LEVEL", 1: "APC_LEVEL", 2: "DISPATCH_LEVEL", 5: "DIRQL"}


class BugCheck(Exception):  # noqa: N818 - it is what Windows calls it
    """A condition that would stop a Windows machine (a driver bug in the model)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class Deadlock(Exception):  # noqa: N818
    """A wait that nothing can ever satisfy: no event pending, object not signalled."""


class Halted(KeyboardInterrupt):
    """A call into a machine that an interrupt (Ctrl-C) stopped in the middle of its work.

    A KeyboardInterrupt can strike inside any driver routine, leaving IRPs half
    completed and the IRQL raised; nothing can run on such a machine any more.
    It is a KeyboardInterrupt, so that it ends the program as the interrupt does.
    """


class KEvent:
    """A notification event (KEVENT)."""

    __slots__ = ("signaled",)

    def __init__(self, signaled: bool = False) -> None:
        self.signaled = signaled

    def KeSetEvent(self) -> None:  # noqa: N802
        self.signaled = True

    def KeClearEvent(self) -> None:  # noqa: N802
        self.signaled = False


class KDpc:
    """A deferred procedure call object: one routine, queued at most once at a time."""

    __slots__ = ("routine", "context", "queued")

    def __init__(self, routine: Callable[[KDpc, Any], None], context: Any = None) -> None:
        self.routine = routine
        self.context = context
        self.queued = False


class KSpinLock:
    """A spin lock (KSPIN_LOCK): held at DISPATCH_LEVEL, never re-acquired by its owner.

    Acquiring raises the IRQL to DISPATCH_LEVEL and returns the old IRQL, which the
    release restores (KeAcquireSpinLock / KeReleaseSpinLock).  The AtDpcLevel forms
    require the caller to be at DISPATCH_LEVEL already.  As Driver Verifier does, a
    second acquisition by the one thread there is, a release of a lock not held, or
    an acquisition above DISPATCH_LEVEL stops the machine.
    """

    __slots__ = ("held", "name")

    def __init__(self, name: str = "spin lock") -> None:
        self.held = False
        self.name = name


class KTimer:
    """A kernel timer (KTIMER) whose expiry queues a DPC (KeSetTimer's Dpc argument)."""

    __slots__ = ("dpc", "generation", "due_ns", "fired", "queued_at")

    def __init__(self) -> None:
        self.dpc: KDpc | None = None
        self.generation = 0  # bumped by every set and cancel
        self.due_ns: int | None = None  # armed: when it expires
        self.queued_at: int | None = None  # the time of its one entry in the event queue
        self.fired = 0


def _timer_entry(timer: KTimer) -> None:
    """Marks a timer's entry in the event queue; run_one handles it (never called)."""


class KInterrupt:
    """A connected interrupt: its service routine runs at DIRQL."""

    __slots__ = ("service_routine", "context", "irql", "count")

    def __init__(self, service_routine: Callable[[KInterrupt, Any], bool], context: Any) -> None:
        self.service_routine = service_routine
        self.context = context
        self.irql = DIRQL
        self.count = 0


class Scheduler:
    """Virtual (or wall) clock, the IRQL of the running code, timers and the DPC queue."""

    def __init__(self, clock: str = "virtual") -> None:
        if clock not in ("virtual", "wall"):
            raise ValueError(f"clock must be 'virtual' or 'wall', not {clock!r}")
        self.clock = clock
        self.virtual = clock == "virtual"  # tested on every event: a bool, not a string
        # the virtual clock's count, in ns: whoever stamps every record (the tracer, as a
        # filter calls KeQueryPerformanceCounter) reads it as an attribute, not through
        # now_ns(), on the virtual clock
        self.virtual_ns = 0
        self._t0 = time.monotonic_ns()
        self.irql = PASSIVE_LEVEL
        self._events: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._dpcs: deque[KDpc] = deque()
        self.halted: BaseException | None = None  # the interrupt that stopped the machine

    # ---- time ---------------------------------------------------------------------

    def now_ns(self) -> int:
        if self.clock == "wall":
            return time.monotonic_ns() - self._t0
        return self.virtual_ns

    def now(self) -> float:
        """Seconds since the scheduler started (``now_ns``, inline: every record asks)."""
        if self.clock == "wall":
            return (time.monotonic_ns() - self._t0) / 1e9
        return self.virtual_ns / 1e9

    # ---- IRQL ---------------------------------------------------------------------

    def KeGetCurrentIrql(self) -> int:  # noqa: N802
        return self.irql

    def KeRaiseIrql(self, new_irql: int) -> int:  # noqa: N802
        old = self.irql
        if new_irql < old:
            raise BugCheck("IRQL_NOT_GREATER_OR_EQUAL", f"raise from {old} to {new_irql}")
        self.irql = new_irql
        return old

    def KeLowerIrql(self, old_irql: int) -> None:  # noqa: N802
        if old_irql > self.irql:
            raise BugCheck("IRQL_NOT_LESS_OR_EQUAL", f"lower from {self.irql} to {old_irql}")
        self.irql = old_irql
        if old_irql < DISPATCH_LEVEL and self._dpcs:
            self._drain_dpcs()

    def require_irql(self, maximum: int, what: str) -> None:
        """Fail loudly where ``what`` runs above the IRQL it is allowed at."""
        if self.irql > maximum:
            raise BugCheck(
                "IRQL_NOT_LESS_OR_EQUAL",
                f"{what} called at {IRQL_NAMES.get(self.irql, self.irql)}, "
                f"allowed at most {IRQL_NAMES.get(maximum, maximum)}",
            )

    # ---- spin locks --------------------------------------------------------------

    def KeAcquireSpinLock(self, lock: KSpinLock) -> int:  # noqa: N802
        """Raise to DISPATCH_LEVEL and take ``lock``; the old IRQL, for the release."""
        old = self.irql
        if old > DISPATCH_LEVEL:
            raise BugCheck("IRQL_NOT_LESS_OR_EQUAL", f"{lock.name} acquired above DISPATCH_LEVEL")
        self.irql = DISPATCH_LEVEL  # KeRaiseIrql, inline: from at most DISPATCH_LEVEL
        if lock.held:  # _take, inline
            raise BugCheck("SPIN_LOCK_ALREADY_OWNED", f"{lock.name} acquired twice")
        lock.held = True
        return old

    def KeReleaseSpinLock(self, lock: KSpinLock, old_irql: int) -> None:  # noqa: N802
        if not lock.held:  # _give, inline
            raise BugCheck("SPIN_LOCK_NOT_OWNED", f"{lock.name} released but not held")
        lock.held = False
        self.KeLowerIrql(old_irql)

    def KeAcquireSpinLockAtDpcLevel(self, lock: KSpinLock) -> None:  # noqa: N802
        if self.irql != DISPATCH_LEVEL:
            raise BugCheck("IRQL_NOT_LESS_OR_EQUAL",
                           f"{lock.name} acquired at DPC level from "
                           f"{IRQL_NAMES.get(self.irql, self.irql)}")
        self._take(lock)

    def KeReleaseSpinLockFromDpcLevel(self, lock: KSpinLock) -> None:  # noqa: N802
        self._give(lock)

    @staticmethod
    def _take(lock: KSpinLock) -> None:
        if lock.held:
            raise BugCheck("SPIN_LOCK_ALREADY_OWNED", f"{lock.name} acquired twice")
        lock.held = True

    @staticmethod
    def _give(lock: KSpinLock) -> None:
        if not lock.held:
            raise BugCheck("SPIN_LOCK_NOT_OWNED", f"{lock.name} released but not held")
        lock.held = False

    # ---- timers -------------------------------------------------------------------

    def KeSetTimer(self, timer: KTimer, due_ns: int, dpc: KDpc | None = None) -> bool:  # noqa: N802
        """Arm ``timer`` to expire ``due_ns`` from now and queue ``dpc``; True if it was
        already armed (the earlier expiry is replaced, as KeSetTimer's result says).

        A timer has at most one entry in the event queue: re-arming it later (a hang
        timer, once per command) only moves its due time, and the entry, when its
        moment comes, moves itself to the new time without moving the clock.
        """
        was_set = timer.due_ns is not None
        timer.generation += 1
        timer.dpc = dpc
        due = self.now_ns() + due_ns
        timer.due_ns = due
        queued = timer.queued_at
        if queued is None or queued > due:
            timer.queued_at = due
            self._seq += 1
            heapq.heappush(self._events, (due, self._seq, _timer_entry, (timer,)))
        return was_set

    def KeCancelTimer(self, timer: KTimer) -> bool:  # noqa: N802
        """Disarm ``timer``; True if it was armed.  Its expiry never runs, and takes no
        virtual time: a cancelled hang timer does not move the clock."""
        was_set = timer.due_ns is not None
        timer.generation += 1
        timer.due_ns = None
        return was_set

    def _timer_entry_due(self, when: int, timer: KTimer) -> bool:
        """A timer's queue entry came up: True if the timer expires now.  Otherwise the
        entry is dropped (cancelled) or moved to the later due time, and no time passes."""
        if timer.queued_at != when:
            return False  # an older entry, replaced by an earlier one
        due = timer.due_ns
        if due is None:
            timer.queued_at = None
            return False
        if due > when:
            timer.queued_at = due
            self._seq += 1
            heapq.heappush(self._events, (due, self._seq, _timer_entry, (timer,)))
            return False
        timer.queued_at = None
        timer.due_ns = None
        timer.fired += 1
        return True

    # ---- events, interrupts, DPCs -------------------------------------------------

    def schedule(self, delay_ns: int, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` when the clock has advanced by ``delay_ns``."""
        self._seq += 1
        now = self.virtual_ns if self.virtual else time.monotonic_ns() - self._t0
        heapq.heappush(self._events, (now + delay_ns, self._seq, callback, args))

    def schedule_after(self, earliest_ns: int, delay_ns: int, callback: Callable[..., None],
                       *args: Any) -> int:
        """Run ``callback(*args)`` ``delay_ns`` after ``earliest_ns`` or after now,
        whichever is later; returns that moment.

        A busy resource's next event (the host controller's bus, free again at
        ``earliest_ns``) in one call: the caller needs no ``now_ns()`` of its own."""
        now = self.virtual_ns if self.virtual else time.monotonic_ns() - self._t0
        when = (earliest_ns if earliest_ns > now else now) + delay_ns
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, callback, args))
        return when

    def interrupt(self, interrupt: KInterrupt) -> None:
        """Deliver an interrupt: ISR at DIRQL, then any DPC it queued at DISPATCH_LEVEL."""
        old = self.irql
        if interrupt.irql < old:  # KeRaiseIrql's check
            raise BugCheck("IRQL_NOT_GREATER_OR_EQUAL", f"raise from {old} to {interrupt.irql}")
        self.irql = interrupt.irql
        interrupt.count += 1
        interrupt.service_routine(interrupt, interrupt.context)
        # KeLowerIrql(old), inline: the ISR's DPC runs here, once the ISR returned
        if old > self.irql:
            raise BugCheck("IRQL_NOT_LESS_OR_EQUAL", f"lower from {self.irql} to {old}")
        self.irql = old
        if old < DISPATCH_LEVEL and self._dpcs:
            self._drain_dpcs()

    def KeInsertQueueDpc(self, dpc: KDpc) -> bool:  # noqa: N802
        if dpc.queued:
            return False
        dpc.queued = True
        self._dpcs.append(dpc)
        if self.irql < DISPATCH_LEVEL:
            self._drain_dpcs()
        return True

    def _drain_dpcs(self) -> None:
        old = self.irql  # below DISPATCH_LEVEL: callers check
        self.irql = DISPATCH_LEVEL
        dpcs = self._dpcs
        try:
            while dpcs:
                dpc = dpcs.popleft()
                dpc.queued = False
                dpc.routine(dpc, dpc.context)
        except BaseException as e:
            self.interrupted(e)
            raise
        self.irql = old

    def interrupted(self, e: BaseException) -> None:
        """Called with any exception escaping kernel code: an interrupt halts the machine.

        A KeyboardInterrupt (or SystemExit) is not a driver failure: it tore through
        whatever routine was running.  The machine stops where it is — no event or
        DPC runs any more, waits raise :class:`Halted` instead of reporting a
        Deadlock, teardown does nothing — so that the interrupt itself reaches the
        program, not a deadlock or bug check it would cause afterwards.
        """
        if isinstance(e, Exception) or self.halted is not None:
            return
        self.halted = e
        self.irql = PASSIVE_LEVEL
        self._events.clear()
        self._dpcs.clear()

    def check_running(self, what: str) -> None:
        """Refuse to run ``what`` on a machine an interrupt halted."""
        if self.halted is not None:
            raise Halted(f"{what}: the machine was interrupted")

    def run_one(self) -> bool:
        """Run the earliest pending event; False when there is none."""
        if not self._events:
            return False
        when, _, callback, args = heapq.heappop(self._events)
        if callback is _timer_entry:
            self._timer_entry_run(when, args[0])
            return True
        if self.clock == "virtual" and when > self.virtual_ns:
            self.virtual_ns = when
        try:
            callback(*args)
        except BaseException as e:
            self.interrupted(e)
            raise
        return True

    def pending(self) -> int:
        """Events still to run; the entries of timers not armed do not count."""
        return sum(1 for e in self._events
                   if not (e[2] is _timer_entry and e[3][0].due_ns is None))

    def pending_routines(self) -> list[Callable[..., Any]]:
        """Every routine still to run: scheduled events and queued DPCs."""
        return [event[2] for event in self._events] + [dpc.routine for dpc in self._dpcs]

    def KeWaitForSingleObject(self, event: KEvent, what: str = "wait") -> None:  # noqa: N802
        """Block (by running the machine) until ``event`` is signalled."""
        if event.signaled:
            return
        if self.halted is not None:
            self.check_running(what)
        if self.irql > APC_LEVEL:
            self.require_irql(APC_LEVEL, "KeWaitForSingleObject")
        # run_one, inline: a replayed command waits through five events or so
        events = self._events
        pop = heapq.heappop
        virtual = self.virtual
        while not event.signaled:
            if not events:
                self.check_running(what)
                raise Deadlock(f"{what}: nothing left to run and the event was never signalled")
            when, _, callback, args = pop(events)
            if callback is _timer_entry:
                self._timer_entry_run(when, args[0])
                continue
            if virtual and when > self.virtual_ns:
                self.virtual_ns = when
            try:
                callback(*args)
            except BaseException as e:
                self.interrupted(e)
                raise

    def _timer_entry_run(self, when: int, timer: KTimer) -> None:
        """A timer's entry came up: its DPC is queued if it expires now."""
        if not self._timer_entry_due(when, timer):
            return  # cancelled, or due later: no time passes
        if self.clock == "virtual" and when > self.virtual_ns:
            self.virtual_ns = when
        if timer.dpc is not None:
            self.KeInsertQueueDpc(timer.dpc)

    def run_until_idle(self) -> None:
        """Run every pending event; nothing on a halted machine."""
        while self.run_one():
            pass
