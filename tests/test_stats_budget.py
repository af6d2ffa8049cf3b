"""``stats --interval`` past its budget of empty rows: a gap too long to fill gives its
first and last empty interval, and every output format says in words how many
intervals it left out between them (table and json in the output, csv, tsv and jsonl
on stderr, whose stdout is rows only)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from usbtrace.analysis.stats import EMPTY_ROWS
from usbtrace.cli import main
from usbtrace.importing import import_capture
from usbtrace.store.database import Database

from .blocks import READ_10, T0, TUR, command, epb, idb, shb

GAP = 1_000_000  # seconds between the two commands: ten times the budget at 1 s a row
SAID = (f"{GAP - 3} empty intervals from 2.000000 to {GAP - 2}.000000 are not listed: "
        f"past {EMPTY_ROWS} empty rows, a gap shows its first and last interval only")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TEST UNIT READY at 0 s and a READ(10) GAP seconds later."""
    folder = tmp_path_factory.mktemp("budget")
    first, second = command(1, TUR), command(2, READ_10, bytes(512))
    blocks = [shb(), idb("usbmon1")]
    blocks += [epb(0, T0 * 10**6 + i, r) for i, r in enumerate(first)]
    blocks += [epb(0, (T0 + GAP) * 10**6 + 500_000 + i, r) for i, r in enumerate(second)]
    path = folder / "gap.pcapng"
    path.write_bytes(b"".join(blocks))
    import_capture(Database(folder / "t.db"), path)
    return str(folder / "t.db")


def stats(db: str, *args: str) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["stats", "1", "--db", db, "--interval", "1", *args])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_the_table_says_how_many_intervals_it_left_out(db: str) -> None:
    out, _ = stats(db, "--section", "throughput")
    lines = out.splitlines()
    times = [line.split()[0] for line in lines[3:-2]]
    assert times == ["0.000000", "1.000000", f"{GAP - 1}.000000", f"{GAP}.000000"]
    assert lines[-1] == f"note: {SAID}"
    out, _ = stats(db)  # every table: the note comes under them all
    assert out.splitlines()[-1] == f"note: {SAID}"


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_row_formats_say_it_on_stderr_and_keep_stdout_rows(db: str, fmt: str) -> None:
    out, err = stats(db, "--section", "throughput", "--format", fmt)
    assert err.splitlines() == [f"usbtrace: note: {SAID}"]
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["time"] for r in rows] == [0, 1, GAP - 1, GAP]
    else:
        rows = list(csv.reader(io.StringIO(out), delimiter="," if fmt == "csv" else "\t"))
        assert [r[0] for r in rows[1:]] == ["0.0", "1.0", f"{GAP - 1}.0", f"{GAP}.0"]


def test_json_lists_each_stretch_left_out(db: str) -> None:
    out, _ = stats(db, "--format", "json")
    data = json.loads(out)
    assert data["throughput_skipped"] == [
        {"first": 2.0, "last": float(GAP - 2), "intervals": GAP - 3, "note": SAID}]
    assert len(data["throughput"]) == 4


def test_absolute_times_name_the_stretch_as_the_rows_do(db: str) -> None:
    out, _ = stats(db, "--section", "throughput", "-t", "a")
    assert out.splitlines()[-1] == (
        f"note: {GAP - 3} empty intervals from 2023-11-14T22:13:22.000000Z to "
        "2023-11-26T11:59:58.000000Z are not listed: past 100000 empty rows, a gap shows "
        "its first and last interval only")


def test_a_gap_within_the_budget_is_filled_and_nothing_is_said(db: str) -> None:
    out, err = stats(db, "--section", "throughput", "--interval", "100000")
    assert "note" not in out and err == ""
    assert len(out.splitlines()) == 3 + 11 + 1  # title, header, rule; 0..10; (11 rows)
