"""Faults the simulated stick can inject, and the ``--fault`` syntax that names them.

A spec is ``KIND``, ``KIND@N`` or ``KIND@N+``:

* ``@N`` — once, at the N-th command the stick receives (counting every CBW
  from 1, enumeration's INQUIRY and the class driver's start-up commands
  included; the ``seq`` of ``usbtrace log``);
* ``@N+`` — at every command from the N-th on (a persistent fault);
* no ``@`` — at every command from the first on, the same as ``@1+``.

``media-error@LBA`` and ``media-error@FIRST-LAST`` make sectors unreadable (and
unwritable) for good, as a failed flash block is; ``disconnect@N`` pulls the
stick out during command N, after its CBW.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from usbtrace.errors import InputError

# kind -> what it does, for --help and the README
FAULT_KINDS: dict[str, str] = {
    "stall-in": "the stick stalls bulk-IN at the command's first IN transfer (its data, or "
                "its CSW), ending the data phase",
    "stall-out": "the stick stalls bulk-OUT at the first OUT transfer after the command's CBW",
    "invalid-csw": "the command's CSW has a wrong signature (the host does Reset Recovery)",
    "phase-error": "the command's CSW reports a phase error (the host does Reset Recovery)",
    "not-ready": "the command fails with NOT READY, MEDIUM NOT PRESENT",
    "unit-attention": "the command fails with UNIT ATTENTION, MEDIUM MAY HAVE CHANGED",
    "write-protect": "writes fail with DATA PROTECT; MODE SENSE reports write protection",
    "media-error": "reads of these LBAs fail with MEDIUM ERROR (by LBA, always persistent)",
    "disconnect": "the stick is unplugged during the command, after its CBW (once)",
}
MAX_MEDIA_ERROR_SECTORS = 1 << 20
_SPEC = re.compile(r"^(?P<kind>[a-z-]+)(?:@(?P<first>\d+)(?:(?P<plus>\+)|-(?P<last>\d+))?)?$")


@dataclass(frozen=True)
class Fault:
    """One injected fault: a kind, and the commands (or sectors) it hits."""

    kind: str
    first: int = 1  # command number from 1; the first LBA for media-error
    last: int | None = None  # media-error: the last LBA
    persistent: bool = True  # False: only command ``first``

    def hits(self, command: int) -> bool:
        """Whether the fault strikes the ``command``-th command."""
        return command >= self.first if self.persistent else command == self.first

    def __str__(self) -> str:
        if self.kind == "media-error":
            last = "" if self.last in (None, self.first) else f"-{self.last}"
            return f"media-error@{self.first}{last}"
        return f"{self.kind}@{self.first}{'+' if self.persistent else ''}"


def parse_fault(spec: str) -> Fault:
    """``KIND[@N[+]]`` or ``media-error@LBA[-LBA]``; one-line errors for anything else."""
    text = spec.strip().lower()
    match = _SPEC.match(text)
    kind = match.group("kind") if match else text.split("@", 1)[0]
    if kind not in FAULT_KINDS:
        raise InputError(f"--fault {spec!r}: unknown fault {kind!r}; choose from "
                         f"{', '.join(FAULT_KINDS)}")
    if match is None:
        raise InputError(f"--fault {spec!r}: use KIND, KIND@N (once, at command N), KIND@N+ "
                         "(from command N on) or media-error@LBA[-LBA]")
    first, plus, last = match.group("first"), match.group("plus"), match.group("last")
    if kind == "media-error":
        if first is None or plus:
            raise InputError(f"--fault {spec!r}: media-error takes sectors: media-error@LBA or "
                             "media-error@FIRST-LAST")
        lo = int(first)
        hi = int(last) if last is not None else lo
        if hi < lo:
            raise InputError(f"--fault {spec!r}: the last LBA is below the first")
        if hi - lo + 1 > MAX_MEDIA_ERROR_SECTORS:
            raise InputError(f"--fault {spec!r}: at most {MAX_MEDIA_ERROR_SECTORS} bad sectors")
        return Fault(kind, lo, hi, True)
    if last is not None:
        raise InputError(f"--fault {spec!r}: a range is for media-error only; use {kind}@N "
                         f"or {kind}@N+")
    if first is not None and int(first) < 1:
        raise InputError(f"--fault {spec!r}: commands count from 1")
    if kind == "disconnect":
        if first is None or plus:
            raise InputError(f"--fault {spec!r}: a stick is unplugged once: disconnect@N")
        return Fault(kind, int(first), None, False)
    if first is None:
        return Fault(kind, 1, None, True)
    return Fault(kind, int(first), None, bool(plus))


def fault_help() -> str:
    """The ``--fault`` option's help text."""
    kinds = "; ".join(f"{k}: {v}" for k, v in FAULT_KINDS.items())
    return ("Inject a fault into the simulated stick (repeatable). KIND@N: once, at the N-th "
            "command the stick receives (counted from 1, start-up commands included, as "
            "'usbtrace log' numbers them); KIND@N+: at every command from N on; KIND alone: "
            "at every command. media-error@LBA[-LBA] marks sectors bad; disconnect@N unplugs "
            f"the stick. Kinds — {kinds}.")


def parse_faults(specs: Iterable[str], hardware: bool = False) -> list[Fault]:
    """Every ``--fault`` spec, checked before a session exists."""
    faults = [parse_fault(spec) for spec in specs]
    if faults and hardware:
        raise InputError("--fault injects faults into the simulated stick; it cannot be used "
                         "with --device")
    return faults
