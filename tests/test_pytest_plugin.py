"""The pytest plugin's conventions: marker, options, ini path, header, re-recording."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.capture.export import recorded_command_line
from usbtrace.capture.pcap import pcapng_header
from usbtrace.cli import main
from usbtrace.pytest_plugin import record_arguments

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _this_usbtrace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner pytest runs in a subprocess (an in-process run drops the modules it
    imported, SQLAlchemy's among them), with this tree's usbtrace first on its path."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args)


def cli(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def diverging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording made by 'usbtrace record', with one byte of a READ's answer changed
    since (a divergence).  Module-scoped, so made before any pytester fixture: pytester
    drops the modules imported while it is set up."""
    folder = tmp_path_factory.mktemp("diverging")
    db = folder / "m.db"
    cli("record", "--db", str(db), "--size", "4M")
    conn = sqlite3.connect(db)
    _, cbw, csw = conn.execute(
        "SELECT seq, cbw_seq, csw_seq FROM scsi_commands WHERE name = 'read_10' "
        "AND status = 'good' AND data_length > 0 ORDER BY seq LIMIT 1").fetchone()
    seq, data = conn.execute("SELECT seq, data FROM urbs WHERE seq > ? AND seq < ? AND "
                             "direction = 'in' AND data IS NOT NULL", (cbw, csw)).fetchone()
    conn.execute("UPDATE urbs SET data = ? WHERE seq = ?",
                 (bytes([data[0] ^ 0xFF]) + bytes(data[1:]), seq))
    conn.commit()
    conn.close()
    cli("export", "1", "-o", str(folder / "x.pcapng"), "--db", str(db))
    return folder / "x.pcapng"


@pytest.fixture
def project(pytester: pytest.Pytester, diverging: Path) -> Path:
    """A project whose ini file is in conf/ and its recording in conf/caps/."""
    caps = pytester.path / "conf" / "caps"
    caps.mkdir(parents=True)
    (caps / "x.pcapng").write_bytes(diverging.read_bytes())
    (pytester.path / "conf" / "pytest.ini").write_text("[pytest]\nusbtrace_captures = caps\n")
    return caps / "x.pcapng"


def test_the_ini_path_is_against_the_ini_file_and_the_header_says_so(
        pytester: pytest.Pytester, project: Path) -> None:
    # the rootdir is elsewhere: the path is the ini file's, not the rootdir's
    result = run(pytester, "-c", "conf/pytest.ini", "--rootdir", str(pytester.path),
                 "--usbtrace-mode", "host", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"usbtrace: captures {project.parent} (1 recordings), "
                                 "modes host", f"rootdir: {pytester.path}"])
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*data_in differs at byte 0*"])


def test_options_override_the_ini(pytester: pytest.Pytester, project: Path) -> None:
    other = pytester.path / "other"
    other.mkdir()
    result = run(pytester, "-c", "conf/pytest.ini", "--usbtrace-captures", "other",
                                "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"usbtrace: captures {other} (0 recordings), "
                                 "modes device, host"])
    result.assert_outcomes()
    result = run(pytester, "-c", "conf/pytest.ini", "--usbtrace-mode", "both",
                                "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*x.pcapng::replay[[]device[]]", "*x.pcapng::replay[[]host[]]"])
    result = run(pytester, "-c", "conf/pytest.ini", "--usbtrace-mode", "sideways")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_the_marker_is_registered_and_selects_replays(pytester: pytest.Pytester,
                                                      project: Path) -> None:
    pytester.makepyfile(test_mine="""
        import pytest

        @pytest.mark.usbtrace
        def test_marked():
            pass
    """)
    result = run(pytester, "-c", "conf/pytest.ini", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.usbtrace:*"])
    result = run(pytester, "-c", "conf/pytest.ini", "--strict-markers", "-m",
                                "not usbtrace", "-p", "no:cacheprovider")
    result.assert_outcomes(deselected=3)  # the user's marked test and both replays
    result = run(pytester, "-c", "conf/pytest.ini", "--strict-markers", "-m", "usbtrace",
                                "--usbtrace-mode", "device", "test_mine.py",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_rerecord_accepts_the_change(pytester: pytest.Pytester, project: Path) -> None:
    before = project.read_bytes()
    comments, linktype = pcapng_header(project)
    assert recorded_command_line(comments).split()[:2] == ["usbtrace", "record"]  # type: ignore[union-attr]
    result = run(pytester, "-c", "conf/pytest.ini", "--usbtrace-mode", "host",
                                "--usbtrace-rerecord", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*usbtrace re-recorded*",
                                 f"{project}: made again with: usbtrace record --db * --size 4M"])
    assert project.read_bytes() != before
    comments, again = pcapng_header(project)
    # made again without the temporary database in its command line, same link type
    assert recorded_command_line(comments) == "usbtrace record --size 4M" and again == linktype
    result = run(pytester, "-c", "conf/pytest.ini", "--usbtrace-mode", "host",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_rerecord_refuses_what_it_cannot_make_again(pytester: pytest.Pytester,
                                                    tmp_path: Path) -> None:
    # a capture with no command line (the repository's own, exported before they had one)
    caps = pytester.path / "caps"
    caps.mkdir()
    bare = caps / "bare.pcapng"
    bare.write_bytes((REPO / "captures" / "raw-workload-4M.pcapng").read_bytes())
    with bare.open("r+b") as f:  # damage a byte far into the file: a divergence
        f.seek(-200, 2)
        b = f.read(1)
        f.seek(-200, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    pytester.makeini("[pytest]\nusbtrace_captures = caps\n")
    result = run(pytester, "--usbtrace-mode", "host", "--usbtrace-rerecord",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*cannot re-record: the capture does not say which command*"])


@pytest.mark.parametrize("line, why", [
    ("usbtrace record --db x.db --size 4M", None),
    ("usbtrace -v record --db=x.db --size 4M", None),
    ("usbtrace record --device usb:1234:5678 --allow-write", "--device"),
    ("usbtrace record --image stick.img", "--image"),
    ("usbtrace import a.pcap", "not made by 'usbtrace record'"),
    ("pytest tests", "not made by 'usbtrace record'"),
    ("usbtrace record 'unclosed", "does not parse"),
])
def test_record_arguments(line: str, why: str | None) -> None:
    reason, args = record_arguments(line)
    if why is None:
        assert reason is None and args == ["--size", "4M"]
    else:
        assert reason is not None and why in reason and args == []
