"""Who sent a scheduled slot (beat, backfill or rerun), so that only beat's own batches are its heartbeat.

A nullable column (a catalog change, no rewrite). Existing scheduled batches are told apart the
way `status` told them apart before: one that started within ten minutes of its slot was beat's;
a later one was a backfill. Runs in batches of 10,000 rows, each its own short statement.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_runs") as batch:
        batch.add_column(
            sa.Column("sent_by", sa.String(20), comment="who first sent a scheduled slot: beat, backfill or rerun")
        )
    bind = op.get_bind()
    runs = sa.table(
        "batch_runs",
        sa.column("batch_id", sa.String),
        sa.column("trigger", sa.String),
        sa.column("slot", sa.DateTime(timezone=True)),
        sa.column("started_at", sa.DateTime(timezone=True)),
        sa.column("sent_by", sa.String),
    )
    rows = bind.execute(
        sa.select(runs.c.batch_id, runs.c.slot, runs.c.started_at).where(
            runs.c.trigger == "schedule", runs.c.slot.is_not(None)
        )
    ).all()
    for start in range(0, len(rows), 10_000):
        part = rows[start : start + 10_000]
        for sender in ("beat", "backfill"):
            ids = [
                row.batch_id
                for row in part
                if ((_aware(row.started_at) - _aware(row.slot)).total_seconds() <= 600) == (sender == "beat")
            ]
            if ids:
                bind.execute(sa.update(runs).where(runs.c.batch_id.in_(ids)).values(sent_by=sender))


def _aware(value):
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def downgrade() -> None:
    with op.batch_alter_table("batch_runs") as batch:
        batch.drop_column("sent_by")
