"""Import capture files as sessions: one session per file.

A file already imported into the same database (same SHA-256) is reported
and skipped.  Malformed records are counted and listed by record number in
the session's notes; they never stop the rest of the import.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from usbtrace.capture.reader import CaptureStats, events, source_name
from usbtrace.errors import CaptureFormatError, InputError, UsbtraceError
from usbtrace.interrupt import deferred_interrupt
from usbtrace.store.database import Database
from usbtrace.store.writer import SessionWriter

MAX_LISTED = 20
BACKGROUND_FROM = 8 << 20  # bytes of capture


@dataclass
class ImportResult:
    path: Path
    session_id: int | None
    duplicate_of: int | None
    records: int
    commands: int
    malformed: list[tuple[int, str]]
    seconds: float


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def import_capture(database: Database, path: Path,
                   progress: Callable[[int], None] | None = None,
                   force: bool = False, after: int | None = None,
                   attribute_files: bool = True) -> ImportResult:
    """Import one capture; ``after`` names an earlier session of the same medium whose
    file-system metadata the new one continues (a capture that starts mid-session)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if after is not None and not database.session_exists(after):
        raise InputError(f"--after {after}: no such session")
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    t0 = time.perf_counter()
    digest = sha256_of(path)
    existing = database.find_import(digest)
    if existing is not None and not force:
        return ImportResult(path, None, existing, 0, 0, [], 0.0)
    stats = CaptureStats()
    with open(path, "rb") as stream:
        stream_events = events(stream, stats, progress)
        try:
            first = next(stream_events, None)  # the container and linktype are checked here
        except CaptureFormatError as e:
            raise CaptureFormatError(f"{path}: {e}") from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stats.first_ts or 0))
        session_id = database.new_session(source_name(path, stats.linktype), str(path), started,
                                          "capture", stats.linktype, digest)
        # a large file is stored by a second process while this one decodes
        background = path.stat().st_size >= BACKGROUND_FROM and database.is_sqlite \
            and "fork" in multiprocessing.get_all_start_methods()
        writer = SessionWriter(database, session_id, background=background,
                               attribute_files=attribute_files)
        state, failure = "interrupted", None
        with deferred_interrupt() as interrupt:
            try:
                if after is not None:
                    writer.continue_volume(database.stored_commands(after))
                if first is not None:
                    writer.feed(first)
                    for event in stream_events:
                        writer.feed(event)
                        if interrupt.requested:
                            break
                if not interrupt.requested:
                    state = "complete"
            except (UsbtraceError, OSError) as e:
                state, failure = "failed", f"the import stopped: {_reason(e)}"
                raise InputError(f"{path}: {_reason(e)} (session {session_id} keeps what was "
                                 "read before, marked failed)") from None
            except Exception as e:  # a decoder fault: the session says so, the CLI one line
                state, failure = "failed", f"the import stopped: {type(e).__name__}: {e}"
                raise
            finally:  # Ctrl-C leaves it "interrupted", with what was read until then
                writer.close(malformed=len(stats.malformed),
                             notes="; ".join(n for n in (_notes(stats), failure) if n) or None,
                             time_origin=stats.first_ts, state=state)
    if state == "interrupted":
        raise KeyboardInterrupt  # the session is closed and says so: now stop
    return ImportResult(path, session_id, None, stats.records, writer.commands,
                        stats.malformed, time.perf_counter() - t0)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)


def _notes(stats: CaptureStats) -> str | None:
    parts = []
    if stats.malformed:
        listed = "; ".join(f"record {n}: {why}" for n, why in stats.malformed[:MAX_LISTED])
        more = len(stats.malformed) - MAX_LISTED
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
    return "; ".join(parts) or None
