"""A campaign: seeds, mutated inputs to workers, findings minimised into the corpus.

Input ``i`` of a campaign is made from its own ``random.Random`` seeded by (seed, i),
by the worker that runs it (:mod:`fuzz.generate`), so a seed and an input count name a
campaign exactly, whatever the number of jobs.  A finding whose signature (kind, exception type,
project file, function) is new in the run is minimised — records dropped, then the
file cut — and saved under the corpus folder; one whose signature is listed in
``corpus/expected_failures.json`` is counted as known (its owner is fixing it).
With a state file (``--state``) a campaign is continued where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import TextIO

from fuzz.capture import Capture, load
from fuzz.generate import make_input
from fuzz.targets import TARGETS
from fuzz.worker import MEMORY_LIMIT, POLL, TIME_LIMIT, Finding, Outcome, Watch, Worker

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus" / "regressions"
EXPECTED = HERE / "corpus" / "expected_failures.json"
REPOSITORY = HERE.parent
SHARED = REPOSITORY.parent / "shared" / "captures"
MINIMISE_RUNS = 150
MINIMISE_SECONDS = 60.0


def seed_paths() -> list[Path]:
    """The shared third-party captures (where present) and the project's recordings."""
    found = sorted(p for p in SHARED.glob("*") if p.suffix not in (".md", ".json")) \
        if SHARED.is_dir() else []
    return found + sorted((REPOSITORY / "captures").glob("*.pcap*"))


def load_seeds() -> list[Capture]:
    seeds = [load(p) for p in seed_paths()]
    return [s for s in seeds if s.chunks]


def expected_failures() -> dict[str, dict[str, str]]:
    """Corpus files whose finding belongs to another file's owner: name -> details."""
    if not EXPECTED.exists():
        return {}
    return json.loads(EXPECTED.read_text())  # type: ignore[no-any-return]


def known_signatures() -> set[tuple[str, str, str, str]]:
    return {tuple(entry["signature"]) for entry in expected_failures().values()  # type: ignore[misc]
            if "signature" in entry}


@dataclass
class Stats:
    inputs: int = 0
    seconds: float = 0.0  # wall time of the campaign, all its parts together
    cpu_seconds: float = 0.0  # CPU time of the inputs, all their targets together
    max_input_seconds: float = 0.0  # CPU time of the costliest input
    max_input_wall: float = 0.0
    max_rss: int = 0
    slowest: str = ""  # the seed of the slowest input, and of the largest
    largest: str = ""
    refused: int = 0  # target runs that refused an input with a one-line error
    findings: list[tuple[Finding, Path | None]] = field(default_factory=list)  # new ones
    known: int = 0  # findings of signatures listed as expected failures
    known_by_file: dict[str, int] = field(default_factory=dict)
    repeats: int = 0  # findings of a signature already seen in this run
    earlier_findings: list[str] = field(default_factory=list)  # from earlier parts

    def line(self) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        new = len(self.findings) + len(self.earlier_findings)
        return (f"inputs {self.inputs}  inputs/s {rate:.1f}  findings {new} new, "
                f"{self.known} known, {self.repeats} repeated  max CPU s/input "
                f"{self.max_input_seconds:.2f} (wall {self.max_input_wall:.2f})  "
                f"max RSS {self.max_rss / (1 << 20):.0f} MB  refused {self.refused}")


