"""Replay timing: deadlines from the recorded offsets, no drift, lateness reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.replay.run import replay
from usbtrace.replay.timing import Schedule


class FakeClock:
    """Time moves only when slept, or when a test says a command took time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run_schedule(times: list[float | None], costs: list[float], speed: float = 1.0,
                 max_gap: float | None = None) -> tuple[Schedule, list[float]]:
    """Send commands recorded at ``times``, each taking ``costs[i]``; when each went out."""
    clock = FakeClock()
    schedule = Schedule(speed, max_gap, clock)
    sent = []
    for index, (at, cost) in enumerate(zip(times, costs), 1):
        schedule.wait(at, index)
        sent.append(round(clock.now - 100.0, 9))
        clock.now += cost  # the command itself
    return schedule, sent


def test_the_commands_own_time_does_not_accumulate() -> None:
    schedule, sent = run_schedule([0.0, 1.0, 2.0, 3.0, 4.0], [0.3] * 5)
    # on the recorded offsets exactly; a "sleep the gap" replayer would send at 5.2 s
    assert sent == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert schedule.timing.lateness_max == 0 and schedule.timing.late == 0
    assert schedule.timing.planned_seconds == schedule.timing.elapsed_seconds == 4.0


def test_a_slow_command_makes_one_late_and_the_next_catch_up() -> None:
    schedule, sent = run_schedule([0.0, 1.0, 2.0, 3.0], [1.5, 0.1, 0.1, 0.1])
    assert sent == [0.0, 1.5, 2.0, 3.0]
    t = schedule.timing
    assert t.commands == 4 and t.late == 1
    assert t.lateness_max == pytest.approx(0.5) and t.lateness_mean == pytest.approx(0.125)


def test_speed_and_max_gap_scale_the_offsets() -> None:
    _, sent = run_schedule([0.0, 10.0, 11.0, 11.5], [0.0] * 4, speed=2.0, max_gap=1.0)
    assert sent == [0.0, 1.0, 1.5, 1.75]


def test_timestamps_going_back_or_missing_add_no_time() -> None:
    schedule, sent = run_schedule([5.0, 7.0, 6.0, None, float("nan"), 8.0], [0.0] * 6)
    assert sent == [0.0, 2.0, 2.0, 2.0, 2.0, 3.0] and not schedule.notes


def test_a_huge_gap_is_cut_and_said() -> None:
    schedule, sent = run_schedule([0.0, 1e9], [0.0, 0.0])
    assert sent == [0.0, 3600.0] and "cut to 3600 s" in schedule.notes[0]


def test_a_host_replay_keeps_the_recorded_timing(recorded_4m: Path) -> None:
    import sqlite3

    clock = FakeClock()
    report = replay("session:1", "host", speed=0.5, db=str(recorded_4m), clock=clock)
    assert report.identical and report.timing is not None
    first, last, count = sqlite3.connect(recorded_4m).execute(
        "SELECT min(submitted_at), max(submitted_at), count(*) FROM scsi_commands").fetchone()
    t = report.timing
    assert t.commands == count == report.replayed
    # the fake clock moves only in sleeps: the schedule is kept to the nanosecond
    assert t.planned_seconds == pytest.approx((last - first) / 0.5)
    assert t.elapsed_seconds == pytest.approx(t.planned_seconds)
    assert sum(clock.sleeps) == pytest.approx(t.planned_seconds)
    assert t.lateness_max == pytest.approx(0, abs=1e-9)
    assert "late by 0.000 ms at most" in report.text()
    body = json.loads(report.to_json())["timing"]
    assert body["commands"] == count and body["speed"] == 0.5
    assert set(body) >= {"lateness_max", "lateness_mean", "planned_seconds", "elapsed_seconds"}


def test_the_cli_reports_the_achieved_timing(recorded_4m: Path) -> None:
    result = CliRunner().invoke(main, ["replay", "session:1", "--mode", "host", "--speed",
                                       "1000", "--db", str(recorded_4m), "--json", "-"])
    assert result.exit_code == 0, result.stderr
    # with --json - the text report goes to standard error, the JSON alone to stdout
    assert "timing at speed 1000:" in result.stderr and "ms at most" in result.stderr
    body = json.loads(result.stdout)
    assert body["timing"]["commands"] == body["replayed"] > 0
    assert body["timing"]["lateness_max"] >= body["timing"]["lateness_mean"] >= 0
    # without --speed there is no schedule to keep
    result = CliRunner().invoke(main, ["replay", "session:1", "--mode", "host", "--db",
                                       str(recorded_4m), "--json", "-"])
    assert json.loads(result.stdout)["timing"] is None


# ---- host replay to a device through pyusb, under record's write safety -------------------

SIM = ["--device", "usb:1209:0001", "--usb-backend", "simulated"]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def hardware_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session 1 writes (raw workload), session 2 only reads: both recorded through pyusb."""
    db = tmp_path_factory.mktemp("hw") / "hw.db"
    for extra in (["--workload", "raw", "--allow-write"], ["--workload", "read"]):
        code, _, err = invoke("record", "--db", str(db), *SIM, *extra)
        assert code == 0, err
    return db


def test_a_writing_recording_needs_allow_write(hardware_db: Path) -> None:
    code, _, err = invoke("replay", "session:1", "--mode", "host", "--db", str(hardware_db),
                          *SIM)
    assert code == 2 and err.count("\n") == 1
    assert "write to the device or change it (the first: write_10)" in err
    assert "--allow-write" in err
    code, out, err = invoke("replay", "session:1", "--mode", "host", "--db", str(hardware_db),
                            *SIM, "--allow-write")
    assert code == 0 and "identical" in out, out + err


def test_a_reading_recording_replays_to_a_device_read_only(hardware_db: Path) -> None:
    code, out, err = invoke("replay", "session:2", "--mode", "host", "--db", str(hardware_db),
                            *SIM)
    assert code == 0 and "identical" in out, out + err


@pytest.mark.parametrize("args, message", [
    (["--mode", "device", *SIM], "needs --mode host"),
    (["--mode", "host", "--against", "x.img", *SIM], "give one of them"),
])
def test_device_option_conflicts(hardware_db: Path, args: list[str], message: str) -> None:
    code, _, err = invoke("replay", "session:2", "--db", str(hardware_db), *args)
    assert code == 2 and message in err and err.count("\n") == 1
