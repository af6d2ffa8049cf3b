"""Import capture files as sessions: one session per file.

A file already imported into the same database (same SHA-256) is reported
and skipped.  Malformed records are counted and listed by record number in
the session's notes; they never stop the rest of the import.

A gzip file (told by its magic) is decompressed as it streams.  ``-`` is standard
input, read as it arrives so that a capture tool can pipe a live capture in: rows
are committed whenever the input pauses and at least every ``LIVE_FLUSH`` seconds
while it flows, so another process sees the session grow.  Standard input cannot be
read twice, so its SHA-256 is computed on the way and stored, never used to skip.
"""


from __future__ import annotations

import contextlib
import gc
import os
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from usbtrace.capture.reader import (
    CaptureStats,
    SharedAddresses,
    SourceError,
    events,
    source_name,
)
from usbtrace.capture.source import Gunzip, Tap, capture_stream, sha256_of, standard_input
from usbtrace.errors import CaptureFormatError, InputError, UsbtraceError
from usbtrace.interrupt import deferred_interrupt
from usbtrace.store.database import Database
from usbtrace.store.notes import CAVEATS, caveats  # noqa: F401 (API)
from usbtrace.store.writer import SessionWriter

MAX_LISTED = 20
BACKGROUND_FROM = 8 << 20  # bytes of capture
STDIN = "-"
SPARE_CPUS = 1.5  # CPUs free (ours among them) for a second process to be worth it
PROC_STAT = "/proc/stat"
CPU_SAMPLE = 0.1  # seconds over which free CPUs are counted (10 ticks of each CPU)
GC_YOUNG, GC_OLD = 50_000, 100  # the collector's thresholds during an import (at least)
LIVE_FLUSH = 1.0  # seconds: the longest a live record waits for its commit while input flows


@dataclass
class ImportResult:
    path: Path
    session_id: int | None
    duplicate_of: int | None
    records: int
    commands: int
    malformed: list[tuple[int, str]]
    seconds: float
    # the notes that say the decode may be wrong, and why (see ``caveats``)
    caveats: list[str] = field(default_factory=list)
    malformed_count: int = 0  # all of them: ``malformed`` keeps the first 1000


