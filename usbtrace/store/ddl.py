"""Render the schema as SQL (``python -m usbtrace.store.ddl > schemas/usbtrace.sql``).

The file in ``schemas/`` is what users read; a test regenerates it and fails
when the models and the file disagree.
"""

from __future__ import annotations

import textwrap

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


if __name__ == "__main__":
    print(render(), end="")
