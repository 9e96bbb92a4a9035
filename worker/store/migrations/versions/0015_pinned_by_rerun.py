"""`batch_runs.model_pinned_by` names two more ways a batch's version is chosen: `converted` and
`repinned`, both by `rerun` moving a batch off a version no worker can score with (refused, or
deleted from the registry). Only the column's comment changes; SQLite keeps no comments.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

BEFORE = "alias, fallback, fixed or given: how model_version was chosen"
AFTER = (
    "alias, fallback, fixed or given: how model_version was chosen; converted or repinned: "
    "moved by rerun off a version no worker can score with"
)


def _comment(comment: str, existing: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "batch_runs", "model_pinned_by", existing_type=sa.String(20), comment=comment, existing_comment=existing
        )


def upgrade() -> None:
    _comment(AFTER, BEFORE)


def downgrade() -> None:
    _comment(BEFORE, AFTER)