def spare_core() -> bool:
    """Whether a second process would run beside this one instead of taking turns with
    it: at least two CPUs for this process, and, over a short look, at least
    ``SPARE_CPUS`` of them idle or running only niced work (which yields to ours).  On a
    busy machine the two processes share a core, so the rows pickled from one to the
    other are pure overhead: the tree took about half as much CPU again as storing them
    here (15.2 against 10.3 s for a million usbmon records, paired, on a shared machine).
    With a core each it costs less, 8 to 18% more CPU than one process, for 23 to 29%
    less wall time (the three formats of ``bench_import``, tiled to a million records,
    idle machine).  Where the kernel does not say, the load average decides."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    if cpus < 2:
        return False
    free = free_cpus()
    if free is not None:
        return free >= SPARE_CPUS
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average: no fork there either
        return True
    return busy <= cpus - SPARE_CPUS


def cpu_times() -> list[int] | None:
    """The machine's CPU time so far (user, nice, system, idle, iowait, irq, softirq,
    steal, in ticks) from /proc/stat; None where there is no such file."""
    try:
        with open(PROC_STAT, encoding="ascii") as f:
            fields = f.readline().split()
        if not fields or fields[0] != "cpu":
            return None
        return [int(v) for v in fields[1:9]]
    except (OSError, ValueError):
        return None


def free_cpus(sample: float = CPU_SAMPLE) -> float | None:
    """How many CPUs were idle or ran only niced work over ``sample`` seconds (this
    process sleeps meanwhile, so its own CPU counts as free); None when unknown."""
    before = cpu_times()
    if before is None:
        return None
    time.sleep(sample)
    after = cpu_times()
    if after is None or len(after) != len(before):
        return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta)
    if total <= 0:
        return None
    _, nice, _, idle, iowait = delta[:5]
    return (nice + idle + iowait) / total * (os.cpu_count() or 1)


def import_capture(database: Database, path: Path,
                   progress: Callable[[int], None] | None = None,
                   force: bool = False, after: int | None = None,
                   attribute_files: bool = True,
                   stdin: BinaryIO | int | None = None) -> ImportResult:
    """Import one capture; ``after`` names an earlier session of the same medium whose
    file-system metadata the new one continues (a capture that starts mid-session).

    ``path`` ``-`` reads standard input (or ``stdin``, a descriptor or binary stream)."""
    live = str(path) == STDIN
    if not live:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.is_dir():
            raise InputError(f"{path}: is a directory")
    if after is not None and not database.session_exists(after):
        raise InputError(f"--after {after}: no such session")
    t0 = time.perf_counter()
    digest: str | None = None
    if not live:
        digest = sha256_of(path)  # of the file as stored, compressed or not
        existing = database.find_import(digest)
        if existing is not None and not force:
            return ImportResult(path, None, existing, 0, 0, [], 0.0)
    with (open(path, "rb") if not live else contextlib.nullcontext()) as handle:
        source: BinaryIO | int = handle if handle is not None else \
            (stdin if stdin is not None else standard_input())
        tap = Tap(source, digest=live)
        with collector_tuned():
            return _import(database, path, tap, digest, progress, after, attribute_files, t0)


@contextlib.contextmanager
def collector_tuned() -> Iterator[None]:
    """The import makes a few objects per record, short-lived and without cycles, while
    the long-lived ones (modules, the shadow volume, pending exchanges) only grow; the
    cyclic collector would walk those again and again.  So what exists is frozen out of
    its view for the import, and it runs less often; both are put back after."""
    threshold = gc.get_threshold()
    ours = gc.get_freeze_count() == 0  # a caller's own freeze is left as it is
    if ours:
        gc.freeze()
    gc.set_threshold(max(threshold[0], GC_YOUNG), threshold[1], max(threshold[2], GC_OLD))
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if ours:
            gc.unfreeze()


def _import(database: Database, path: Path, tap: Tap, digest: str | None,
            progress: Callable[[int], None] | None, after: int | None,
            attribute_files: bool, t0: float) -> ImportResult:
    live = digest is None
    name = "stdin" if live else str(path)
    stats = CaptureStats()
    stream = capture_stream(tap)
    try:
        stream_events = events(stream, stats, progress,
                               position=lambda: tap.bytes_read)
        first = next(stream_events, None)  # the container and linktype are checked here
    except CaptureFormatError as e:
        raise CaptureFormatError(f"{name}: {e}") from None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stats.first_ts or 0))
    session_id = database.new_session(source_name(path, stats.linktype), name, started,
                                      "capture", stats.linktype, digest)
    # A large file is stored by a second process while this one decodes, when a core is
    # free to run it.  Standard input is stored here: its size is unknown, and a live
    # capture needs each commit as soon as it can be made, not another hop through a
    # pipe to another process.
    background = not live and path.stat().st_size >= BACKGROUND_FROM and \
        database.is_sqlite and hasattr(os, "fork") and \
        spare_core()
    writer = SessionWriter(database, session_id, background=background,
                           attribute_files=attribute_files,
                           flush_every=LIVE_FLUSH if live else None)
    state, failure = "interrupted", None
    with deferred_interrupt() as interrupt:
        if live:
            tap.idle = writer.flush  # a quiet input: commit what is held
            tap.stop = lambda: interrupt.requested
        try:
            if after is not None:
                writer.continue_volume(database.stored_commands(after))
            if first is not None:
                writer.feed(first)
                writer.feed_all(stream_events, interrupt)
            if not interrupt.requested:
                if isinstance(stream, Gunzip):
                    stream.verify()  # damage after the framing stopped still fails
                state = "complete"
        except (UsbtraceError, OSError) as e:
            why = _reason(_root_cause(stream, e))
            state, failure = "failed", f"the import stopped: {why}"
            raise InputError(f"{name}: {why} (session {session_id} keeps what was "
                             "read before, marked failed)") from None
        except Exception as e:  # a decoder fault: the session says so, the CLI one line
            state, failure = "failed", f"the import stopped: {type(e).__name__}: {e}"
            raise
        finally:  # Ctrl-C leaves it "interrupted", with what was read until then
            tap.idle = None
            notes = [_notes(stats, name), stats.drop_note(), failure]
            if live:
                digest = tap.hexdigest()
                same = database.find_import(digest) if digest else None
                if same is not None and state == "complete":
                    notes.append(f"the same bytes as session {same}")
            writer.close(dropped=stats.dropped, malformed=stats.malformed.total,
                         notes="; ".join(n for n in notes if n) or None,
                         time_origin=stats.first_ts, state=state)
            if live:
                database.update_session(session_id, file_sha256=digest)
    if state == "interrupted":
        raise KeyboardInterrupt  # the session is closed and says so: now stop
    return ImportResult(path, session_id, None, stats.records, writer.commands,
                        stats.malformed, time.perf_counter() - t0,
                        caveats(writer.notes), stats.malformed.total)


def _root_cause(stream: BinaryIO, e: BaseException) -> BaseException:
    """A gzip stream damaged inside can inflate to wrong bytes before its checksum, at
    its end, fails: when the framing stops on those bytes, the stream's own check names
    the cause."""
    if isinstance(stream, Gunzip) and isinstance(e, SourceError):
        try:
            stream.verify()
        except SourceError as cause:
            return cause
        except OSError:
            pass
    return e


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)


def _notes(stats: CaptureStats, name: str = "capture.pcapng") -> str | None:
    parts = []
    if stats.malformed:
        listed = "; ".join(f"record {n}: {why}" for n, why in stats.malformed[:MAX_LISTED])
        more = stats.malformed.total - MAX_LISTED
        parts.append(f"malformed records: {listed}" + (f"; and {more} more" if more > 0
                                                         else ""))
    if stats.skipped:
        kinds = ", ".join(str(k) for k in sorted(stats.other_linktypes))
        parts.append(f"{stats.skipped} records of non-USB interfaces skipped (linktype "
                     f"{kinds})")
    if stats.folded:
        parts.append(f"{stats.folded} USBPcap control-stage records were folded into their "
                     "transfers (DATA stages into the submission, STATUS stages dropped), so "
                     "the session counts that many records fewer than the file holds")
    if stats.appended:
        parts.append(f"the file is {stats.appended + 1} pcap captures joined end to end (cat, "
                     "or a multi-member gzip), read as one session: their times are each "
                     "file's own, and a device of one is taken for the same device in the "
                     "next when its bus and address match")
    if stats.shared:
        parts.append(_shared_note(stats.shared, name, stats.sections > 1,
                                  stats.shared_unlisted))
    if stats.backwards:
        parts.append(f"the time goes back at {stats.backwards} records (the first is record "
                     f"{stats.backwards_first}, the largest step back "
                     f"{stats.backwards_most:.6f} s): "
                     "a command whose records straddle such a step has a wrong, even "
                     "negative, service time, and the rates per interval count each command "
                     "where its own time puts it")
    if stats.untimed:
        parts.append(f"no time for {stats.untimed} packets: they are Simple Packet Blocks, "
                     "which carry none, so each was given the time of the packet before it "
                     "(1970-01-01 where none came before), and service times and rates "
                     "around them are not measured")
    return "; ".join(parts) or None


def _shared_note(shared: list[SharedAddresses], name: str, sections: bool,
                 unlisted: int = 0) -> str:
    """Which devices came through several interfaces of one section, that they are
    decoded as one, and how to split the file so that each decodes apart (tshark's
    ``frame.interface_id`` is the id within the section, as here)."""
    listed = []
    for s in shared[:MAX_LISTED]:
        devices = ", ".join(f"bus {b} address {d}" for b, d in s.devices[:MAX_LISTED])
        extra = f" and {len(s.devices) - MAX_LISTED} more" if len(s.devices) > MAX_LISTED \
            else ""
        through = " and ".join(f"{i} ({n})" if n else str(i)
                               for i, n in zip(s.interfaces, s.names))
        listed.append(f"{devices}{extra} through interfaces {through}" +
                      (f" of section {s.section}" if sections else ""))
    unsaid = len(shared) - len(listed) + unlisted
    if unsaid:
        listed.append(f"and {unsaid} more")
    first = shared[0].interfaces[0]
    source = shlex.quote(name) if name != "stdin" else "CAPTURE"
    return ("devices seen through more than one interface of one section are decoded as "
            "one device each, so their commands are mixed or doubled (captures of two "
            "hosts merged with mergecap -I none, or usbmon0 captured beside usbmon1): " +
            " / ".join(listed) + ". To decode each interface apart, split the file: "
            f"tshark -r {source} -Y 'frame.interface_id == {first}' -w part{first}.pcapng, "
            "and so for each interface, then import the parts")
