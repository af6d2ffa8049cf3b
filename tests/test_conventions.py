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


# ---- each session records the release and the command line that made it -----------------


def test_a_session_records_version_and_command_line(tmp_path: Path) -> None:
    import importlib.metadata
    import shlex
    import sqlite3

    db = tmp_path / "it's here.db"  # a quote in the path: the line must still split back
    code, _, err = run("record", "--db", str(db), "--size", "4M", "--workload", "raw")
    assert code == 0, err
    version, line = sqlite3.connect(db).execute(
        "SELECT usbtrace_version, command_line FROM sessions").fetchone()
    assert version == importlib.metadata.version("usbtrace")
    assert shlex.split(line) == ["usbtrace", "record", "--db", str(db), "--size", "4M",
                                 "--workload", "raw"]
    code, out, _ = run("sessions", "--db", str(db), "--format", "json")
    row = json.loads(out)[0]
    assert row["version"] == version and row["command_line"] == line
    code, out, _ = run("sessions", "--db", str(db))
    assert "version" in out.splitlines()[0] and version in out.splitlines()[2]


def test_a_library_caller_records_its_own_command_line(tmp_path: Path) -> None:
    import shlex
    import sys

    from usbtrace.store.database import Database

    database = Database(tmp_path / "lib.db")
    first = database.new_session("simulated", "t", "x", "virtual")
    second = database.new_session("simulated", "t", "x", "virtual",
                                  command_line="usbtrace record --size 4M")
    _, rows = database.query("SELECT id, command_line FROM sessions ORDER BY id")
    assert rows == [(first, shlex.join(sys.argv)), (second, "usbtrace record --size 4M")]
    database.close()


