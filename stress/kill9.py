"""kill -9 at a random moment, many times: the database survives and tells the truth.

For each run, ``usbtrace record`` (the files workload copying a random file) or
``usbtrace import`` (a real capture tiled to ``--mib`` MiB) starts on a database
that already holds a finished session, and is killed with SIGKILL at a random
moment.  Then:

* ``PRAGMA integrity_check`` is ``ok``;
* the earlier session's rows are byte for byte what they were;
* the killed session reads ``interrupted`` (or ``complete`` when the kill came
  after it finished) and its ``command_count`` equals its stored commands;
* no process that had the database open is left running.

Run:  python stress/kill9.py [--runs 20] [--mib 100] [--what record,import]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.tiling import tile  # noqa: E402

CAPTURE = REPO.parent / "shared" / "captures" / "ajbanjara__usb_memory_stick.pcap"
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def usbtrace(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "usbtrace", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def rows_digest(db: Path, session: int) -> str:
    digest = hashlib.sha256()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for table in ("urbs", "irps", "scsi_commands", "file_activity", "devices"):
            for row in conn.execute(f"SELECT * FROM {table} WHERE session_id = ? "
                                    "ORDER BY 2", (session,)):
                digest.update(repr(row).encode())
    return digest.hexdigest()


def holders(db: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(db).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def one_run(what: str, folder: Path, source: Path, seconds: float, rng: random.Random
            ) -> tuple[bool, str]:
    db = folder / f"{what}.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "usbtrace", "record", "--db", str(db), "--size",
                    "4M"], env=ENV, check=True, capture_output=True)
    before = rows_digest(db, 1)
    if what == "record":
        process = usbtrace("record", "--db", str(db), "--workload", "files", "--copy",
                           str(source))
    else:
        process = usbtrace("import", str(source), "--db", str(db), "--quiet")
    delay = rng.uniform(0.05, seconds)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while holders(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = holders(db)
    if left:
        return False, f"processes still hold the database: {left}"
    with sqlite3.connect(db) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        stored = conn.execute("SELECT count(*) FROM scsi_commands WHERE session_id = 2"
                              ).fetchone()[0]
    if check != "ok":
        return False, f"integrity_check: {check}"
    if rows_digest(db, 1) != before:
        return False, "the earlier session changed"
    listing = subprocess.run([sys.executable, "-m", "usbtrace", "sessions", "--db", str(db),
                              "--format", "json"], env=ENV, capture_output=True, text=True)
    sessions = json.loads(listing.stdout)
    if len(sessions) == 1:
        return True, f"killed after {delay:.2f} s, before its session existed"
    state, commands = sessions[1]["state"], sessions[1]["command_count"]
    if state not in ("interrupted", "complete"):
        return False, f"the killed session says {state}"
    if commands != stored:
        return False, f"command_count {commands} but {stored} commands stored"
    return True, f"killed after {delay:.2f} s: {state}, {stored} commands"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mib", type=int, default=100, help="size of the tiled capture")
    parser.add_argument("--what", default="record,import")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for what in args.what.split(","):
            if what == "record":
                source = folder / "copy.bin"
                source.write_bytes(rng.randbytes(20 << 20))
            else:
                source = folder / "big.pcap"
                tile(CAPTURE, source, args.mib * 1_000_000 // 288)
            start = time.monotonic()  # one run to the end, to know how long one takes
            subprocess.run([sys.executable, "-m", "usbtrace", *(
                ["record", "--db", str(folder / "t.db"), "--workload", "files", "--copy",
                 str(source)] if what == "record" else
                ["import", str(source), "--db", str(folder / "t.db")])],
                env=ENV, check=True, capture_output=True)
            seconds = time.monotonic() - start
            print(f"{what}: one whole run takes {seconds:.1f} s; killing {args.runs} runs "
                  "at random moments within that")
            for n in range(1, args.runs + 1):
                ok, message = one_run(what, folder, source, seconds, rng)
                failures += not ok
                print(f"  {what} {n:2d}: {'ok  ' if ok else 'FAIL'} {message}", flush=True)
    print(f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
