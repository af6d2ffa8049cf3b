"""What an input is run through: the real entry points, each on a file on disk.

* ``import``: :func:`usbtrace.importing.import_capture` into a fresh SQLite database,
  with file attribution (the path ``usbtrace import`` takes);
* ``decode``: the capture readers and the decoding stages alone (pairing, descriptors,
  Bulk-Only to SCSI, CDBs, sense data, setup names);
* ``shadow``: the decoded commands through a shadow volume per logical unit;
* ``replay-device`` and ``replay-host``: :func:`usbtrace.replay.run.replay` in each mode;
* ``export``: an import, then the session written back as pcapng in both record formats
  and read again.

Targets of one input that would repeat the same deterministic work share it: ``shadow``
takes the commands ``decode`` produced (or the exception it raised) and ``export`` the
session ``import`` stored, and ``replay-host`` the recording (the survey pass) that
``replay-device`` loaded, so each input is decoded, imported and surveyed once.  Each
target alone still does the whole work itself, and the replays still go through
:func:`usbtrace.replay.run.replay`.

A target may refuse an input with a ``UsbtraceError`` (one line at the CLI); anything
else that escapes is a finding.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from usbtrace.capture.export import export
from usbtrace.capture.reader import CaptureStats, events
from usbtrace.decode.bot import BotDecoder, ScsiCommand
from usbtrace.decode.identity import IdentityTracker
from usbtrace.decode.pairing import Exchange, Pairer
from usbtrace.fs.shadow import Attributor
from usbtrace.importing import import_capture
from usbtrace.records import CONTROL
from usbtrace.replay import run as replay_run
from usbtrace.replay.recording import Recording
from usbtrace.replay.run import replay
from usbtrace.storage import scsi
from usbtrace.store.database import Database
from usbtrace.store.writer import storable_lba
from usbtrace.usb import descriptors, setup

T = TypeVar("T")

TARGETS = ("import", "decode", "shadow", "replay-device", "replay-host", "export")


def decoded(path: Path) -> list[ScsiCommand]:
    """Every SCSI command of a capture, through the stages an import runs."""
    stats = CaptureStats()
    pairer, bot, identity = Pairer(), BotDecoder(), IdentityTracker()
    commands: list[ScsiCommand] = []

    def take(x: Exchange, sealed: bool = True) -> None:
        if not x.is_urb:
            return
        if not sealed:  # a bulk OUT transfer at its submission: Bulk-Only reads it now
            commands.extend(bot.take(x, sealed))
            return
        identity.feed(x)
        first = x.first
        if first.transfer_type == CONTROL and first.setup:
            setup.request_name(first.setup)
            if x.data and len(first.setup) >= 4 and first.setup[3] == descriptors.CONFIGURATION:
                descriptors.configuration_tree(x.data)
        commands.extend(bot.take(x, sealed))

    with open(path, "rb") as stream:
        for event in events(stream, stats):
            for x, sealed in pairer.feed(event):
                take(x, sealed)
    for x in pairer.flush():
        take(x)
    commands.extend(bot.flush())
    for cmd in commands:  # sense data is parsed wherever a log shows it
        scsi.parse_sense(cmd.data)
    return commands


class Workspace:
    """A directory per worker, and the database imports go to.

    One database serves many imports (``force``: the same bytes may come twice), and
    is started afresh every ``FRESH_EVERY`` of them so that it stays small; an import
    does not read other sessions, so a finding never depends on the ones before it.
    """

    FRESH_EVERY = 200

    def __init__(self, root: Path) -> None:
        self.root = root
        self._database: Database | None = None
        self._imports = 0
        self._shared: dict[str, tuple[object, BaseException | None]] = {}

    def begin(self) -> None:
        """A new input: forget what the previous one's targets left to share."""
        self._shared.clear()

    def shared(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per input: later callers get its result, or its exception
        raised again (the same traceback, so a finding keeps its place and signature)."""
        if key in self._shared:
            value, error = self._shared[key]
            if error is not None:
                raise error
            return value  # type: ignore[return-value]
        try:
            result = compute()
        except Exception as e:
            self._shared[key] = (None, e)
            raise
        self._shared[key] = (result, None)
        return result

    def database(self) -> Database:
        if self._database is None or self._imports >= self.FRESH_EVERY:
            self.close()
            path = self.root / "fuzz.db"
            path.unlink(missing_ok=True)
            self._database = Database(path)
            self._imports = 0
        self._imports += 1
        return self._database

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
            self._database = None

    def run(self, target: str, path: Path) -> None:
        TARGET_FUNCTIONS[target](self, path)


def _imported(ws: Workspace, path: Path) -> tuple[Database, int]:
    """The input imported (once per input), and its session's id."""
    def run() -> tuple[Database, int]:
        database = ws.database()
        return database, int(import_capture(database, path, force=True).session_id or 0)
    return ws.shared("import", run)


def _import(ws: Workspace, path: Path) -> None:
    _imported(ws, path)


def _export(ws: Workspace, path: Path) -> None:
    database, sid = _imported(ws, path)
    _, sessions = database.query(f"SELECT time_origin FROM sessions WHERE id = {sid}")
    columns, rows = database.query(f"SELECT * FROM urbs WHERE session_id = {sid} ORDER BY seq")
    records = [dict(zip(columns, r)) for r in rows]
    for kind in ("usbpcap", "usbmon"):
        out = io.BytesIO()
        export(records, out, kind, sessions[0][0] or 0.0)
        out.seek(0)
        for _ in events(out, CaptureStats()):
            pass


def _decode(ws: Workspace, path: Path) -> None:
    ws.shared("decode", lambda: decoded(path))


def _shadow(ws: Workspace, path: Path) -> None:
    volumes: dict[tuple[int | None, int | None, int], Attributor] = {}
    for cmd in ws.shared("decode", lambda: decoded(path)):
        attributor = volumes.setdefault((cmd.bus, cmd.device, cmd.lun), Attributor())
        info = cmd.info
        attributor.feed(cmd.seq, info.opcode, storable_lba(info.lba), info.blocks, cmd.data,
                        cmd.status)
    for attributor in volumes.values():
        attributor.flush()


_load = replay_run.load


def _replay(mode: str) -> Callable[[Workspace, Path], None]:
    def run(ws: Workspace, path: Path) -> None:
        def load(source: str, db: str | None = None,
                 device: tuple[int, int] | None = None) -> Recording:
            # only read (the replays copy what they change); built by the real loader
            return ws.shared(f"recording {source} {db} {device}",
                             lambda: _load(source, db, device))

        replay_run.load = load  # type: ignore[assignment]  # replay() looks it up by name
        try:
            replay(str(path), mode=mode)
        finally:
            replay_run.load = _load
    return run


TARGET_FUNCTIONS: dict[str, Callable[[Workspace, Path], None]] = {
    "import": _import, "decode": _decode, "shadow": _shadow,
    "replay-device": _replay("device"), "replay-host": _replay("host"), "export": _export,
}
