"""Alembic environment: runs against the URL worker.store.database passes in."""

from alembic import context

from worker.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    raise RuntimeError("run migrations through `python -m worker migrate`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
