"""An index for the newest finished batch of each trigger and status.

The exporter (every scrape) and `status` ask for the newest succeeded and failed batch of each
trigger. Without this index PostgreSQL read all of `batch_runs` for a trigger with few batches
(adhoc, file): 3-5 ms per question on 90 days of slots, growing with history. `batch_runs` holds a
row per batch (26,000 in 90 days of slots); built CONCURRENTLY, so writers go on meanwhile.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NAME = "ix_batch_runs_trigger_status_finished_at"
COLUMNS = ["trigger", "status", "finished_at"]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(NAME, "batch_runs", COLUMNS, postgresql_concurrently=True, if_not_exists=True)
    else:
        op.create_index(NAME, "batch_runs", COLUMNS)


def downgrade() -> None:
    op.drop_index(NAME, "batch_runs")
