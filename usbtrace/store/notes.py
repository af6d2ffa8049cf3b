"""What a session's notes say about its own decode.

Apart from the import so that ``stats`` shows the same warnings without importing the
import's machinery (SQLAlchemy among it).
"""

from __future__ import annotations

# How the notes that warn about the decode itself begin: the import shows them, and so
# does ``stats`` (the rest of the notes stay in the session).  Notes are joined with
# "; ", so none of these contains one.
CAVEATS = ("the file is ", "devices seen through more than one interface", "no time for ",
           "the time goes back", "bulk transfers not decoded")


def caveats(notes: str | None) -> list[str]:
    """The notes of a session that warn that its decode may be wrong."""
    return [n for n in (notes or "").split("; ") if n.startswith(CAVEATS)]
