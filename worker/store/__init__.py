"""PostgreSQL (or SQLite): the engine and schema check, the tables and their Alembic migrations, and the exactly-once writes."""
