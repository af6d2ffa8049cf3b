"""The fuzzer's regression corpus, replayed through every target, and a short campaign.

Each file in ``fuzz/corpus/regressions`` once made a target raise, hang or blow up;
it must now be refused with a ``UsbtraceError`` or imported.  Files whose finding lies
in another owner's file are listed in ``fuzz/corpus/expected_failures.json`` and
expected to fail until that owner's fix lands.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzz import worker as worker_module
from fuzz.generate import make_input
from fuzz.runner import CORPUS, expected_failures, load_seeds, run
from fuzz.targets import TARGETS
from fuzz.worker import RESTART_RSS, Outcome, Watch, Worker, run_input

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
    stats = run(200, seed=20261121, jobs=2, corpus=tmp_path / "new", out=out,
                report_every=1e9)
    assert stats.inputs == 200
    assert not stats.findings, out.getvalue()
    assert 0 < stats.max_input_seconds < 5 and 0 < stats.max_rss < 500 << 20
    assert stats.max_input_wall >= stats.max_input_seconds * 0.5


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


class _StopAfter(io.StringIO):
    """A progress stream that presses Ctrl-C at its ``n``-th line."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def write(self, text: str) -> int:
        if text.startswith("inputs "):
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt
        return super().write(text)


def test_a_stopped_campaign_continues_where_it_stopped(tmp_path: Path) -> None:
    """Ctrl-C saves the state; the same command with the same state file runs only
    what is left, and the two parts add up to the campaign run in one go."""
    state = tmp_path / "state.json"
    whole = run(24, seed=7, jobs=2, corpus=tmp_path, out=io.StringIO(), report_every=1e9)
    with pytest.raises(KeyboardInterrupt):
        run(24, seed=7, jobs=2, corpus=tmp_path, out=_StopAfter(3), report_every=0,
            state=state)
    first = json.loads(state.read_text())
    assert 0 < first["stats"]["inputs"] < 24
    assert first["done_below"] + len(first["done_above"]) == first["stats"]["inputs"]
    out = io.StringIO()
    rest = run(24, seed=7, jobs=2, corpus=tmp_path, out=out, report_every=1e9, state=state)
    assert out.getvalue().startswith(f"continuing {state}: {first['stats']['inputs']} of 24")
    assert (rest.inputs, rest.refused, rest.known) == (whole.inputs, whole.refused, whole.known)
    final = json.loads(state.read_text())
    assert final["done_below"] == 24 and not final["done_above"]
    assert [part["inputs"] for part in final["parts"]] == [first["stats"]["inputs"],
                                                           24 - first["stats"]["inputs"]]
    with pytest.raises(SystemExit, match="a campaign of 24 inputs, seed 7"):
        run(25, seed=7, jobs=2, corpus=tmp_path, out=io.StringIO(), state=state)


class _Workspace:
    """A stand-in workspace whose one target sleeps or spins."""

    def __init__(self, root: Path, seconds: float, busy: bool) -> None:
        self.root, self.seconds, self.busy = root, seconds, busy

    def begin(self) -> None:
        pass

    def run(self, target: str, path: Path) -> None:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            if not self.busy:
                time.sleep(0.05)


def test_the_time_limit_is_cpu_time(tmp_path: Path) -> None:
    """An input that waits (a starved worker on a busy machine) is not slow; one that
    computes past the limit is a timeout finding."""
    waiting = run_input(_Workspace(tmp_path, 0.6, busy=False), b"", ("decode",), 0.3)
    assert not waiting.findings and waiting.wall >= 0.6 > waiting.seconds
    spinning = run_input(_Workspace(tmp_path, 5.0, busy=True), b"", ("decode",), 0.3)
    assert [f.kind for f in spinning.findings] == ["timeout"]
    assert 0.25 <= spinning.seconds < 1.0  # the timer and process_time() round apart


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_a_silent_worker_is_hung_only_when_it_spins_or_blocks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent's watch: CPU spent past the limit plus the grace, or no progress at
    all while not stopped, is a hang; a worker stopped with SIGSTOP is not."""
    monkeypatch.setattr(worker_module, "GRACE", 0.2)
    monkeypatch.setattr(worker_module, "STALL", 0.5)
    spinning, blocked = _child("while True: pass"), _child("import time; time.sleep(60)")
    stopped = _child("import time; time.sleep(60)")
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        watches = {name: Watch(p.pid, 0.2) for name, p in
                   (("spinning", spinning), ("blocked", blocked), ("stopped", stopped))}
        verdicts: dict[str, str | None] = {name: None for name in watches}
        deadline = time.perf_counter() + 20
        while time.perf_counter() < deadline and not (verdicts["spinning"]
                                                      and verdicts["blocked"]):
            time.sleep(0.1)
            verdicts = {name: verdicts[name] or w.verdict() for name, w in watches.items()}
        assert verdicts["spinning"] and "CPU time" in verdicts["spinning"]
        assert verdicts["blocked"] and "no progress" in verdicts["blocked"]
        assert verdicts["stopped"] is None
    finally:
        for p in (spinning, blocked, stopped):
            p.kill()
            p.wait()


def test_a_worker_started_from_a_large_process_starts_small() -> None:
    """A worker forked from a test run that holds hundreds of MB would start with them,
    inside its own 500 MB; from a large process it is spawned instead."""
    ballast = b"\x01" * (300 << 20)  # resident: every page written
    w = Worker(seeds=load_seeds())
    try:
        outcome = w.run((1, 0), ("decode",))
    finally:
        w.stop()
    assert len(ballast) and not outcome.findings
    assert outcome.peak_rss < 250 << 20, outcome.peak_rss


def test_sigterm_to_the_whole_campaign_saves_its_state_quietly(tmp_path: Path) -> None:
    """``pkill -f 'fuzz run'`` reaches the workers as well as the campaign: the campaign
    saves its state and exits 130, and no worker prints a traceback."""
    state = tmp_path / "state.json"
    root = Path(__file__).resolve().parent.parent
    campaign = subprocess.Popen(
        [sys.executable, "-m", "fuzz", "run", "--inputs", "100000", "--seed", "3", "--jobs",
         "2", "--state", str(state), "--corpus", str(tmp_path / "new")],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    # its first progress line: the seeds parsed, the workers at their inputs (a fixed wait
    # was too short on a loaded machine)
    assert campaign.stdout is not None
    ready, _, _ = select.select([campaign.stdout], [], [], 300)
    assert ready, "the campaign printed nothing in 300 s"
    campaign.stdout.readline()
    os.killpg(campaign.pid, signal.SIGTERM)  # the campaign and its workers alike
    out, err = campaign.communicate(timeout=60)
    assert campaign.returncode == 130, err.decode()
    assert b"Traceback" not in err + out, (err + out).decode()
    assert json.loads(state.read_text())["inputs"] == 100000  # saved as it stopped
