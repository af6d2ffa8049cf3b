"""Whether a session's writer still runs: the state a reader shows.

Apart from ``database`` so that commands reading a SQLite file with ``sqlite3`` alone
(``sqlite_read``) show the same state without importing SQLAlchemy.
"""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()[:255]  # the writer's host, as a session row keeps it


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def effective_state(state: str, host: str | None, pid: int | None) -> str:
    """``running`` only while its writer lives: a session whose writer on this host
    is gone was interrupted (kill -9, a crash), whatever the row still says."""
    if state == "running" and host == HOST and pid is not None and not pid_alive(pid):
        return "interrupted"
    return state
