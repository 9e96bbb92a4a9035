"""A block-range (BRIN) index for `ride_predictions.trip_start_timestamp`.

`ix_ride_predictions_trip_start_timestamp` was a B-tree: an entry per row, inserted among random
trip starts, for a column read only by time ranges (a Grafana panel, a day's rows for retraining).
Rides are written, but for backfills and files, in trip-start order, so a BRIN index (a few
intervals per 128 pages: minmax-multi, so that a backfilled week among today's rides still reads
as apart) serves the same reads at almost no cost per write; `prune` summarizes afresh the ranges
it empties. `ix_ride_predictions_created_at` stays a B-tree: the rides-scored panel counts a range
of it from the index alone. Measured in the README's Speed section.

PostgreSQL only; the new index is built CONCURRENTLY under a temporary name, the old one dropped
CONCURRENTLY and the new one renamed (ALTER INDEX ... RENAME takes a lock that writers do not
wait on), so writers go on throughout. SQLite keeps its B-tree: nothing to do there.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLE = "ride_predictions"
NAME = "ix_ride_predictions_trip_start_timestamp"
COLUMN = "trip_start_timestamp"
BUILDING = f"{NAME}_new"


def _swap(brin: bool) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    kind = (
        {
            "postgresql_using": "brin",
            "postgresql_ops": {COLUMN: "timestamp_minmax_multi_ops"},
            "postgresql_with": {"autosummarize": "on"},
        }
        if brin
        else {}
    )
    with op.get_context().autocommit_block():
        # A build stopped half way leaves an invalid index of this name: start again.
        op.drop_index(BUILDING, TABLE, postgresql_concurrently=True, if_exists=True)
        op.create_index(BUILDING, TABLE, [COLUMN], postgresql_concurrently=True, **kind)
        op.drop_index(NAME, TABLE, postgresql_concurrently=True, if_exists=True)
        op.execute(f"ALTER INDEX {BUILDING} RENAME TO {NAME}")


def upgrade() -> None:
    _swap(brin=True)


def downgrade() -> None:
    _swap(brin=False)
