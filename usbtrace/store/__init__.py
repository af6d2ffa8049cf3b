"""Storage of sessions in SQLite (or any SQLAlchemy database)."""

from contextvars import ContextVar

# The arguments of the usbtrace command being run, set by the command line for the
# length of one command: a library caller (a notebook, the pytest plugin) has none.
# Here, not in ``database``, so that setting it costs no import of SQLAlchemy.
COMMAND_ARGS: ContextVar[tuple[str, ...] | None] = ContextVar("usbtrace_command_args",
                                                              default=None)
