"""Monitoring: outcomes, per-batch metrics and drift, rolling windows, daily accuracy.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NAIVE = sa.DateTime(timezone=False)
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ride_outcomes",
        sa.Column("trip_id", sa.Uuid(as_uuid=False), primary_key=True),
        sa.Column("actual_duration", sa.Float(), nullable=False, comment="minutes"),
        sa.Column("observed_at", NAIVE, nullable=False, comment="Chicago local: trip start + duration"),
        sa.Column("source", sa.String(20), nullable=False, comment="generated or file"),
        sa.Column("loaded_at", UTC, nullable=False, server_default=sa.func.now(), comment="UTC"),
    )
    op.create_index("ix_ride_outcomes_observed_at", "ride_outcomes", ["observed_at"])
    op.create_table(
        "batch_metrics",
        sa.Column("batch_id", sa.String(120), primary_key=True),
        sa.Column("model_version", sa.String(40)),
        sa.Column("window_start", NAIVE, comment="Chicago local"),
        sa.Column("window_end", NAIVE, comment="Chicago local"),
        sa.Column("rows", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("prediction_mean", sa.Float()),
        sa.Column("prediction_p10", sa.Float()),
        sa.Column("prediction_p50", sa.Float()),
        sa.Column("prediction_p90", sa.Float()),
        sa.Column("missing_share", sa.Float(), comment="share of missing values in the input columns"),
        sa.Column("columns_checked", sa.Integer(), comment="columns counted toward dataset drift"),
        sa.Column("drifted_columns", sa.Integer()),
        sa.Column("dataset_drift", sa.Boolean()),
        sa.Column("reference", sa.String(80), comment="which reference rows the batch was compared with"),
        sa.Column("monitor_status", sa.String(20), nullable=False, comment="ok, no_reference, waiting or failed"),
        sa.Column("monitor_error", sa.Text()),
        sa.Column("monitored_at", UTC, nullable=False, server_default=sa.func.now()),
        sa.Column("outcomes", sa.Integer(), comment="rides whose true duration is known"),
        sa.Column("mae", sa.Float(), comment="minutes"),
        sa.Column("rmse", sa.Float(), comment="minutes"),
        sa.Column("bias", sa.Float(), comment="mean(predicted - actual), minutes"),
        sa.Column("quality_at", UTC),
    )
    op.create_index("ix_batch_metrics_window_end", "batch_metrics", ["window_end"])
    op.create_index("ix_batch_metrics_monitored_at", "batch_metrics", ["monitored_at"])
    op.create_table(
        "column_drift",
        sa.Column("batch_id", sa.String(120), primary_key=True),
        sa.Column("column_name", sa.String(60), primary_key=True),
        sa.Column("method", sa.String(40), nullable=False, comment="Evidently's name of the test"),
        sa.Column("score", sa.Float()),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "window_metrics",
        sa.Column("window_end", NAIVE, primary_key=True, comment="Chicago local"),
        sa.Column("window_minutes", sa.Integer(), primary_key=True),
        sa.Column("model_version", sa.String(40), primary_key=True),
        sa.Column("window_start", NAIVE, nullable=False, comment="Chicago local"),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("columns_checked", sa.Integer()),
        sa.Column("drifted_columns", sa.Integer()),
        sa.Column("dataset_drift", sa.Boolean()),
        sa.Column("reference", sa.String(80)),
        sa.Column("computed_at", UTC, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "window_column_drift",
        sa.Column("window_end", NAIVE, primary_key=True, comment="Chicago local"),
        sa.Column("window_minutes", sa.Integer(), primary_key=True),
        sa.Column("model_version", sa.String(40), primary_key=True),
        sa.Column("column_name", sa.String(60), primary_key=True),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("score", sa.Float()),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "daily_accuracy",
        sa.Column("day", sa.Date(), primary_key=True, comment="Chicago local date of the trips' start"),
        sa.Column("model_version", sa.String(40), primary_key=True),
        sa.Column("outcomes", sa.Integer(), nullable=False),
        sa.Column("mae", sa.Float(), nullable=False),
        sa.Column("rmse", sa.Float(), nullable=False),
        sa.Column("bias", sa.Float(), nullable=False),
        sa.Column("baseline_mae", sa.Float(), comment="always-the-median baseline on the same rides"),
        sa.Column("heldout_mae", sa.Float(), comment="the version's MAE on held-out rides at training"),
        sa.Column("updated_at", UTC, nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    for table in (
        "daily_accuracy",
        "window_column_drift",
        "window_metrics",
        "column_drift",
        "batch_metrics",
        "ride_outcomes",
    ):
        op.drop_table(table)
