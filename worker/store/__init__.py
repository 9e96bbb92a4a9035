"""PostgreSQL (or SQLite): the engine and schema check, the tables and their Alembic migrations, the exactly-once writes, the batch history and retention, and the monitoring tables."""
