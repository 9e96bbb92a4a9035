"""Hour windows keyed by UTC instants, so that daylight saving's repeated hour is two windows.

`window_metrics.window_end`/`window_start` and `window_column_drift.window_end` held naive Chicago
time: the two 01:00-02:00 hours of the November change were one row. They become `timestamptz`;
an existing value is read as Chicago time (the earlier of the two readings for the repeated hour,
which is all the old key could tell). On PostgreSQL each table is rewritten under an ACCESS
EXCLUSIVE lock: the tables hold one row per hour and version (and per column for the drift), some
thousands of rows a year, rewritten in milliseconds; the ride tables are not touched.
On SQLite (no time zones) the values are rewritten as naive UTC, which is how it stores UTC.

Revision ID: 0008
Revises: 0007
"""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CHICAGO = "America/Chicago"
COLUMNS = {"window_metrics": ("window_end", "window_start"), "window_column_drift": ("window_end",)}
SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite
COMMENTS = {"window_end": "UTC instant the clock hour ends", "window_start": "UTC instant the clock hour starts"}


def upgrade() -> None:
    _convert(to_utc=True)


def downgrade() -> None:
    _convert(to_utc=False)


def _convert(to_utc: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # timestamp AT TIME ZONE gives the instant of a Chicago wall time; timestamptz AT TIME ZONE
        # gives the Chicago wall time of an instant: the same expression both ways.
        kind = "timestamptz" if to_utc else "timestamp"
        for table, columns in COLUMNS.items():
            changes = ", ".join(f"ALTER COLUMN {c} TYPE {kind} USING {c} AT TIME ZONE '{CHICAGO}'" for c in columns)
            op.execute(f"ALTER TABLE {table} {changes}")
            for column in columns:
                comment = COMMENTS[column] if to_utc else "Chicago local"
                op.execute(f"COMMENT ON COLUMN {table}.{column} IS '{comment}'")
        return
    chicago = ZoneInfo(CHICAGO)
    for table, columns in COLUMNS.items():
        # The stored text as it is (SQLAlchemy's own format, or whatever else wrote it), rewritten in
        # SQLAlchemy's format.
        keyed = sa.table(table, *(sa.column(c) for c in columns))
        for column in columns:
            stored = bind.execute(sa.select(keyed.c[column]).distinct()).scalars().all()
            moves = []
            for old in stored:
                if old is None:
                    continue
                wall = datetime.fromisoformat(str(old))
                if to_utc:
                    new = wall.replace(tzinfo=chicago).astimezone(UTC).replace(tzinfo=None)
                else:
                    new = wall.replace(tzinfo=UTC).astimezone(chicago).replace(tzinfo=None)
                moves.append((wall, old, new.strftime(SQLITE_FORMAT)))
            # Each value moves by the same few hours; moving the latest first (to UTC: later) or the
            # earliest first (back to Chicago: earlier) never lands on a value not yet moved.
            for _, old, new in sorted(moves, reverse=to_utc):
                bind.execute(sa.update(keyed).where(keyed.c[column] == old).values({column: new}))
