"""The model policy's state: paused or halted, the promotion it watches, when it last retrained, what
it last did, and its lease. One new small table; nothing existing is touched.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_policy",
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column(
            "paused",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="by a person: models policy pause",
        ),
        sa.Column(
            "halted",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="after its own rollback, until resumed",
        ),
        sa.Column("note", sa.Text(), comment="why it is paused or halted"),
        sa.Column(
            "confirmed_version", sa.String(40), comment="the last version the policy promoted whose watch ended well"
        ),
        sa.Column("challenger_since", UTC, comment="when the current challenger was set"),
        sa.Column("degraded_since", UTC, comment="first pass that found production degraded"),
        sa.Column("last_retrain_at", UTC),
        sa.Column("last_retrain_rows", sa.Integer(), comment="post-change rides the last retrain learned from"),
        sa.Column("last_action", sa.String(30), comment="retrain, promote, retire, rollback, wait, none"),
        sa.Column("last_reason", sa.Text()),
        sa.Column("last_evidence", sa.JSON()),
        sa.Column("last_pass_at", UTC),
        sa.Column("attention", sa.String(40), comment="why a person is needed now, if one is: recovery_failed, ..."),
        sa.Column("lease_until", UTC, comment="a pass holds the policy until then"),
        sa.Column("lease_owner", sa.String(200)),
    )


def downgrade() -> None:
    op.drop_table("model_policy")
