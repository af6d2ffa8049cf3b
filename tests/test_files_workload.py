"""The files workload: options checked before a session, failures as one line, Ctrl-C."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner

from usbtrace.cli import main
from usbtrace.errors import InputError
from usbtrace.workloads.files import check_fits, fat_layout, sample_tree


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--fs", "fat32", "--size", "16M"], "--fs fat32 takes a stick from 32.6 MiB to 32 GiB"),
    (["--fs", "fat12", "--size", "1G"], "--fs fat12 takes a stick up to 127 MiB"),
    (["--size", "64K"], "--fs fat16 takes a stick from 4.1 MiB"),
    (["--fs", "fat16", "--size", "2G"], "use --fs fat32"),
    (["--fs", "fat12", "--size", "64K"], "the stick has 56832 free"),
])
def test_size_and_fs_that_do_not_fit_fail_before_a_session(tmp_path: Path, args: list[str],
                                                           message: str) -> None:
    db = tmp_path / "t.db"
    code, _, err = cli("record", "--db", str(db), "--workload", "files", *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not db.exists()  # no session was created


def test_copy_larger_than_the_stick_is_one_line_before_writing(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(9 << 20))
    db = tmp_path / "t.db"
    code, _, err = cli("record", "--db", str(db), "--workload", "files", "--size", "8M",
                       "--copy", str(big))
    assert code == 2 and err.count("\n") == 1
    assert "need 9437184 bytes" in err and "the stick has 8338432 free" in err
    assert not db.exists()


def test_a_copy_that_just_fits_is_written_and_read_back(tmp_path: Path) -> None:
    exact = tmp_path / "exact.bin"
    exact.write_bytes(bytes(range(256)) * (8338432 // 256))  # every free byte of 8M FAT16
    code, out, err = cli("record", "--db", str(tmp_path / "t.db"), "--workload", "files",
                         "--size", "8M", "--copy", str(exact))
    assert code == 0 and "read back equals written" in out, err


def test_exfat_is_not_offered() -> None:
    code, out, _ = cli("record", "--help")
    text = " ".join(out.split())
    assert code == 0 and "--fs [fat12|fat16|fat32]" in text and "No exFAT" in text
    code, _, err = cli("record", "--workload", "files", "--fs", "exfat")
    assert code == 2 and "'exfat' is not one of" in err


class _Disk(io.BytesIO):
    """An in-memory disk of fixed size for pyfatfs's mkfs."""

    def __init__(self, size: int) -> None:
        super().__init__(bytes(size))
        self.size = size

    def truncate(self, size: int | None = None) -> int:
        return self.size

    def close(self) -> None:
        """pyfatfs closes the file it formatted; the test still reads it."""


@pytest.mark.parametrize("fat, size", [("fat12", 1 << 20), ("fat12", 5 << 20),
                                       ("fat16", 8 << 20), ("fat16", 40 << 20),
                                       ("fat32", 40 << 20)])
