"""The read-only database role of Grafana and the exporter: SELECT on the tables they read, nothing else."""

from __future__ import annotations

from sqlalchemy import Engine, text

# Every table a Grafana panel (deploy/grafana/dashboards) or the exporter (store/snapshot.py) reads.
# tests/security/test_postgres_roles.py runs each of their queries as the role, and takes each
# grant away in turn to show it is needed: a new panel on another table fails there until it is added.
READ_TABLES = (
    "batch_runs",
    "batch_metrics",
    "column_drift",
    "daily_accuracy",
    "model_aliases",
    "model_events",
    "model_policy",
    "ride_outcomes",
    "ride_predictions",
    "shadow_comparisons",
    "slot_refusals",
    "window_column_drift",
    "window_metrics",
)


class ReaderRoleMissing(RuntimeError):
    """DATABASE_READER_ROLE names a role the database does not have."""


def grant_readers(engine: Engine, role: str) -> tuple[str, ...]:
    """Let `role` read READ_TABLES of the schema the tables live in, and nothing else there.

    Run by `migrate` as the tables' owner after every upgrade, so a table a migration adds is
    granted (if listed) the moment it exists; a grant from before that is no longer listed is
    taken back. Only PostgreSQL has roles: on SQLite nothing is done. Returns the tables granted.
    """
    if engine.dialect.name != "postgresql":
        return ()
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}).first() is None:
            raise ReaderRoleMissing(
                f"DATABASE_READER_ROLE={role}: the database has no such role "
                "(deploy/postgres-init creates taxi_reader); create it, or leave the setting empty"
            )
        schema = quote(conn.execute(text("SELECT current_schema()")).scalar_one())
        tables = ", ".join(f"{schema}.{quote(table)}" for table in READ_TABLES)
        conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {quote(role)}"))
        conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {quote(role)}"))
        conn.execute(text(f"GRANT SELECT ON {tables} TO {quote(role)}"))
    return READ_TABLES
