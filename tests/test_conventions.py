"""The conventions every command follows: USBTRACE_DB, -v/-q through logging,
query --param, the session's version and command line, export's container,
the schema command and shell completion."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbtrace.cli import main


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small recorded session the read-only tests share."""
    db = tmp_path_factory.mktemp("db") / "u.db"
    code, _, err = run("record", "--db", str(db), "--size", "4M")
    assert code == 0, err
    return db


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """-v and -q set the usbtrace logger's level: leave it as other tests expect."""
    logger = logging.getLogger("usbtrace")
    level = logger.level
    yield None
    logger.setLevel(level)


def test_usbtrace_db_is_every_commands_default(recorded: Path, tmp_path: Path) -> None:
    env = {"USBTRACE_DB": str(recorded)}
    code, out, err = run("sessions", "--format", "json", env=env)
    assert code == 0, err
    assert json.loads(out)[0]["id"] == 1
    code, out, _ = run("stats", "1", "--format", "json", env=env)  # an analysis command
    assert code == 0 and out.strip()
    code, out, _ = run("query", "SELECT count(*) AS n FROM sessions", "--format", "json",
                       env=env)
    assert code == 0 and json.loads(out) == [{"n": 1}]
    # --db wins over the environment
    code, _, err = run("sessions", "--db", str(tmp_path / "absent.db"), env=env)
    assert code == 2 and "absent.db: no such database" in err
    # and a recording goes where the variable says
    target = tmp_path / "env.db"
    code, out, _ = run("record", "--size", "4M", env={"USBTRACE_DB": str(target)})
    assert code == 0 and target.exists() and str(target) in out


def test_help_names_the_variable() -> None:
    code, out, _ = run("query", "--help")
    assert code == 0 and "USBTRACE_DB" in out


def test_verbose_and_quiet_set_the_logging_level(recorded: Path) -> None:
    code, _, err = run("-v", "replay", "session:1", "--db", str(recorded))
    assert code == 0 and "usbtrace: INFO: replaying session:1 in device mode" in err
    assert logging.getLogger("usbtrace").level == logging.INFO
    code, _, err = run("replay", "session:1", "--db", str(recorded))
    assert code == 0 and "INFO" not in err
    code, _, _ = run("-vv", "sessions", "--db", str(recorded))
    assert code == 0 and logging.getLogger("usbtrace").level == logging.DEBUG
    code, _, _ = run("-q", "sessions", "--db", str(recorded))
    assert code == 0 and logging.getLogger("usbtrace").level == logging.ERROR
    code, _, err = run("-v", "-q", "sessions", "--db", str(recorded))
    assert code == 2 and err.count("\n") == 1 and "contradict" in err


def test_verbose_record_says_which_session(tmp_path: Path) -> None:
    code, _, err = run("-v", "record", "--db", str(tmp_path / "v.db"), "--size", "4M")
    assert code == 0 and "INFO: recording session 1: workload 'raw'" in err


def test_query_params_are_bound(recorded: Path) -> None:
    db = str(recorded)
    code, out, err = run("query", "SELECT :n AS n, :t AS t, :r AS r, :s AS s", "--db", db,
                         "-p", "n=42", "-p", "t=0x10", "--param", "r=1.5",
                         "--param", "s=x' OR '1'='1", "--format", "json")
    assert code == 0, err
    assert json.loads(out) == [{"n": 42, "t": "0x10", "r": 1.5, "s": "x' OR '1'='1"}]
    code, out, _ = run("query", "SELECT seq FROM scsi_commands WHERE session_id = :s "
                       "ORDER BY seq LIMIT :n", "--db", db, "-p", "s=1", "-p", "n=3",
                       "--format", "jsonl")
    assert code == 0 and len(out.splitlines()) == 3
    # a value is data, never SQL: this matches no session rather than every one
    code, out, _ = run("query", "SELECT count(*) AS c FROM sessions WHERE source = :s",
                       "--db", db, "-p", "s=x' OR '1'='1", "--format", "json")
    assert json.loads(out) == [{"c": 0}]


@pytest.mark.parametrize("args, message", [
    (["-p", "noequals"], "give NAME=VALUE"),
    (["-p", "1x=3"], "give NAME=VALUE"),
    (["-p", "a=1", "-p", "a=2"], "given twice"),
    ([], "query failed"),  # :a has no value
])
def test_bad_params_are_one_line(recorded: Path, args: list[str], message: str) -> None:
    code, _, err = run("query", "SELECT :a", "--db", str(recorded), *args)
    assert code == 2 and message in err and err.count("\n") == 1
