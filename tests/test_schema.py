"""The documented schema file matches the models."""

from __future__ import annotations

from pathlib import Path

from usbtrace.store import ddl

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "usbtrace.sql"


def test_schema_file_is_generated_from_the_models() -> None:
    assert SCHEMA_FILE.read_text() == ddl.render(), (
        "schemas/usbtrace.sql is stale: run 'python -m usbtrace.store.ddl > schemas/usbtrace.sql'")


def test_public_tables_are_documented() -> None:
    text = SCHEMA_FILE.read_text()
    for table in ("sessions", "irps", "urbs", "scsi_commands", "devices"):
        assert f"CREATE TABLE {table} (" in text
