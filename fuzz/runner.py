"""A campaign: seeds, mutated inputs to workers, findings minimised into the corpus.

Input ``i`` of a campaign is made from its own ``random.Random`` seeded by (seed, i),
by the worker that runs it (:mod:`fuzz.generate`), so a seed and an input count name a
campaign exactly, whatever the number of jobs.  A finding whose signature (kind, exception type,
project file, function) is new in the run is minimised — records dropped, then the
file cut — and saved under the corpus folder; one whose signature is listed in
``corpus/expected_failures.json`` is counted as known (its owner is fixing it).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import TextIO

from fuzz.capture import Capture, load
from fuzz.generate import make_input
from fuzz.targets import TARGETS
from fuzz.worker import MEMORY_LIMIT, TIME_LIMIT, Finding, Outcome, Worker

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
    seconds: float = 0.0
    max_input_seconds: float = 0.0
    max_rss: int = 0
    slowest: str = ""  # the seed of the slowest input, and of the largest
    largest: str = ""
    refused: int = 0  # target runs that refused an input with a one-line error
    findings: list[tuple[Finding, Path | None]] = field(default_factory=list)  # new ones
    known: int = 0  # findings of signatures listed as expected failures
    known_by_file: dict[str, int] = field(default_factory=dict)
    repeats: int = 0  # findings of a signature already seen in this run

    def line(self) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return (f"inputs {self.inputs}  inputs/s {rate:.1f}  findings {len(self.findings)} new, "
                f"{self.known} known, {self.repeats} repeated  max s/input "
                f"{self.max_input_seconds:.2f}  max RSS {self.max_rss / (1 << 20):.0f} MB  "
                f"refused {self.refused}")


def run(inputs: int, seed: int = 0, targets: tuple[str, ...] = TARGETS, jobs: int = 1,
        corpus: Path = CORPUS, time_limit: float = TIME_LIMIT,
        memory_limit: int = MEMORY_LIMIT, out: TextIO = sys.stdout,
        report_every: float = 10.0) -> Stats:
    """Run a campaign of ``inputs`` inputs; print progress and a summary line."""
    seeds = load_seeds()
    if not seeds:
        raise SystemExit("no seed captures found (captures/ and ../shared/captures/)")
    known = known_signatures()
    seen: set[tuple[str, str, str, str]] = set()
    stats = Stats()
    workers = [Worker(memory_limit, time_limit, seeds) for _ in range(max(jobs, 1))]
    pending: dict[int, tuple[Worker, int]] = {}
    started = last_report = time.perf_counter()

    def settle(index: int, outcome: Outcome, worker: Worker) -> None:
        stats.inputs += 1
        name = outcome.source or make_input(seed, index, seeds).name
        if outcome.seconds > stats.max_input_seconds:
            stats.max_input_seconds, stats.slowest = outcome.seconds, name
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

    try:
        made = 0
        idle = list(workers)
        while made < inputs or pending:
            while idle and made < inputs:
                worker = idle.pop()
                index = made
                made += 1
                if jobs <= 1:  # in order, in this process's time: simplest
                    settle(index, worker.run((seed, index), targets), worker)
                    idle.append(worker)
                    break  # to the progress report
                else:
                    worker.channel.send(((seed, index), targets))
                    pending[id(worker.channel)] = (worker, index)
            if pending:
                ready = wait([w.channel for w, _ in pending.values()],
                             timeout=time_limit + 10)
                if not ready:  # a silent worker: treat each pending one as hung
                    for key, (worker, index) in list(pending.items()):
                        del pending[key]
                        worker.restart()
                        settle(index, Outcome([Finding(",".join(targets), "hang", "hang",
                                                         "no answer", "?", "?", 0)]), worker)
                        idle.append(worker)
                for channel in ready:
                    worker, index = pending.pop(id(channel))
                    try:
                        outcome = worker.channel.recv()
                        worker.check(outcome)
                    except (EOFError, OSError):
                        worker.restart()
                        outcome = Outcome([Finding(",".join(targets), "crash", "crash",
                                                   "the worker died", "?", "?", 0)])
                    settle(index, outcome, worker)
                    idle.append(worker)
            now = time.perf_counter()
            stats.seconds = now - started
            if now - last_report >= report_every:
                last_report = now
                print(stats.line(), file=out, flush=True)
    finally:
        for worker in workers:
            worker.stop()
    stats.seconds = time.perf_counter() - started
    print(stats.line(), file=out, flush=True)
    print(f"slowest input from {stats.slowest}; largest from {stats.largest}", file=out,
          flush=True)
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
