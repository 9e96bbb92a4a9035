"""Operating the schedule: world-change knobs, the slot, how the model version was pinned, who wrote a chunk.

Revision ID: 0002
Revises: 0001
"""

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_runs") as batch:
        batch.add_column(
            sa.Column(
                "speed_factor", sa.Float(), nullable=False, server_default="1.0", comment="generated speeds x this"
            )
        )
        batch.add_column(
            sa.Column("fare_factor", sa.Float(), nullable=False, server_default="1.0", comment="meter rates x this")
        )
        batch.add_column(sa.Column("slot", sa.DateTime(timezone=True), comment="UTC beat slot of a scheduled batch"))
        batch.add_column(
            sa.Column(
                "model_pinned_by",
                sa.String(20),
                comment="alias, fallback, fixed or given: how model_version was chosen",
            )
        )
    op.create_index("ix_batch_runs_started_at", "batch_runs", ["started_at"])
    op.create_index("ix_batch_runs_slot", "batch_runs", ["slot"])
    op.create_index("ix_batch_runs_status", "batch_runs", ["status"])
    with op.batch_alter_table("batch_chunks") as batch:
        batch.add_column(sa.Column("hostname", sa.String(255), comment="the worker that wrote the chunk"))

    # Scheduled batches written before this revision carry their slot only in their id.
    runs = sa.table("batch_runs", sa.column("batch_id", sa.String), sa.column("slot", sa.DateTime(timezone=True)))
    conn = op.get_bind()
    for (batch_id,) in conn.execute(sa.select(runs.c.batch_id).where(runs.c.batch_id.like("schedule-%"))):
        try:
            slot = datetime.fromisoformat(batch_id.removeprefix("schedule-"))
        except ValueError:
            continue
        conn.execute(sa.update(runs).where(runs.c.batch_id == batch_id).values(slot=slot))


def downgrade() -> None:
    with op.batch_alter_table("batch_chunks") as batch:
        batch.drop_column("hostname")
    op.drop_index("ix_batch_runs_status", "batch_runs")
    op.drop_index("ix_batch_runs_slot", "batch_runs")
    op.drop_index("ix_batch_runs_started_at", "batch_runs")
    with op.batch_alter_table("batch_runs") as batch:
        for column in ("model_pinned_by", "slot", "fare_factor", "speed_factor"):
            batch.drop_column(column)
