"""Storage of sessions in SQLite (or any SQLAlchemy database)."""
