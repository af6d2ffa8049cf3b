"""The survey's commands, kept on disk for the replay's later passes (``replay/spill.py``):
whatever part of them the disk holds, the passes see exactly the commands a fresh
decoding gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from usbtrace.decode.bot import ScsiCommand
from usbtrace.replay import spill
from usbtrace.replay.recording import Recording, load_capture

CAPTURE = Path(__file__).resolve().parent.parent / "captures" / "raw-workload-4M.pcapng"


def surveyed(monkeypatch: pytest.MonkeyPatch, limit: int) -> Recording:
    monkeypatch.setattr(spill, "SPILL_LIMIT", limit)
    monkeypatch.setattr(spill, "BATCH_COMMANDS", 4)  # many batches: a limit can fall between
    return load_capture(CAPTURE)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[ScsiCommand]:
    """The commands as a replay saw them before any were kept: decoded anew."""
    with monkeypatch.context() as m:
        recording = surveyed(m, 0)
        assert recording.spill.count == 0 and not recording.spill.complete
        return list(recording.commands())


def test_all_kept(monkeypatch: pytest.MonkeyPatch, decoded: list[ScsiCommand]) -> None:
    recording = surveyed(monkeypatch, 1 << 30)
    assert recording.spill.complete and recording.spill.count >= recording.count > 20
    assert list(recording.commands()) == decoded


def test_the_rest_decoded_anew_joins_exactly(monkeypatch: pytest.MonkeyPatch,
                                             decoded: list[ScsiCommand]) -> None:
    whole = surveyed(monkeypatch, 1 << 30).spill._size
    recording = surveyed(monkeypatch, whole // 2)
    assert not recording.spill.complete and 0 < recording.spill.count < recording.count
    assert list(recording.commands()) == decoded


def test_a_full_disk_leaves_the_rest_to_decoding(monkeypatch: pytest.MonkeyPatch,
                                                 decoded: list[ScsiCommand]) -> None:
    def no_space(**_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spill.tempfile, "TemporaryFile", no_space)
    recording = surveyed(monkeypatch, 1 << 30)
    assert recording.spill.count == 0 and not recording.spill.complete
    assert list(recording.commands()) == decoded


def test_passes_may_interleave(monkeypatch: pytest.MonkeyPatch,
                               decoded: list[ScsiCommand]) -> None:
    recording = surveyed(monkeypatch, 1 << 30)
    first, second = recording.commands(), recording.commands()
    pairs = list(zip(first, second))
    assert [a for a, _ in pairs] == [b for _, b in pairs] == decoded


def test_closed_means_decoded_anew(monkeypatch: pytest.MonkeyPatch,
                                   decoded: list[ScsiCommand]) -> None:
    recording = surveyed(monkeypatch, 1 << 30)
    recording.spill.close()
    assert list(recording.commands()) == decoded
