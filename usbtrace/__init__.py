"""usbtrace: log, decode, store and replay USB mass-storage traffic.

For scripts and notebooks: ``usbtrace.open(db)`` (see ``usbtrace.api``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"  # the release; pyproject.toml reads it from here

if TYPE_CHECKING:
    from pathlib import Path

    from usbtrace.api import Log


def open(path: str | Path) -> Log:  # noqa: A001 - the API's entry point
    """Open a usbtrace database read-only: ``with usbtrace.open("usbtrace.db") as log``."""
    from usbtrace.api import open as open_log

    return open_log(path)
