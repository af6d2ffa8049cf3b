"""The divergence report: the first divergence in context, the totals, text or JSON.

A replay that diverges everywhere must not hold a million divergences: the first
``KEPT`` are kept, the rest counted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from usbtrace.replay.timing import Timing

KEPT = 1000  # divergences kept in full
NOTES_KEPT = 100


def _show(value: Any, limit: int = 48) -> str:
    if isinstance(value, (bytes, bytearray)):
        b = bytes(value)
        return b[:limit].hex(" ") + (f" ... ({len(b)} bytes)" if len(b) > limit else "")
    return str(value)


@dataclass
class Divergence:
    index: int  # the recorded command's position, from 1
    command: str  # e.g. "read_10 lba 2048 blocks 128 (tag 7)"
    field: str  # what differs: data_in, csw_status, residue, cbw, ...
    expected: Any
    actual: Any
    note: str = ""
    offset: int | None = None  # first differing byte, for data

    def text(self) -> str:
        where = f" at byte {self.offset}" if self.offset is not None else ""
        lines = [f"command {self.index}: {self.command}",
                 f"  {self.field} differs{where}",
                 f"  expected: {_show(self.expected)}",
                 f"  actual:   {_show(self.actual)}"]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


@dataclass
class Report:
    source: str
    mode: str
    commands: int = 0  # recorded commands
    replayed: int = 0
    compared_bytes: int = 0
    divergences: list[Divergence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    urbs: int = 0
    seconds: float = 0.0
    divergence_count: int = 0  # all of them; ``divergences`` keeps the first KEPT
    timing: Timing | None = None  # with --speed: how well the recorded timing was kept

    @property
    def identical(self) -> bool:
        return not self.divergence_count and self.replayed == self.commands

    def add(self, divergence: Divergence) -> None:
        self.divergence_count += 1
        if len(self.divergences) < KEPT:
            self.divergences.append(divergence)

    def note(self, text: str) -> None:
        """A caveat, once, and not without end."""
        if text not in self.notes and len(self.notes) < NOTES_KEPT:
            self.notes.append(text)

    def text(self) -> str:
        if not self.identical:
            verdict = f"{self.divergence_count} divergence(s)"
        elif self.notes:
            verdict = f"identical, with {len(self.notes)} caveat(s) below"
        else:
            verdict = "identical"
        lines = [f"replay of {self.source} ({self.mode} mode): {verdict}",
                 f"  commands replayed {self.replayed} of {self.commands}, "
                 f"{self.compared_bytes} data bytes compared, {self.urbs} URBs"]
        if self.timing is not None:
            lines.append(f"  {self.timing.text()}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.divergences:
            lines.append("first divergence:")
            lines += ["  " + line for line in self.divergences[0].text().splitlines()]
            if self.divergence_count > 1:
                kept = "" if self.divergence_count <= KEPT else f", the first {KEPT} of them"
                lines.append(f"and {self.divergence_count - 1} more (--json{kept})")
        elif self.replayed < self.commands:
            lines.append(f"stopped after {self.replayed} of {self.commands} commands")
        return "\n".join(lines)

    def to_json(self) -> str:
        body = {
            "source": self.source, "mode": self.mode, "identical": self.identical,
            "commands": self.commands, "replayed": self.replayed,
            "compared_bytes": self.compared_bytes, "urbs": self.urbs, "notes": self.notes,
            "divergence_count": self.divergence_count,
            "divergences": [{k: (_show(v, 4096) if isinstance(v, (bytes, bytearray)) else v)
                             for k, v in asdict(d).items()} for d in self.divergences],
            "timing": self.timing.to_dict() if self.timing is not None else None,
        }
        return json.dumps(body, indent=1)


def describe(cmd: Any) -> str:
    info = cmd.info
    text = info.name
    if info.lba is not None:
        text += f" lba {info.lba} blocks {info.blocks}"
    return f"{text} (tag {cmd.tag}, cdb {bytes(cmd.cdb).hex()})"


def first_difference(a: bytes, b: bytes) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