class Campaign:
    """What a campaign has done, kept in a state file so that it can be stopped
    (Ctrl-C, SIGTERM, a lost machine) and continued by the same command.

    Inputs are named by index, so the state is which indexes are settled (all below
    ``done_below``, and the few above it that finished out of order), the running
    totals, the signatures already seen, and one entry per part run: when, on which
    commit of the code, and how many inputs.  It is written to a temporary name and
    renamed, every ``SAVE_EVERY`` seconds and when a part ends.
    """

    SAVE_EVERY = 60.0

    def __init__(self, path: Path | None, inputs: int, seed: int,
                 targets: tuple[str, ...], jobs: int) -> None:
        self.path, self.inputs, self.seed, self.targets = path, inputs, seed, targets
        self.done_below = 0
        self.done_above: set[int] = set()
        self.seen: set[tuple[str, str, str, str]] = set()
        self.stats = Stats()
        self.parts: list[dict[str, object]] = []
        self.part: dict[str, object] = {"commit": _commit(), "jobs": jobs,
                                        "started": _now(), "inputs": 0, "seconds": 0.0}
        self.saved = time.perf_counter()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        state = json.loads(path.read_text())
        if (state["inputs"], state["seed"], tuple(state["targets"])) != \
                (self.inputs, self.seed, self.targets):
            raise SystemExit(f"{path}: a campaign of {state['inputs']} inputs, seed "
                             f"{state['seed']}, targets {','.join(state['targets'])}: "
                             "run it with those, or give another --state file")
        self.done_below, self.done_above = state["done_below"], set(state["done_above"])
        self.seen = {tuple(s) for s in state["seen"]}  # type: ignore[misc]
        self.parts = state["parts"]
        totals = state["stats"]
        for name in ("inputs", "seconds", "cpu_seconds", "max_input_seconds",
                     "max_input_wall", "max_rss", "slowest", "largest", "refused", "known",
                     "known_by_file", "repeats", "earlier_findings"):
            setattr(self.stats, name, totals[name])

    def todo(self) -> Iterator[int]:
        """The indexes not settled yet, in order."""
        for index in range(self.done_below, self.inputs):
            if index not in self.done_above:
                yield index

    def settled(self, index: int) -> None:
        self.done_above.add(index)
        while self.done_below in self.done_above:
            self.done_above.remove(self.done_below)
            self.done_below += 1
        self.part["inputs"] = int(self.part["inputs"]) + 1  # type: ignore[call-overload]

    def save(self, elapsed: float, force: bool = False) -> None:
        """Write the state (at most every ``SAVE_EVERY`` seconds unless ``force``)."""
        now = time.perf_counter()
        if self.path is None or (not force and now - self.saved < self.SAVE_EVERY):
            return
        self.saved = now
        self.part.update(seconds=round(elapsed, 1), ended=_now())
        totals = {name: getattr(self.stats, name) for name in (
            "inputs", "cpu_seconds", "max_input_seconds", "max_input_wall", "max_rss",
            "slowest", "largest", "refused", "known", "known_by_file", "repeats")}
        totals["seconds"] = self.stats.seconds
        totals["earlier_findings"] = self.stats.earlier_findings + [
            f"{finding.describe()} -> {saved}" for finding, saved in self.stats.findings]
        state = {"inputs": self.inputs, "seed": self.seed, "targets": list(self.targets),
                 "done_below": self.done_below, "done_above": sorted(self.done_above),
                 "seen": sorted(self.seen), "parts": self.parts + [self.part],
                 "stats": totals}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        os.replace(temporary, self.path)


