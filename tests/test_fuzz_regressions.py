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

from fuzz.runner import CORPUS, expected_failures, run
from fuzz.targets import TARGETS
from fuzz.worker import Worker

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
    w = Worker()
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
    """A fixed-seed campaign: every finding it meets must already be a listed one."""
    out = io.StringIO()
    started = time.perf_counter()
    stats = run(300, seed=20261121, corpus=tmp_path / "new", out=out, report_every=1e9)
    assert stats.inputs == 300
    assert not stats.findings, out.getvalue()
    assert stats.max_input_seconds < 5 and stats.max_rss < 500 << 20
    assert time.perf_counter() - started < 60
