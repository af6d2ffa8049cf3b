"""Render the schema as SQL (``python -m usbtrace.store.ddl > schemas/usbtrace.sql``),
and as the module a SQLite file is created and written with, without SQLAlchemy
(``python -m usbtrace.store.ddl --python > usbtrace/store/sqlite_schema.py``).

The file in ``schemas/`` is what users read; the module is what ``Database`` runs for
a SQLite file (importing SQLAlchemy and the mapped classes costs about 0.4 s of CPU,
more than a 100-record import's own work).  The models stay the one source of truth:
tests regenerate both and fail when either disagrees with them.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any

from sqlalchemy import Boolean
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from usbtrace.store.schema import SCHEMA_VERSION, VIEWS, Base, create_view_sql


def render() -> str:
    dialect = sqlite.dialect()
    parts = [
        f"-- usbtrace database schema, version {SCHEMA_VERSION} (SQLite dialect).",
        "-- Generated from usbtrace/store/schema.py by 'python -m usbtrace.store.ddl'.",
        "-- Timestamps are seconds from the session start; names are lower-case.",
        "",
    ]
    for table in Base.metadata.sorted_tables:
        doc = (table.comment or "").strip()
        if doc:
            parts.append(f"-- {doc}")
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
        parts.append("")
    parts.append("-- Views: the joins used most, ready to query.")
    parts.append("")
    for name, (doc, _) in VIEWS.items():
        parts.extend(f"-- {line}" for line in textwrap.wrap(doc, 86))
        parts.append(create_view_sql(name) + ";")
        parts.append("")
    return "\n".join(parts)


def sqlite_statements() -> list[str]:
    """What ``Base.metadata.create_all`` runs on a new SQLite file, as it runs it: each
    table in dependency order with its indexes (by name), then the views."""
    dialect = sqlite.dialect()
    statements = []
    for table in Base.metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)))
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)))
    statements.extend(create_view_sql(name) for name in VIEWS)
    return statements


def table_columns() -> dict[str, tuple[tuple[str, bool, bool], ...]]:
    """Each table's columns in order: (name, nullable without a server default, boolean)."""
    return {table.name: tuple((c.name, bool(c.nullable) and c.server_default is None,
                               isinstance(c.type, Boolean)) for c in table.columns)
            for table in Base.metadata.sorted_tables}


def render_python() -> str:
    """The text of ``usbtrace/store/sqlite_schema.py``."""
    def literal(value: Any) -> str:
        return repr(value)

    lines = [
        '"""The schema for a SQLite file, as ``sqlite3`` alone creates and writes it.',
        "",
        "Generated from usbtrace/store/schema.py by",
        "'python -m usbtrace.store.ddl --python > usbtrace/store/sqlite_schema.py';",
        "tests/test_schema.py fails when it differs from the models.  Do not edit.",
        '"""',
        "# ruff: noqa: E501",
        "",
        f"SCHEMA_VERSION = {SCHEMA_VERSION}",
        "",
        "# what Base.metadata.create_all runs on a new file: tables, their indexes, views",
        "CREATE_STATEMENTS = (",
    ]
    for statement in sqlite_statements():
        lines.append("    (")
        lines.extend(f"        {literal(line)}" for line in statement.splitlines(keepends=True))
        lines.append("    ),")
    lines += [")", "",
              "# table -> its columns in order: (name, nullable without a server default, "
              "boolean)",
              "COLUMNS = {"]
    for name, columns in table_columns().items():
        lines.append(f"    {name!r}: (")
        lines.extend(f"        {column!r}," for column in columns)
        lines.append("    ),")
    lines += ["}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_python() if sys.argv[1:] == ["--python"] else render(), end="")
