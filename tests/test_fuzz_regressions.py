"""The fuzzer's regression corpus, replayed through every target, and a short campaign.

Each file in ``fuzz/corpus/regressions`` once made a target raise, hang or blow up;
it must now be refused with a ``UsbtraceError`` or imported.  Files whose finding lies
in another owner's file are listed in ``fuzz/corpus/expected_failures.json`` and
expected to fail until that owner's fix lands.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzz.generate import make_input
from fuzz.runner import CORPUS, expected_failures, load_seeds, run
from fuzz.targets import TARGETS
from fuzz.worker import RESTART_RSS, Outcome, Worker

EXPECTED = expected_failures()


def _cases() -> list[object]:
    cases: list[object] = []
    for path in sorted(CORPUS.glob("*")):
        entry = EXPECTED.get(path.name)
        marks = [pytest.mark.xfail(strict=False, reason=f"{entry['owner']}: {entry['note']}")] \
            if entry else []
        cases.append(pytest.param(path, id=path.name, marks=marks))
    return cases


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """One worker process, under the fuzzer's time and memory limits, for the corpus."""
    w = Worker(seeds=load_seeds())
    yield w
    w.stop()


def test_the_corpus_is_not_empty() -> None:
    assert list(CORPUS.glob("*")), CORPUS
    assert set(EXPECTED) <= {p.name for p in CORPUS.glob("*")}, "listed files are missing"


@pytest.mark.parametrize("path", _cases())
def test_corpus_file_gives_no_finding(worker: Worker, path: Path) -> None:
    outcome = worker.run(path.read_bytes(), TARGETS)
    assert not outcome.findings, "\n".join(f.describe() + "\n" + f.trace
                                           for f in outcome.findings)


def test_short_campaign_finds_nothing_new(tmp_path: Path) -> None:
    """A fixed-seed campaign on two workers: every finding it meets must already be a
    listed one, and no input comes near the time or memory limit."""
    out = io.StringIO()
    started = time.perf_counter()
    stats = run(200, seed=20261121, jobs=2, corpus=tmp_path / "new", out=out,
                report_every=1e9)
    assert stats.inputs == 200
    assert not stats.findings, out.getvalue()
    assert 0 < stats.max_input_seconds < 5 and 0 < stats.max_rss < 500 << 20
    assert time.perf_counter() - started < 60


def test_inputs_are_the_same_whatever_the_jobs(tmp_path: Path) -> None:
    """Workers make the inputs from (seed, index): one job or two, the campaign is the
    same inputs, so it refuses as often; and the parent makes the same input again."""
    seeds = load_seeds()
    assert make_input(5, 17, seeds).to_bytes() == make_input(5, 17, seeds).to_bytes()
    assert make_input(5, 17, seeds).to_bytes() != make_input(5, 18, seeds).to_bytes()
    one = run(30, seed=5, jobs=1, corpus=tmp_path, out=io.StringIO(), report_every=1e9)
    two = run(30, seed=5, jobs=2, corpus=tmp_path, out=io.StringIO(), report_every=1e9)
    assert (one.inputs, one.refused, one.known) == (two.inputs, two.refused, two.known)


def test_a_worker_whose_memory_stays_high_is_replaced(worker: Worker) -> None:
    """A long-lived worker must not carry one input's leftovers into the next input's
    500 MB: past RESTART_RSS resident, or a peak it could not reset, it is replaced."""
    before = worker.restarts
    worker.check(Outcome(rss_after=RESTART_RSS // 2))
    assert worker.restarts == before
    worker.check(Outcome(rss_after=RESTART_RSS + 1))
    assert worker.restarts == before + 1
    worker.check(Outcome(peak_rss=RESTART_RSS + 1, peak_is_input=False))
    assert worker.restarts == before + 2
    outcome = worker.run((1, 0), ("decode",))
    assert outcome.source and 0 < outcome.rss_after <= outcome.peak_rss < 500 << 20
