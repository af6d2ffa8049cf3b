"""Files the commands write: never the database, never over a file unasked, never half.

An output is written to a temporary name beside it and renamed into place only
once it is whole, so an error or Ctrl-C leaves the old file (or none), never a
truncated one.  An existing file is replaced only with ``--force``; the
database itself, and its ``-wal``/``-shm``/``-journal`` companions, never.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from usbtrace.errors import InputError

if TYPE_CHECKING:
    from usbtrace.store.database import Database

COMPANIONS = ("", "-wal", "-shm", "-journal")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_database(path: str | Path, database: Path | None, what: str) -> None:
    """Raise if ``path`` is the database file or one of its companions."""
    if database is None:
        return
    path = Path(path)
    for suffix in COMPANIONS:
        companion = Path(f"{database}{suffix}")
        if _same_file(path, companion) or path.resolve() == companion.resolve():
            raise InputError(f"{what} {path}: that is the database {database}"
                             f"{' (its ' + suffix[1:] + ' file)' if suffix else ''}; "
                             "choose another file")


def check_output(path: Path, force: bool, database: Database | None = None,
                 what: str = "output", inputs: Sequence[tuple[str | Path, str]] = ()) -> None:
    """Everything that can be known before any work: the folder exists, the name is
    free (or ``force``), and it is neither the database nor one of the ``inputs``
    (file, what it is) the command reads."""
    refuse_database(path, database.path if database is not None else None, what)
    for other, role in inputs:
        if _same_file(path, Path(other)):
            raise InputError(f"{what} {path}: is {role}; give another file")
    if path.is_dir():
        raise InputError(f"{what} {path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{what} {path}: folder {parent} is not writable")
    if path.exists() and not force:
        raise InputError(f"{what} {path}: already exists (--force to replace it)")


@contextmanager
def atomic_output(path: Path, force: bool = False, database: Database | None = None,
                  what: str = "output", mode: str = "wb",
                  inputs: Sequence[tuple[str | Path, str]] = ()
                  ) -> Iterator[IO]:  # type: ignore[type-arg]
    """Open a temporary file beside ``path``; rename it over ``path`` when the block
    ends without an error, delete it otherwise."""
    check_output(path, force, database, what, inputs)
    parent = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    try:
        with os.fdopen(fd, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        if path.exists() and not force:  # appeared while we wrote
            raise InputError(f"{what} {path}: already exists (--force to replace it)")
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
