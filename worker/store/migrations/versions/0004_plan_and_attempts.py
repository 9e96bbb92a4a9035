"""The chunk size a batch was planned with, when its latest attempt started, and an index for
the daily accuracy's reads by trip start (built CONCURRENTLY on PostgreSQL: writers go on).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_runs") as batch:
        batch.add_column(
            sa.Column("chunk_size", sa.Integer(), comment="rides per chunk the first delivery planned with")
        )
        batch.add_column(
            sa.Column("attempt_started_at", sa.DateTime(timezone=True), comment="UTC start of the latest attempt")
        )
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY, outside the migration's transaction: a plain build would block every writer of
        # ride_predictions for as long as it reads the table (see the README's upgrade notes).
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_ride_predictions_trip_start_timestamp",
                "ride_predictions",
                ["trip_start_timestamp"],
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index("ix_ride_predictions_trip_start_timestamp", "ride_predictions", ["trip_start_timestamp"])


def downgrade() -> None:
    op.drop_index("ix_ride_predictions_trip_start_timestamp", "ride_predictions")
    with op.batch_alter_table("batch_runs") as batch:
        batch.drop_column("attempt_started_at")
        batch.drop_column("chunk_size")