def test_layout_is_what_pyfatfs_formats(fat: str, size: int) -> None:
    import pyfatfs.PyFat as pyfat_module  # noqa: N813

    disk = _Disk(size)
    with mock.patch.object(pyfat_module, "open", lambda *a, **k: disk, create=True):
        fs = pyfat_module.PyFat()
        fs.mkfs("disk", {"fat12": 12, "fat16": 16, "fat32": 32}[fat], size=size)
        fs.close()
    disk.seek(0)
    mounted = pyfat_module.PyFat()
    mounted.set_fp(disk)
    layout = fat_layout(fat, size)
    assert layout.valid and mounted.fat_type == layout.fat
    assert mounted.bpb_header["BPB_SecPerClus"] == layout.sectors_per_cluster
    data = (size // 512 - mounted.first_data_sector)
    assert data // layout.sectors_per_cluster == layout.clusters
    mounted.initialized = False


def test_cluster_count_limits_decide_the_ranges() -> None:
    assert fat_layout("fat12", 127 << 20).valid and not fat_layout("fat12", 128 << 20).valid
    assert not fat_layout("fat16", 4 << 20).valid and fat_layout("fat16", 5 << 20).valid
    assert fat_layout("fat16", (2 << 30) - (1 << 20)).valid
    assert not fat_layout("fat16", 2 << 30).valid  # 65527 clusters: FAT32 by count
    assert not fat_layout("fat32", 32 << 20).valid and fat_layout("fat32", 33 << 20).valid
    assert fat_layout("fat32", 32 << 30).valid and not fat_layout("fat32", (32 << 30) + 512).valid
    with pytest.raises(InputError, match="fewer than 4085 clusters"):
        check_fits("fat12", 1 << 30, sample_tree())


def test_a_failed_run_is_stored_and_not_complete(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    code, _, err = cli("record", "--db", db, "--workload", "files", "--size", "8M",
                       "--fault", "write-protect@60+")
    assert code == 2 and "STATUS_MEDIA_WRITE_PROTECTED" in err and err.count("\n") == 1
    state, notes = sqlite3.connect(db).execute(
        "SELECT state, notes FROM sessions").fetchone()
    assert state == "failed" and "the workload failed" in notes


def test_file_system_errors_are_one_line(tmp_path: Path) -> None:
    from pyfatfs import PyFATException

    from usbtrace.workloads import files

    def broken(*args: object, **kwargs: object) -> None:
        raise PyFATException("no free clusters")

    with mock.patch.object(files, "_mkfs", broken):
        code, _, err = cli("record", "--db", str(tmp_path / "t.db"), "--workload", "files",
                           "--size", "8M")
    assert code == 2 and err == ("usbtrace: error: the files workload failed: pyfatfs: "
                                 "PyFATException: no free clusters\n")


def _interrupting_completions(when: int, interrupt: BaseException) -> Any:
    """Patch the tracer's completion routines (the data path's and the rest) so that
    the ``when``-th of their calls, counted together, raises ``interrupt``."""
    from usbtrace.drivers import tracer

    calls = {"n": 0}

    def interrupting(original: Callable[..., int]) -> Callable[..., int]:
        def completion(*args: Any) -> int:
            calls["n"] += 1
            if calls["n"] == when:
                raise interrupt
            return original(*args)
        return completion

    names = ("TracerCompletion", "TracerUrbCompletion", "TracerReadWriteCompletion")
    return mock.patch.multiple(tracer, **{n: interrupting(getattr(tracer, n)) for n in names})


@pytest.mark.parametrize("when", [40, 400, 900])
def test_ctrl_c_inside_a_driver_reaches_the_program_as_itself(
        tmp_path: Path, when: int, capfd: pytest.CaptureFixture[str]) -> None:
    """A KeyboardInterrupt that strikes inside a completion routine leaves IRPs half
    done; the teardown after it must not turn it into a Deadlock or a bug check."""
    from usbtrace.recording import RecordOptions, record

    interrupt = KeyboardInterrupt()
    with _interrupting_completions(when, interrupt):
        with pytest.raises(KeyboardInterrupt) as caught:
            record(RecordOptions(db=str(tmp_path / "t.db"), size="8M", workload="files"))
    assert caught.value is interrupt
    import gc

    gc.collect()  # pyfatfs's destructors write nothing to a halted machine
    assert "Exception ignored" not in capfd.readouterr().err


def test_ctrl_c_in_the_cli_is_interrupted_not_a_traceback(tmp_path: Path) -> None:
    with _interrupting_completions(500, KeyboardInterrupt()):
        code, _, err = cli("record", "--db", str(tmp_path / "t.db"), "--workload", "files",
                           "--size", "8M")
    assert code == 130 and "Deadlock" not in err and "Traceback" not in err
    conn = sqlite3.connect(tmp_path / "t.db")
    state, records, commands = conn.execute(
        "SELECT state, record_count, command_count FROM sessions").fetchone()
    assert state == "interrupted" and records > 0
    assert commands == conn.execute("SELECT count(*) FROM scsi_commands").fetchone()[0] > 0


def test_halted_scheduler_refuses_to_run_instead_of_deadlocking() -> None:
    from usbtrace.wdm.sched import PASSIVE_LEVEL, Halted, KEvent, Scheduler

    scheduler = Scheduler()

    def isr_work() -> None:
        scheduler.KeRaiseIrql(5)
        raise KeyboardInterrupt

    scheduler.schedule(10, isr_work)
    scheduler.schedule(20, lambda: None)
    with pytest.raises(KeyboardInterrupt):
        scheduler.run_one()
    assert scheduler.halted is not None and scheduler.irql == PASSIVE_LEVEL
    assert scheduler.pending() == 0
    with pytest.raises(Halted):
        scheduler.KeWaitForSingleObject(KEvent(), "ReadFile")
