"""`slot_refusals`: why a scheduled slot that a worker refused or dropped has no batch.

A slot whose message failed before the worker recorded its batch (a setting the worker refuses, a
message that expired in the queue while no worker ran) was shown as missed, like one beat never
sent. One new small table; nothing existing is touched.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "slot_refusals",
        sa.Column("batch_id", sa.String(120), primary_key=True, comment="the batch id the slot would have had"),
        sa.Column("slot", UTC, nullable=False, comment="UTC"),
        sa.Column("error", sa.Text(), nullable=False, comment="why the worker refused it, redacted"),
        sa.Column("sent_by", sa.String(20), comment="beat, backfill or rerun"),
        sa.Column("refused_at", UTC, nullable=False, server_default=sa.func.now(), comment="UTC"),
    )
    op.create_index("ix_slot_refusals_slot", "slot_refusals", ["slot"])


def downgrade() -> None:
    op.drop_index("ix_slot_refusals_slot", "slot_refusals")
    op.drop_table("slot_refusals")
