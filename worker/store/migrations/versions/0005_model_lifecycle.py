"""The model's life cycle: alias moves on the record, shadow predictions of a challenger, their
paired comparison, and when each outcome became known to the service.

Only new tables and nullable columns: PostgreSQL adds a nullable column without rewriting the
table, so this takes no lock longer than a catalog update on `batch_runs` and `ride_outcomes`.
The one index on an existing large table (`ride_outcomes.known_at`) is built CONCURRENTLY on
PostgreSQL, outside the migration's transaction, so writers are never blocked while it builds.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", UTC, nullable=False, server_default=sa.func.now(), comment="UTC"),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("alias", sa.String(60), comment="the alias moved; none for `registered`"),
        sa.Column("action", sa.String(30), nullable=False),
        sa.Column("from_version", sa.String(40)),
        sa.Column("to_version", sa.String(40)),
        sa.Column("actor", sa.String(200), nullable=False, comment="MLflow user, else OS user; `policy`; `unknown`"),
        sa.Column("reason", sa.Text()),
        sa.Column("evidence", sa.JSON(), comment="the numbers the decision rested on"),
        sa.Column("status", sa.String(10), nullable=False, comment="pending, done or failed"),
        sa.Column("error", sa.Text()),
        sa.Column("finished_at", UTC),
    )
    op.create_index("ix_model_events_model_at", "model_events", ["model_name", "at"])
    op.create_table(
        "model_aliases",
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("alias", sa.String(60), primary_key=True),
        sa.Column("version", sa.String(40), comment="none: the alias is absent"),
        sa.Column("event_id", sa.Integer()),
        sa.Column("updated_at", UTC, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "shadow_predictions",
        sa.Column("trip_id", sa.Uuid(as_uuid=False), primary_key=True),
        sa.Column("model_version", sa.String(40), primary_key=True),
        sa.Column("batch_id", sa.String(120), nullable=False),
        sa.Column("predicted_duration", sa.Float(), nullable=False, comment="minutes"),
        sa.Column("created_at", UTC, nullable=False, server_default=sa.func.now(), comment="UTC"),
    )
    op.create_index("ix_shadow_predictions_batch_id", "shadow_predictions", ["batch_id"])
    op.create_index(
        "ix_shadow_predictions_model_version_created_at", "shadow_predictions", ["model_version", "created_at"]
    )
    op.create_table(
        "shadow_comparisons",
        sa.Column("challenger_version", sa.String(40), primary_key=True),
        sa.Column("production_version", sa.String(40), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("outcomes", sa.Integer(), nullable=False, comment="rides scored by both with a known duration"),
        sa.Column("production_mae", sa.Float()),
        sa.Column("challenger_mae", sa.Float()),
        sa.Column("mean_difference", sa.Float(), comment="mean(|challenger error| - |production error|), minutes"),
        sa.Column("ci_low", sa.Float(), comment="95 % t-interval of the mean difference"),
        sa.Column("ci_high", sa.Float()),
        sa.Column("wilcoxon_p", sa.Float(), comment="Wilcoxon signed-rank p-value, a check on the interval"),
        sa.Column("first_at", UTC, comment="UTC: the first shadow prediction counted"),
        sa.Column("computed_at", UTC, nullable=False, server_default=sa.func.now()),
    )
    with op.batch_alter_table("batch_runs") as batch:
        batch.add_column(
            sa.Column(
                "challenger_version", sa.String(40), comment="the challenger version pinned for shadow scoring, if any"
            )
        )
        batch.add_column(
            sa.Column(
                "shadow_error",
                sa.Text(),
                comment="why the challenger could not score (part of) the batch; the batch is unaffected",
            )
        )
    with op.batch_alter_table("ride_outcomes") as batch:
        batch.add_column(
            sa.Column(
                "known_at",
                UTC,
                comment="UTC: when the service could first know it, the later of the trip's end and loaded_at",
            )
        )
    if op.get_bind().dialect.name == "postgresql":
        # Outside the migration's transaction: CONCURRENTLY never blocks the writers of ride_outcomes.
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_ride_outcomes_known_at",
                "ride_outcomes",
                ["known_at"],
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index("ix_ride_outcomes_known_at", "ride_outcomes", ["known_at"])


def downgrade() -> None:
    op.drop_index("ix_ride_outcomes_known_at", "ride_outcomes")
    with op.batch_alter_table("ride_outcomes") as batch:
        batch.drop_column("known_at")
    with op.batch_alter_table("batch_runs") as batch:
        batch.drop_column("shadow_error")
        batch.drop_column("challenger_version")
    op.drop_table("shadow_comparisons")
    op.drop_index("ix_shadow_predictions_model_version_created_at", "shadow_predictions")
    op.drop_index("ix_shadow_predictions_batch_id", "shadow_predictions")
    op.drop_table("shadow_predictions")
    op.drop_table("model_aliases")
    op.drop_index("ix_model_events_model_at", "model_events")
    op.drop_table("model_events")
