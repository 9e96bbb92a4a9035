"""`ride_outcomes.known_at` for outcomes loaded from a file before the load set it.

`outcomes FILE` stored its rows without `known_at`, so the readers that go by it (the rolling live
accuracy of the last outcomes, its alert and exporter figures, the report's warning, the model
policy) never saw a file's outcomes. The load now sets it; this fills it for rows already stored, as
the load would have: the later of the trip's end (`observed_at`, Chicago local) and the arrival
(`loaded_at`). SQLite has no time zones: there it takes `loaded_at`, which is the later of the two
for any trip that ended before its outcome was loaded.

Only rows where it is empty are touched (file outcomes, a small part of the table); the UPDATE
scans the table once and locks only those rows, so writers of new outcomes go on.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE ride_outcomes SET known_at = GREATEST(observed_at AT TIME ZONE 'America/Chicago', loaded_at) "
            "WHERE known_at IS NULL"
        )
    else:
        op.execute("UPDATE ride_outcomes SET known_at = loaded_at WHERE known_at IS NULL")


def downgrade() -> None:
    """Nothing to undo: the filled values are what the load now writes."""