def test_the_upgrade_from_schema_1_adds_the_columns(tmp_path: Path) -> None:
    import sqlite3

    repo = Path(__file__).resolve().parent.parent
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript((repo / "tests" / "data" / "schema-1.sql").read_text())
    conn.execute("INSERT INTO usbtrace_meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO sessions (source, source_name, started_at, record_count, "
                 "dropped_count, malformed_count, command_count, clock, complete) VALUES "
                 "('usbmon', 'a.pcap', 'x', 10, 0, 0, 2, 'capture', 1)")
    conn.commit()
    conn.close()
    code, _, err = run("upgrade", "--db", str(old))
    assert code == 0, err
    fresh = tmp_path / "fresh.db"
    run("record", "--db", str(fresh), "--size", "4M")

    def columns(path: Path) -> list[str]:
        return sorted(r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(sessions)"))

    assert columns(old) == columns(fresh)
    assert sqlite3.connect(old).execute(
        "SELECT usbtrace_version, command_line FROM sessions").fetchone() == (None, None)


# ---- export: the container from the extension, or --format ---------------------------------


@pytest.mark.parametrize("name, chosen, magic, container", [
    ("out.pcap", None, bytes.fromhex("4d3cb2a1"), "nsecpcap"),
    ("OUT.PCAP", None, bytes.fromhex("4d3cb2a1"), "nsecpcap"),
    ("out.pcapng", None, bytes.fromhex("0a0d0d0a"), "pcapng"),
    ("out.cap", None, bytes.fromhex("0a0d0d0a"), "pcapng"),
    ("out.cap", "pcap", bytes.fromhex("4d3cb2a1"), "nsecpcap"),
    ("out.pcap", "pcapng", bytes.fromhex("0a0d0d0a"), "pcapng"),
])
@pytest.mark.parametrize("linktype", ["usbpcap", "usbmon"])
def test_export_picks_the_container(recorded: Path, tmp_path: Path, name: str,
                                   chosen: str | None, magic: bytes, container: str,
                                   linktype: str) -> None:
    import shutil
    import sqlite3
    import subprocess

    from . import tshark

    out = tmp_path / name
    args = ["export", "1", "-o", str(out), "--db", str(recorded), "--linktype", linktype]
    code, said, err = run(*args, *(["--format", chosen] if chosen else []))
    assert code == 0, err
    assert out.read_bytes()[:4] == magic and f"({container.removeprefix('nsec')})" in said
    # it reads back as the same commands
    db = tmp_path / "again.db"
    code, _, err = run("import", str(out), "--db", str(db))
    assert code == 0, err
    query = "SELECT tag, opcode, lba, blocks, status FROM scsi_commands ORDER BY seq"
    theirs = sqlite3.connect(db).execute(query).fetchall()
    assert theirs and theirs == sqlite3.connect(recorded).execute(query).fetchall()
    if tshark.available():  # and Wireshark decodes every command in it
        assert [c.tag for c in tshark.scsi_commands(out)] == [t[0] for t in theirs]
    if shutil.which("capinfos"):  # as that container
        kind = subprocess.run(["capinfos", "-t", "-T", "-r", str(out)], capture_output=True,
                              text=True, check=True).stdout.split()
        assert container in kind


def test_a_pcap_writer_refuses_a_time_it_cannot_hold() -> None:
    import io

    from usbtrace.capture.pcap import PcapWriter
    from usbtrace.errors import InputError

    writer = PcapWriter(io.BytesIO(), 249)
    with pytest.raises(InputError, match="--format pcapng"):
        writer.write((1 << 32) * 1_000_000_000, b"x")


# ---- the views and the schema command ----------------------------------------------------


def test_schema_prints_the_documented_tables_and_views(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    code, out, _ = run("schema")
    assert code == 0 and out == (repo / "schemas" / "usbtrace.sql").read_text()
    for name in ("sessions", "urbs", "scsi_commands", "file_activity"):
        assert f"CREATE TABLE {name} (" in out
    for name in ("command_data", "io_chain", "file_activity_commands"):
        assert f"CREATE VIEW {name} AS" in out
    # it needs no database, and reads none
    code, _, _ = run("schema", env={"USBTRACE_DB": str(tmp_path / "absent.db")})
    assert code == 0 and not (tmp_path / "absent.db").exists()


@pytest.fixture(scope="module")
def files_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("files") / "f.db"
    code, _, err = run("record", "--db", str(db), "--size", "8M", "--workload", "files")
    assert code == 0, err
    return db


def test_command_data_joins_a_command_to_its_data(files_db: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(files_db)
    # every READ/WRITE's data URBs carry exactly the bytes its data phase moved
    rows = conn.execute(
        "SELECT command_seq, data_length, sum(actual_length), count(urb_seq) FROM command_data "
        "WHERE command LIKE 'read%' OR command LIKE 'write%' GROUP BY command_seq").fetchall()
    assert len(rows) > 20
    assert all(length == moved and urbs >= 1 for _, length, moved, urbs in rows)
    # every command is there, data or not
    assert conn.execute("SELECT count(DISTINCT command_seq) FROM command_data").fetchone() == \
        conn.execute("SELECT count(*) FROM scsi_commands").fetchone()
    # the payload is the one the attributor sees
    from usbtrace.store.database import Database

    database = Database(files_db, create=False, readonly=True)
    seq, *_, data, _ = next(c for c in database.stored_commands(1) if c[1] == 0x28)
    joined = b"".join(bytes(r[0]) for r in conn.execute(
        "SELECT data FROM command_data WHERE command_seq = ? ORDER BY urb_seq", (seq,)))
    assert joined == data


def test_io_chain_joins_a_read_to_its_srbs_and_urbs(files_db: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(files_db)
    rows = conn.execute(
        "SELECT request_seq, length, count(DISTINCT srb_irp), "
        "sum(CASE WHEN transfer_type = 'bulk' THEN 1 ELSE 0 END) "
        "FROM io_chain GROUP BY request_seq").fetchall()
    assert rows
    # each SRB is a CBW, its data and a CSW: three bulk URBs per SRB
    assert all(srbs >= 1 and bulk == 3 * srbs for _, _, srbs, bulk in rows)
    requests = conn.execute("SELECT count(*) FROM irps WHERE position = 'upper' "
                            "AND major IN ('read', 'write') AND length > 0").fetchone()[0]
    assert len(rows) == requests


def test_file_activity_commands_and_views_through_query(files_db: Path) -> None:
    code, out, err = run("query", "SELECT path, operation, command FROM file_activity_commands "
                         "WHERE kind = 'data' AND session_id = :s", "-p", "s=1",
                         "--db", str(files_db), "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert rows and all(r["command"].split("_")[0] == r["operation"] for r in rows)


def test_a_database_without_the_views_gets_them_from_a_writer(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    run("record", "--db", str(db), "--size", "4M")
    conn = sqlite3.connect(db)
    for name in ("command_data", "io_chain", "file_activity_commands"):
        conn.execute(f"DROP VIEW {name}")
    conn.commit()
    conn.close()
    code, _, err = run("query", "SELECT * FROM io_chain", "--db", str(db))
    assert code == 2 and "'usbtrace upgrade' adds it" in err and err.count("\n") == 1
    code, _, err = run("upgrade", "--db", str(db))
    assert code == 0, err
    views = {r[0] for r in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type = 'view'")}
    assert views == {"command_data", "io_chain", "file_activity_commands"}


# ---- shell completion -------------------------------------------------------------------


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _usbtrace_completion"),
                                           ("zsh", "#compdef usbtrace"),
                                           ("fish", "complete --no-files --command usbtrace")])
def test_the_completion_script_is_produced(shell: str, marker: str) -> None:
    result = CliRunner().invoke(main, [], prog_name="usbtrace",
                                env={"_USBTRACE_COMPLETE": f"{shell}_source"})
    assert result.exit_code == 0 and marker in result.stdout


def test_bash_loads_the_script_and_completes_commands() -> None:
    import shutil
    import subprocess

    script = CliRunner().invoke(main, [], prog_name="usbtrace",
                                env={"_USBTRACE_COMPLETE": "bash_source"}).stdout
    if shutil.which("bash"):  # the script is valid bash that registers the completion
        done = subprocess.run(["bash", "-c", script + "\ncomplete -p usbtrace"],
                              capture_output=True, text=True, check=True)
        assert "_usbtrace_completion" in done.stdout
    # and what the shell asks, the command answers: commands, then options
    asked = {"_USBTRACE_COMPLETE": "bash_complete", "COMP_WORDS": "usbtrace ex",
             "COMP_CWORD": "1"}
    out = CliRunner().invoke(main, [], prog_name="usbtrace", env=asked).stdout
    assert out.split() == ["plain,export", "plain,extract"]
    asked.update(COMP_WORDS="usbtrace export 1 --for", COMP_CWORD="3")
    out = CliRunner().invoke(main, [], prog_name="usbtrace", env=asked).stdout
    assert "plain,--format" in out.split() and "plain,--force" in out.split()


def test_a_pcapng_export_says_what_made_the_session(recorded: Path, tmp_path: Path) -> None:
    import importlib.metadata
    import sqlite3

    from usbtrace.capture.pcap import pcapng_header

    out = tmp_path / "made.pcapng"
    code, _, err = run("export", "1", "-o", str(out), "--db", str(recorded))
    assert code == 0, err
    comments, linktype = pcapng_header(out)
    line = sqlite3.connect(recorded).execute("SELECT command_line FROM sessions").fetchone()[0]
    assert comments == [f"made by usbtrace {importlib.metadata.version('usbtrace')}",
                        f"usbtrace session command line: {line}"] and linktype == 249
    assert pcapng_header(recorded) == ([], None)  # not pcapng: nothing to say
