"""ride_predictions, batch_runs and the batch_chunks ledger.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ride_predictions",
        sa.Column("trip_id", sa.Uuid(as_uuid=False), primary_key=True),
        sa.Column("pickup_community_area", sa.Integer()),
        sa.Column("dropoff_community_area", sa.Integer()),
        sa.Column("trip_start_timestamp", sa.DateTime(timezone=False), nullable=False, comment="Chicago local time"),
        sa.Column("fare", sa.Float(), nullable=False),
        sa.Column("trip_total", sa.Float()),
        sa.Column("trip_miles", sa.Float(), nullable=False),
        sa.Column("predicted_duration", sa.Float(), nullable=False, comment="minutes"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now(), comment="UTC"
        ),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(40), nullable=False),
        sa.Column("batch_id", sa.String(120), nullable=False),
    )
    op.create_index("ix_ride_predictions_batch_id", "ride_predictions", ["batch_id"])
    op.create_index("ix_ride_predictions_created_at", "ride_predictions", ["created_at"])
    op.create_table(
        "batch_runs",
        sa.Column("batch_id", sa.String(120), primary_key=True),
        sa.Column("trigger", sa.String(20), nullable=False, comment="schedule, adhoc or file"),
        sa.Column("task_id", sa.String(64)),
        sa.Column("seed", sa.String(40)),
        sa.Column("rides_requested", sa.Integer(), nullable=False),
        sa.Column("rows_written", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("chunks_total", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("chunks_done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("model_name", sa.String(200)),
        sa.Column("model_version", sa.String(40)),
        sa.Column("window_start", sa.DateTime(timezone=False), comment="Chicago local"),
        sa.Column("window_end", sa.DateTime(timezone=False), comment="Chicago local"),
        sa.Column("status", sa.String(20), nullable=False, comment="running, retrying, succeeded or failed"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("error", sa.Text()),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_batch_runs_finished_at", "batch_runs", ["finished_at"])
    op.create_table(
        "batch_chunks",
        sa.Column("batch_id", sa.String(120), primary_key=True),
        sa.Column("chunk_index", sa.Integer(), primary_key=True),
        sa.Column("rows_written", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(40), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("batch_chunks")
    op.drop_table("batch_runs")
    op.drop_table("ride_predictions")
