"""`batch_runs.status` may also read `pruning`: a finished batch that a prune has claimed.

A prune deletes a group of old batches in several transactions. It first claims them, under the
row lock that `rerun` and `backfill` take to reopen a batch, so a rerun either comes first (the
batch is no longer finished and is kept) or is refused; it can no longer reopen a batch whose rows
are half deleted. Only the column's comment changes (a catalog update, no rewrite); SQLite keeps
no comments.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BEFORE = "running, retrying, succeeded or failed"
AFTER = "running, retrying, succeeded, failed or pruning (claimed by a prune that is deleting it)"


def _comment(comment: str, previous: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "batch_runs",
            "status",
            existing_type=sa.String(20),
            existing_nullable=False,
            comment=comment,
            existing_comment=previous,
        )


def upgrade() -> None:
    _comment(AFTER, BEFORE)


def downgrade() -> None:
    # A prune stopped halfway leaves `pruning` batches, half deleted: `failed` is honest for them,
    # and the old code's prune (which lists only succeeded and failed batches) then finishes them.
    op.execute("UPDATE batch_runs SET status = 'failed' WHERE status = 'pruning'")
    _comment(BEFORE, AFTER)