def _commit() -> str:
    """The code's commit, and whether the tree differs from it (best effort)."""
    try:
        head = subprocess.run(["git", "-C", str(REPOSITORY), "describe", "--always",
                               "--dirty"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run(inputs: int, seed: int = 0, targets: tuple[str, ...] = TARGETS, jobs: int = 1,
        corpus: Path = CORPUS, time_limit: float = TIME_LIMIT,
        memory_limit: int = MEMORY_LIMIT, out: TextIO = sys.stdout,
        report_every: float = 10.0, state: Path | None = None) -> Stats:
    """Run a campaign of ``inputs`` inputs, or what is left of it when ``state`` names
    the file of one already begun; print progress and a summary line.  Ctrl-C or
    SIGTERM saves the state and raises ``KeyboardInterrupt``."""
    seeds = load_seeds()
    if not seeds:
        raise SystemExit("no seed captures found (captures/ and ../shared/captures/)")
    known = known_signatures()
    jobs = max(jobs, 1)
    campaign = Campaign(state, inputs, seed, targets, jobs)
    stats, seen = campaign.stats, campaign.seen
    if campaign.done_below or campaign.done_above:
        print(f"continuing {state}: {stats.inputs} of {inputs} inputs done in "
              f"{len(campaign.parts)} part(s)", file=out, flush=True)
    workers = [Worker(memory_limit, time_limit, seeds) for _ in range(jobs)]
    pending: dict[int, tuple[Worker, int, Watch]] = {}
    earlier = stats.seconds
    started = last_report = time.perf_counter()

    def settle(index: int, outcome: Outcome, worker: Worker) -> None:
        stats.inputs += 1
        stats.cpu_seconds += outcome.seconds
        name = outcome.source or make_input(seed, index, seeds).name
        if outcome.seconds > stats.max_input_seconds:
            stats.max_input_seconds, stats.slowest = outcome.seconds, name
        stats.max_input_wall = max(stats.max_input_wall, outcome.wall)
        if outcome.peak_rss > stats.max_rss:
            stats.max_rss, stats.largest = outcome.peak_rss, name
        stats.refused += len(outcome.refused)
        for finding in outcome.findings:
            signature = finding.signature
            if signature in known:
                stats.known += 1
                stats.known_by_file[finding.file] = stats.known_by_file.get(finding.file, 0) + 1
            elif signature in seen:
                stats.repeats += 1
            else:
                seen.add(signature)
                capture = make_input(seed, index, seeds)  # as the worker made it
                saved = save(minimise(worker, capture, finding), corpus, finding)
                stats.findings.append((finding, saved))
                print(f"finding: {finding.describe()}\n  saved {saved}", file=out, flush=True)
        campaign.settled(index)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM is taken like Ctrl-C: the state is saved

    previous = signal.signal(signal.SIGTERM, terminate)
    todo = campaign.todo()
    try:
        idle = list(workers)
        more = True
        while more or pending:
            while idle and more:
                index = next(todo, None)
                if index is None:
                    more = False
                    break
                worker = idle.pop()
                if jobs == 1:  # in order, in this process's time: simplest
                    settle(index, worker.run((seed, index), targets), worker)
                    idle.append(worker)
                    break  # to the progress report
                pending[id(worker.channel)] = (worker, index,
                                               worker.send((seed, index), targets))
            if pending:
                ready = wait([w.channel for w, _, _ in pending.values()], timeout=POLL)
                for channel in ready:
                    worker, index, _ = pending.pop(id(channel))
                    try:
                        outcome = worker.channel.recv()
                        worker.check(outcome)
                    except (EOFError, OSError):
                        worker.restart()
                        outcome = Outcome([Finding(",".join(targets), "crash", "crash",
                                                   "the worker died", "?", "?", 0)])
                    settle(index, outcome, worker)
                    idle.append(worker)
                for key, (worker, index, watch) in list(pending.items()):
                    if (message := watch.verdict()) is not None:  # hung: replaced
                        del pending[key]
                        settle(index, worker.hung(targets, message, watch), worker)
                        idle.append(worker)
            now = time.perf_counter()
            stats.seconds = earlier + now - started
            campaign.save(now - started)
            if now - last_report >= report_every:
                last_report = now
                print(stats.line(), file=out, flush=True)
    except KeyboardInterrupt:
        stats.seconds = earlier + time.perf_counter() - started
        campaign.save(time.perf_counter() - started, force=True)
        print(stats.line(), file=out, flush=True)
        print(f"stopped; the state is in {state}" if state else "stopped", file=out,
              flush=True)
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        for worker in workers:
            worker.stop()
    stats.seconds = earlier + time.perf_counter() - started
    campaign.save(time.perf_counter() - started, force=True)
    print(stats.line(), file=out, flush=True)
    print(f"slowest input from {stats.slowest}; largest from {stats.largest}", file=out,
          flush=True)
    if stats.earlier_findings:
        print("findings of earlier parts:\n  " + "\n  ".join(stats.earlier_findings),
              file=out, flush=True)
    if stats.known_by_file:
        print("known findings by file: " + ", ".join(
            f"{name} {count}" for name, count in sorted(stats.known_by_file.items())),
            file=out, flush=True)
    return stats


def minimise(worker: Worker, capture: Capture, finding: Finding,
             runs: int = MINIMISE_RUNS, seconds: float = MINIMISE_SECONDS) -> bytes:
    """A smaller input with the same finding: records dropped in halving groups, then
    one at a time, then the file cut as short as it still fails."""
    targets = tuple(t for t in TARGETS if t in finding.target.split(",")) or TARGETS
    deadline = time.perf_counter() + seconds
    budget = [runs]

    def fails(candidate: Capture) -> bool:
        if budget[0] <= 0 or time.perf_counter() > deadline:
            return False
        budget[0] -= 1
        outcome = worker.run(candidate.to_bytes(), targets)
        return any(f.signature == finding.signature for f in outcome.findings)

    best = capture.copy()
    size = max(len(best.chunks) // 2, 1)
    while size >= 1 and budget[0] > 0:
        i = 0
        while i < len(best.chunks):
            candidate = best.copy()
            del candidate.chunks[i : i + size]
            if fails(candidate):
                best = candidate
            else:
                i += size
        size //= 2
    data = best.to_bytes()
    low, high = 0, len(data)  # the shortest prefix that still fails, by bisection
    while low < high and budget[0] > 0:
        middle = (low + high) // 2
        trial = best.copy()
        trial.cut = middle  # never past best's own cut: middle < len(data)
        if fails(trial):
            high = middle
        else:
            low = middle + 1
    return data[:high]


def save(data: bytes, corpus: Path, finding: Finding) -> Path:
    corpus.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:12]
    kind = "pcapng" if data[:4] == b"\x0a\x0d\x0d\x0a" else "pcap"
    target = finding.target.split(",")[0]
    path = corpus / f"{target}-{finding.kind}-{digest}.{kind}"
    path.write_bytes(data)
    return path
