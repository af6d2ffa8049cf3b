"""Ctrl-C at a safe point: a long loop checks a flag instead of being torn mid-write.

A KeyboardInterrupt raised anywhere can cut a batch in half on its way to the
storing process or to SQLite.  Inside ``deferred_interrupt()`` the first Ctrl-C
only sets ``requested``; the loop stops at its next record and closes the
session as interrupted.  A second Ctrl-C interrupts at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Interrupt:
    requested = False


@contextmanager
def deferred_interrupt() -> Iterator[Interrupt]:
    flag = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals are the main thread's: nothing to defer here
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
